using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using RestoreFs.Datastore;
using RestoreFs.Fuse;

namespace RestoreFs.Tree;

/// <summary>
/// One snapshot as the mount sees it: its manifest, and its image readers opened on first use and shared by every
/// open file, NBD export and VM disk of that image.
/// </summary>
public sealed class SnapshotState : IDisposable
{
    /// <summary>How long a failed manifest read is answered from memory before the file is read again.</summary>
    public static readonly TimeSpan ManifestRetryInterval = TimeSpan.FromSeconds(1);

    private readonly object manifestGate = new();
    private volatile Manifest? manifest;
    private (System.Runtime.ExceptionServices.ExceptionDispatchInfo Error, long At)? manifestFailure;
    private readonly ConcurrentDictionary<string, Lazy<ImageReader>> readers = new(StringComparer.Ordinal);

    public SnapshotState(TreeContext context, SnapshotInfo snapshot)
    {
        Context = context;
        Snapshot = snapshot;
    }

    public TreeContext Context { get; }

    public SnapshotInfo Snapshot { get; }

    /// <summary>
    /// The snapshot's manifest, read once. A failed read is not kept for good: the store may have been out of reach
    /// for a moment (an object store restarting, a disk hiccup), so the file is read again on the first use after
    /// <see cref="ManifestRetryInterval"/>; until then the same error is thrown again without reading.
    /// </summary>
    public Manifest Manifest => manifest ?? ReadManifest();

    private Manifest ReadManifest()
    {
        lock (manifestGate)
        {
            if (manifest is { } read)
            {
                return read;
            }

            if (manifestFailure is { } failed && Environment.TickCount64 - failed.At < (long)ManifestRetryInterval.TotalMilliseconds)
            {
                failed.Error.Throw();
            }

            try
            {
                manifest = Context.Store.ReadManifest(Snapshot, Context.Options.Key);
                manifestFailure = null;
                return manifest;
            }
            catch (Exception e)
            {
                manifestFailure = (System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e), Environment.TickCount64);
                throw;
            }
        }
    }

    public DateTimeOffset Time => Snapshot.Time;

    /// <summary>Archive names of the disk images (<c>drive-scsi0.img.fidx</c>), in manifest order.</summary>
    public IReadOnlyList<string> ImageArchives =>
        Manifest.Files.Where(f => f.FileName.EndsWith(".img.fidx", StringComparison.Ordinal)).Select(f => f.FileName).ToList();

    /// <summary>Reads of this snapshot's NBD exports that failed (damaged or missing chunks), e.g. under the restore
    /// VM, whose file systems may turn them into short directory listings. Kept in the context: an export may hold
    /// another state object of the same snapshot.</summary>
    public ReadFailureLog ExportReadFailures => Context.ExportFailures.GetOrAdd(Snapshot.DirectoryPath, _ => new ReadFailureLog());

    /// <summary>The image reader of an archive; errors become the errno a reader of the file should see.</summary>
    public ImageReader OpenImage(string archive)
    {
        var lazy = readers.GetOrAdd(archive, a => new Lazy<ImageReader>(() => Context.Store.OpenImage(Snapshot, a, Context.Options.Key,
            new ImageReaderOptions(CacheBytes: Context.Options.ImageCacheBytes, ReadAheadChunks: Context.Options.ReadAheadChunks, Memory: Context.ChunkMemory),
            Manifest)));
        try
        {
            return lazy.Value;
        }
        catch (Exception e)
        {
            readers.TryRemove(new KeyValuePair<string, Lazy<ImageReader>>(archive, lazy));
            throw Translate(e, archive);
        }
    }

    /// <summary>Drops the decoded chunks its image readers cache (e.g. when the snapshot's restore VM stopped).</summary>
    public void DropImageCaches()
    {
        foreach (var lazy in readers.Values)
        {
            if (lazy.IsValueCreated)
            {
                lazy.Value.DropCache();
            }
        }
    }

    /// <summary>
    /// Turns a datastore error into a FUSE errno: a missing key is EACCES, anything else EIO. Each distinct problem is
    /// logged once (per snapshot for keys, per chunk for damage), not once per read.
    /// </summary>
    public FuseException Translate(Exception e, string archive)
    {
        switch (e)
        {
            case FuseException fuse:
                return fuse;
            case KeyRequiredException or WrongKeyException:
                Context.WarnOnce($"key:{Snapshot.DirectoryPath}", null,
                    "Snapshot {Snapshot} cannot be read: {Reason}", Snapshot.Name, e.Message);
                return new FuseException(Errors.EACCES, e.Message);
            case DatastoreException d:
                Context.WarnOnce($"damage:{d.ChunkDigest ?? d.FilePath}:{archive}", null,
                    "Read of {Archive} in {Snapshot} failed: {Reason}", archive, Snapshot.Name, d.Message);
                return new FuseException(Errors.EIO, d.Message);
            default:
                Context.Log.LogError(e, "Unexpected error reading {Archive} in {Snapshot}", archive, Snapshot.Name);
                return new FuseException(Errors.EIO, e.Message);
        }
    }

    public void Dispose()
    {
        foreach (var lazy in readers.Values)
        {
            if (lazy.IsValueCreated)
            {
                lazy.Value.Dispose();
            }
        }

        readers.Clear();
    }
}
