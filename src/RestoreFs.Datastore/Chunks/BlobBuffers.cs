using System.Buffers;

namespace RestoreFs.Datastore;

/// <summary>
/// Buffers for chunk files and decrypted payloads while a chunk is decoded. A pool of its own, holding at most a few
/// arrays: the runtime's shared pool keeps up to dozens of multi-MiB arrays per core, which a mount would carry as
/// resident memory for as long as it runs. Sized to the chunk file (not to the next power of two: an incompressible
/// 4 MiB chunk took an 8 MiB array), and enough of them for a reader and its read-ahead (the next chunks decoded at
/// the same time): with two per size, every third concurrent load allocated a new array that became garbage.
/// </summary>
public static class BlobBuffers
{
    /// <summary>Arrays kept: the default read-ahead (4 chunks) and two readers.</summary>
    public const int Kept = 6;

    public static ArrayPool<byte> Pool { get; } = new GranularArrayPool(Kept);
}
