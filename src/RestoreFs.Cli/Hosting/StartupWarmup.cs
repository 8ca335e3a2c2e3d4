using System.Security.Cryptography;
using RestoreFs.Datastore;

namespace RestoreFs.Cli.Hosting;

/// <summary>
/// Start-up of <c>restorefs mount</c> (issue 16): while the host is built and the mount is made on the main thread,
/// a second thread walks the path a first read takes — one group's newest snapshot and its manifest (JSON, name
/// checks), SHA-256 (OpenSSL), one made-up chunk decoded (libzstd bound, hashing threads started), one chunk buffer
/// mapped and faulted in — so those libraries are loaded and their code is ready when the first request comes.
/// Only reads; every failure is ignored (the mount reports problems itself), and an S3 store is not read (no
/// requests before the mount is up): only the chunk decode is prepared.
/// </summary>
public static class StartupWarmup
{
    public static void Start(string storePath, CryptConfig? key)
    {
        var thread = new Thread(() => Run(storePath, key)) { IsBackground = true, Name = "startup warm-up" };
        thread.Start();
    }

    private static void Run(string storePath, CryptConfig? key)
    {
        try
        {
            Span<byte> digest = stackalloc byte[32];
            SHA256.HashData(ReadOnlySpan<byte>.Empty, digest);
            ChunkDecoding.Prepare();
            NativeChunkBuffer.Prepare(BackupWriter.DefaultChunkSize); // a VM image's chunk
            if (StoreOpenOptions.IsRemote(storePath))
            {
                return;
            }

            var store = DatastoreReader.Open(storePath);
            foreach (var group in store.ListGroups(BackupNamespace.Root))
            {
                var snapshots = store.ListSnapshots(group);
                if (snapshots.Count > 0)
                {
                    store.ReadManifest(snapshots[^1], key);
                    return;
                }
            }
        }
        catch (Exception)
        {
            // Warm-up only: the mount itself reports every problem of the store.
        }
    }
}
