using Microsoft.Extensions.Logging;
using RestoreFs.Datastore;
using RestoreFs.Fuse;

namespace RestoreFs.Tree;

/// <summary>Everything the nodes of one mount share.</summary>
public sealed class TreeContext
{
    public TreeContext(DatastoreReader store, TreeOptions options, ILoggerFactory logs)
    {
        Store = store;
        Options = options;
        Logs = logs;
        Log = logs.CreateLogger("RestoreFs.Tree");
        Exports = new ImageExports(this);
        ChunkMemory = new ChunkMemory(Math.Max(options.ImageCacheBytes, 4L << 20));
    }

    /// <summary>The decoded-chunk budget shared by every image reader of this mount (all snapshots browsed).</summary>
    public ChunkMemory ChunkMemory { get; }

    public DatastoreReader Store { get; }

    public TreeOptions Options { get; }

    public ILoggerFactory Logs { get; }

    public ILogger Log { get; }

    public Inodes Inodes { get; } = new();

    public ImageExports Exports { get; }

    /// <summary>The loaded nodes of <c>files/</c> per restore VM (released when the VM stops).</summary>
    public Files.FilesNodeRegistry FilesNodes { get; } = new();

    /// <summary>Serves <c>files/</c>; null when the restore VM is not available.</summary>
    public IFilesBackend? Files { get; set; }

    public DateTimeOffset MountTime { get; } = DateTimeOffset.UtcNow;

    private readonly HashSet<string> loggedOnce = new(StringComparer.Ordinal);

    /// <summary>Failed reads of NBD exports, per snapshot directory (see <see cref="SnapshotState.ExportReadFailures"/>).</summary>
    public System.Collections.Concurrent.ConcurrentDictionary<string, ReadFailureLog> ExportFailures { get; } = new(StringComparer.Ordinal);

    /// <summary>Whether the caller may cause side effects (attach a device, start a restore VM): the mount owner and root.</summary>
    public bool IsPrivileged(FuseRequestContext ctx) => ctx.Uid == Options.Uid || ctx.Uid == 0;

    /// <summary>Throws EACCES (logged once per uid and action kind) when the caller may not cause side effects.</summary>
    public void RequirePrivileged(FuseRequestContext ctx, string what)
    {
        if (IsPrivileged(ctx))
        {
            return;
        }

        WarnOnce($"denied:{ctx.Uid}:{what.Split(' ')[0]}", null,
            "Refused {Action} for uid {Uid} (pid {Pid}): only the mount owner and root may", what, ctx.Uid, ctx.Pid);
        throw new FuseException(Errors.EACCES, $"{what}: only the mount owner and root may");
    }

    /// <summary>Logs a warning only the first time <paramref name="key"/> is seen (one line per damaged chunk, not per read).</summary>
    public void WarnOnce(string key, Exception? error, string message, params object?[] args)
    {
        lock (loggedOnce)
        {
            if (!loggedOnce.Add(key))
            {
                return;
            }
        }

#pragma warning disable CA2254 // the template is passed through from callers
        Log.LogWarning(error, message, args);
#pragma warning restore CA2254
    }
}

/// <summary>Failed reads, in order: archive, byte range, reason (the last 4096 are kept).</summary>
public sealed class ReadFailureLog
{
    private readonly List<(long Seq, string Archive, long Offset, int Length, string Reason)> entries = [];
    private long next;

    /// <summary>A position for <see cref="Since"/>.</summary>
    public long Mark()
    {
        lock (entries)
        {
            return next;
        }
    }

    public void Add(string archive, long offset, int length, string reason)
    {
        lock (entries)
        {
            entries.Add((next++, archive, offset, length, reason));
            if (entries.Count > 4096)
            {
                entries.RemoveRange(0, entries.Count - 4096);
            }
        }
    }

    public IReadOnlyList<(string Archive, long Offset, int Length, string Reason)> Since(long mark)
    {
        lock (entries)
        {
            return entries.Where(e => e.Seq >= mark).Select(e => (e.Archive, e.Offset, e.Length, e.Reason)).ToList();
        }
    }
}
