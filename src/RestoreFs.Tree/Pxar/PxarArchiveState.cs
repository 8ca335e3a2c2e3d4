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
                    var opened = SnapshotArchives.Open(Context.Store, Snapshot.Snapshot, Info, Context.Options.Key,
                        ReaderOptions(Info.IsSplit ? MetadataShare : UnifiedShare), payloadReaderOptions: ReaderOptions(PayloadShare));
                    var counts = new Lazy<IReadOnlyDictionary<ulong, int>>(() => CountLinks(opened));
                    linkCounts = counts;
                    Volatile.Write(ref archive, opened);

                    // Counted in the background from the start, so that the first `ls -l` rarely waits for it (and waits
                    // exactly as long as it takes when it does: nlink is never guessed). Errors surface in LinkCount.
                    _ = Task.Run(() =>
                    {
                        try
                        {
                            _ = counts.Value;
                        }
                        catch (Exception)
                        {
                            // reported by LinkCount
                        }
                    });
                    return opened;
                }
                catch (Exception e)
                {
                    throw Fail(e);
                }
            }
        }
    }

    /// <summary>Part of the mount's decoded-chunk budget (<c>--cache-mb</c>) a split archive's metadata stream may hold
    /// (compact: 26,000 entries in under 4 MiB).</summary>
    private const int MetadataShare = 4;

    /// <summary>Part of the budget a unified (v1) stream may hold (all of it: with half, find and cat of a 26,000-entry
    /// archive took 1.5–2× longer): listing a directory reads entries spread across its
    /// extent, file contents included, so a walk re-reads a directory's chunks for each subdirectory — more cache, fewer
    /// decodes.</summary>
    private const int UnifiedShare = 1;

    /// <summary>Part of the budget a split archive's payload stream may hold: file contents are read sequentially (the
    /// kernel keeps what was read in its page cache), so the chunk being read and the next are enough.</summary>
    private const int PayloadShare = 16;

    /// <summary>
    /// Chunk caches of an archive: bounded per reader by a share of the mount's budget (at least 4 MiB — one average
    /// chunk), and charged to that budget (<see cref="TreeContext.ChunkMemory"/>), shared with every other archive and VM
    /// image the mount has open, which trims the least recently used reader. Browsing one archive of any size thus keeps
    /// at most budget/4 + budget/16 of decoded chunks for a split archive (20 MiB at the default 64), budget/2 for a unified one, however many chunks it decodes; the
    /// buffers are reused (<see cref="DynamicChunkBuffers"/>), so decoded chunks do not pile up as garbage either.
    /// </summary>
    private DynamicImageReaderOptions ReaderOptions(int share) =>
        new(CacheBytes: Math.Max(Context.Options.ImageCacheBytes / share, 4L * 1024 * 1024), Memory: Context.ChunkMemory);

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

    /// <summary>
    /// st_nlink of a regular file, exact: hard links are counted once per archive, started in the background when the
    /// archive is opened (first lookup or listing); a stat before that is done waits for it. Split archives: a scan of
    /// the metadata stream's item headers (tens of milliseconds for 26,000 entries, no entry decoded); unified ones with a
    /// catalog: the catalog's hard-link names, resolved one by one; without a catalog, a walk of the tree.
    /// </summary>
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
            ReaderOptions(PayloadShare)));
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
