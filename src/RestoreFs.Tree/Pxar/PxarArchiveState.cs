using System.Text;
using Microsoft.Extensions.Logging;
using RestoreFs.Datastore;
using RestoreFs.Fuse;
using RestoreFs.Pxar;

namespace RestoreFs.Tree.Pxar;

/// <summary>
/// One pxar archive of a snapshot as the mount sees it: opened on first use (nothing is read before someone enters
/// its directory), shared by all of its nodes. Memory stays bounded: the archive keeps a small goodbye-table LRU and
/// the dynamic index readers their chunk caches; nodes are made per lookup and dropped when the kernel forgets them.
/// </summary>
public sealed class PxarArchiveState : IDisposable
{
    private const int OffsetBits = 40;
    private static long nextArchive;

    private readonly object gate = new();
    private readonly long archiveNumber = Interlocked.Increment(ref nextArchive);
    private PxarArchive? archive;
    private Lazy<IReadOnlyDictionary<ulong, int>>? linkCounts;

    public PxarArchiveState(TreeContext context, SnapshotState snapshot, PxarArchiveInfo info)
    {
        Context = context;
        Snapshot = snapshot;
        Info = info;
    }

    public TreeContext Context { get; }

    public SnapshotState Snapshot { get; }

    public PxarArchiveInfo Info { get; }

    public bool IsOpen => Volatile.Read(ref archive) is not null;

    /// <summary>The archive, opened on first call; errors become the errno a reader should see.</summary>
    public PxarArchive Archive
    {
        get
        {
            if (Volatile.Read(ref archive) is { } open)
            {
                return open;
            }

            lock (gate)
            {
                if (archive is not null)
                {
                    return archive;
                }

                try
                {
                    var cache = Context.Options.ImageCacheBytes / (Info.IsSplit ? 2 : 1);
                    var opened = SnapshotArchives.Open(Context.Store, Snapshot.Snapshot, Info, Context.Options.Key,
                        new DynamicImageReaderOptions(CacheBytes: Math.Max(cache, 16L * 1024 * 1024)));
                    linkCounts = new Lazy<IReadOnlyDictionary<ulong, int>>(() => CountLinks(opened));
                    Volatile.Write(ref archive, opened);
                    return opened;
                }
                catch (Exception e)
                {
                    throw Fail(e);
                }
            }
        }
    }

    /// <summary>
    /// st_ino of an entry: the archive's number in the high bits, the offset of the resolved entry in the low ones, so
    /// every name of a hard-linked file has the same number and a number never changes while the mount lives (no
    /// table grows with the tree). Counter-allocated numbers of the rest of the tree stay far below 2^62.
    /// </summary>
    public ulong InodeOf(PxarEntry entry)
    {
        var offset = entry.Inode;
        if (offset >= 1UL << OffsetBits)
        {
            return Context.Inodes.Next(); // a metadata stream over 1 TiB: no stable number, but never a false link
        }

        return (1UL << 62) | ((ulong)archiveNumber << OffsetBits) | offset;
    }

    /// <summary>st_nlink of a regular file (hard links counted once per archive, on the first stat of a file).</summary>
    public uint LinkCount(PxarEntry entry)
    {
        _ = Archive;
        try
        {
            return linkCounts!.Value.TryGetValue(entry.Inode, out var n) ? (uint)n : 1u;
        }
        catch (Exception e)
        {
            // Counting walks the tree; a damaged part elsewhere must not make this file unreadable.
            Context.WarnOnce($"pxar-links:{Snapshot.Snapshot.DirectoryPath}:{Info.Name}", null,
                "Hard links of {Archive} in {Snapshot} could not be counted: {Reason}", Info.Name, Snapshot.Snapshot.Name, e.Message);
            linkCounts = new Lazy<IReadOnlyDictionary<ulong, int>>(new Dictionary<ulong, int>());
            return 1;
        }
    }

    private IReadOnlyDictionary<ulong, int> CountLinks(PxarArchive opened)
    {
        if (!Info.IsSplit && TryCatalog() is { } catalog)
        {
            using (catalog.Source)
            {
                var block = catalog.Catalog.Root.FirstOrDefault(e =>
                    e.Type == PxarCatalogEntryType.Directory && e.Name.AsSpan().SequenceEqual(Encoding.UTF8.GetBytes(Info.MetadataFile)));
                if (block is not null)
                {
                    return opened.HardlinkCounts(catalog.Catalog, block.ChildBlockOffset);
                }
            }
        }

        return opened.HardlinkCounts();
    }

    private (PxarCatalog Catalog, DynamicIndexPxarSource Source)? TryCatalog()
    {
        const string CatalogFile = "catalog.pcat1.didx";
        if (!Snapshot.Manifest.Files.Any(f => f.FileName == CatalogFile))
        {
            return null;
        }

        var source = new DynamicIndexPxarSource(DynamicImageReader.Open(Context.Store, Snapshot.Snapshot, CatalogFile, Context.Options.Key,
            new DynamicImageReaderOptions(CacheBytes: 16L * 1024 * 1024)));
        try
        {
            return (new PxarCatalog(source), source);
        }
        catch
        {
            source.Dispose();
            throw;
        }
    }

    /// <summary>An error of this archive as an errno: key problems EACCES, damage EIO naming the chunk or offset (logged once).</summary>
    public FuseException Fail(Exception e)
    {
        if (e is PxarException p)
        {
            Context.WarnOnce($"pxar:{p.Archive}:{p.Offset}", null,
                "Read of {Archive} in {Snapshot} failed: {Reason}", Info.Name, Snapshot.Snapshot.Name, p.Message);
            return new FuseException(Errors.EIO, p.Message);
        }

        if (e.InnerException is DatastoreException inner && e is not DatastoreException)
        {
            return Snapshot.Translate(inner, Info.Name);
        }

        return Snapshot.Translate(e, Info.Name);
    }

    public void Dispose()
    {
        lock (gate)
        {
            archive?.Dispose();
            archive = null;
        }
    }
}
