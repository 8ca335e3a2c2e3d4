using System.Buffers;

namespace RestoreFs.Datastore;

/// <summary>
/// Buffers for chunk files and decrypted payloads while a chunk is decoded. A pool of its own, holding at most a few
/// arrays per size: the runtime's shared pool keeps up to dozens of multi-MiB arrays per core, which a mount would
/// carry as resident memory for as long as it runs.
/// </summary>
public static class BlobBuffers
{
    public static ArrayPool<byte> Pool { get; } = ArrayPool<byte>.Create(maxArrayLength: 32 * 1024 * 1024, maxArraysPerBucket: 2);
}
