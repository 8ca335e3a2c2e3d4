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
    private Lazy<LinkCounts>? linkCounts;
    private long recountAt;
    private long recountDelay = (long)LinkRecountInterval.TotalMilliseconds;
    private int recounting;
    private int entered;
    private Lazy<(PxarCatalog Catalog, DynamicIndexPxarSource Source, long ArchiveBlock)?>? listingCatalog;
    private readonly LinkedList<CachedBlock> blockLru = new();
    private readonly Dictionary<long, LinkedListNode<CachedBlock>> blocks = new();
    private int cachedBlockEntries;

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

    /// <summary>The archive, opened on first call; errors become the errno a reader should see.
    /// <para>The archive is first opened by a lookup of its directory, which a walk into it nearly always follows
    /// (<c>ls</c>, <c>cd</c>, <c>find</c>). On a cold store each read waits for the disk, so the reads that walk will need
    /// are started beside the open instead of after it: the root's goodbye table (in the stream's last chunk, while the
    /// root entry in its first is decoded) and, for a unified archive, the catalog (its index and root block). A stat
    /// alone thus costs two background decodes; a first <c>ls</c> of the root waits for one chain of reads, not three.</para></summary>
    public PxarArchive Archive
    {
        get
        {
            if (Volatile.Read(ref archive) is { } open)
            {
                return open;
            }

            return Open();
        }
    }

    private static readonly PxarArchiveOptions FetchAhead = new() { FetchRootTableAhead = true };

    private PxarArchive Open()
    {
        lock (gate)
        {
            if (archive is not null)
            {
                return archive;
            }

            if (!Info.IsSplit && HasCatalog && Volatile.Read(ref listingCatalog) is null)
            {
                _ = Task.Run(() =>
                {
                    try
                    {
                        _ = RootCatalogBlock;
                    }
                    catch (Exception)
                    {
                        // a catalog that cannot be used is warned about, and listings decode the archive
                    }
                });
            }

            try
            {
                var opened = SnapshotArchives.Open(Context.Store, Snapshot.Snapshot, Info, Context.Options.Key,
                    ReaderOptions(Info.IsSplit ? MetadataShare : HasCatalog ? UnifiedWithCatalogShare : UnifiedShare), FetchAhead,
                    payloadReaderOptions: ReaderOptions(PayloadShare), manifest: Snapshot.Manifest);
                linkCounts = new Lazy<LinkCounts>(() => Counted(CountLinksOrNone(opened)));
                Volatile.Write(ref archive, opened);
                return opened;
            }
            catch (Exception e)
            {
                throw Fail(e);
            }
        }
    }

    /// <summary>
    /// The archive for a walk into it (a lookup or listing in its root): opened as <see cref="Archive"/>, and on the
    /// first walk the hard-link count starts in the background, so that the first `ls -l` rarely waits for the count
    /// (and waits exactly as long as it takes when it does: nlink is never guessed). Neither step throws: a catalog that
    /// cannot be used is warned about and listings decode the archive; a count that fails is warned about and made again
    /// (<see cref="LinkCount"/>).
    /// </summary>
    public PxarArchive Enter()
    {
        var opened = Archive;
        if (Interlocked.Exchange(ref entered, 1) == 0)
        {
            _ = Task.Run(() =>
            {
                _ = RootCatalogBlock;
                _ = Volatile.Read(ref linkCounts)!.Value;
            });
        }

        return opened;
    }

    /// <summary>Part of the mount's decoded-chunk budget (<c>--cache-mb</c>) a split archive's metadata stream may hold:
    /// half, as a unified stream with a catalog. The stream is compact (26,000 entries in under 4 MiB), but its chunks
    /// are cut like any other (one in ten over 11 MB): with a quarter, two such chunks did not fit together, and the first
    /// listing of a 145,000-entry archive decoded its two chunks twice each (the root entry in the first, the root's
    /// goodbye table and the hard-link scan in the second), a `find` 13 times.</summary>
    private const int MetadataShare = 2;

    /// <summary>Part of the budget a unified (v1) stream may hold (all of it: with half, find and cat of a 26,000-entry
    /// archive took 1.5–2× longer): listing a directory reads entries spread across its
    /// extent, file contents included, so a walk re-reads a directory's chunks for each subdirectory — more cache, fewer
    /// decodes.</summary>
    private const int UnifiedShare = 1;

    /// <summary>Part of the budget a unified stream with a catalog may hold: listings come from the catalog and a walk
    /// reads the archive in stream order (each chunk about once), so half leaves room for the catalog's chunks — with
    /// all of it, every new archive chunk evicted the catalog's (a 79,000-entry find decoded its one chunk 74 times).</summary>
    private const int UnifiedWithCatalogShare = 2;

    private bool HasCatalog => Snapshot.Manifest.Files.Any(f => f.FileName == SnapshotArchives.CatalogFile);

    /// <summary>Part of the budget a split archive's payload stream may hold: file contents are read sequentially (the
    /// kernel keeps what was read in its page cache), so the chunk being read and the next are enough.</summary>
    private const int PayloadShare = 16;

    /// <summary>Part of the budget the catalog used for listings may hold (a 240,000-entry tree's catalog: a few MiB).</summary>
    private const int CatalogShare = 8;

    /// <summary>
    /// Chunk caches of an archive: bounded per reader by a share of the mount's budget (at least 4 MiB — one average
    /// chunk), and charged to that budget (<see cref="TreeContext.ChunkMemory"/>), shared with every other archive and VM
    /// image the mount has open, which trims the least recently used reader. Browsing one archive of any size thus keeps
    /// at most budget/2 + budget/16 of decoded chunks for a split archive (36 MiB at the default 64), budget/2 for a unified one, however many chunks it decodes; an
    /// evicted chunk's buffer is reused or unmapped at once (<see cref="DynamicChunkBuffers"/>), so decoded chunks do not
    /// pile up as garbage either.
    /// </summary>
    private DynamicImageReaderOptions ReaderOptions(int share) =>
        new(CacheBytes: Math.Max(Context.Options.ImageCacheBytes / share, 4L * 1024 * 1024), Memory: Context.ChunkMemory);

    /// <summary>
    /// st_ino of an entry by its <see cref="PxarEntry.Inode"/> (or <see cref="PxarName.Inode"/>): the archive's number
    /// in the high bits, the offset of the resolved entry in the low ones, so every name of a hard-linked file has the
    /// same number and a number never changes while the mount lives (no table grows with the tree). Counter-allocated
    /// numbers of the rest of the tree stay far below 2^62.
    /// </summary>
    public ulong InodeOf(ulong offset)
    {
        if (offset >= 1UL << OffsetBits)
        {
            return Context.Inodes.Next(); // a metadata stream over 1 TiB: no stable number, but never a false link
        }

        return (1UL << 62) | ((ulong)archiveNumber << OffsetBits) | offset;
    }

    /// <summary>
    /// st_nlink of a regular file by its <see cref="PxarEntry.Inode"/>, exact: hard links are counted once per archive,
    /// started in the background when someone enters the archive (<see cref="Enter"/>); a stat before that is done
    /// waits for it. Split archives: a scan of
    /// the metadata stream's item headers (tens of milliseconds for 26,000 entries, no entry decoded); unified ones with a
    /// catalog: the catalog's hard-link names, read in stream order (<see cref="PxarArchive.HardlinkCounts(PxarCatalog, long, CancellationToken)"/>);
    /// without a catalog, a walk of the tree. Where a chunk cannot be read, the names that cannot be read are not counted
    /// (they cannot be listed either) and the rest keep their counts, so `cp -a` and `rsync -H` still keep those links.
    /// <para>A count that left something out is not kept for good: the store may have been out of reach for a moment
    /// (an S3 gateway restarting) rather than damaged. It is made again in the background when a file is looked at after
    /// <see cref="LinkRecountInterval"/>, then after twice as long each time it is still short (up to
    /// <see cref="MaxLinkRecountInterval"/>); until it is whole, files of the archive are shown with a short attribute
    /// timeout (<see cref="LinkCountsSettled"/>), so the kernel asks again.</para>
    /// </summary>
    public uint LinkCount(ulong inode)
    {
        _ = Archive;
        var counts = Volatile.Read(ref linkCounts)!.Value;
        if (!counts.Complete)
        {
            RecountWhenDue();
        }

        return counts.Counts.TryGetValue(inode, out var n) ? (uint)n : 1u;
    }

    /// <summary>Whether the hard-link count is made and left nothing out (the nlink of every file is final).</summary>
    public bool LinkCountsSettled => Volatile.Read(ref linkCounts) is { IsValueCreated: true, Value.Complete: true };

    /// <summary>How long a hard-link count that left something out stands before it is made again (then twice as long
    /// each time it is still short).</summary>
    public static readonly TimeSpan LinkRecountInterval = TimeSpan.FromSeconds(2);

    /// <summary>The longest wait between two counts of an archive whose count stays short (a damaged chunk).</summary>
    public static readonly TimeSpan MaxLinkRecountInterval = TimeSpan.FromMinutes(5);

    /// <summary>Hard links per entry offset, and whether every name of the archive was counted.</summary>
    private sealed record LinkCounts(IReadOnlyDictionary<ulong, int> Counts, bool Complete);

    /// <summary>A count just made: a short one schedules the next.</summary>
    private LinkCounts Counted(LinkCounts counts)
    {
        if (!counts.Complete)
        {
            Volatile.Write(ref recountAt, Environment.TickCount64 + Interlocked.Read(ref recountDelay));
        }

        return counts;
    }

    /// <summary>Counts again on the thread pool when the wait is over and no count is under way; the stat that started
    /// it answers from the count it has.</summary>
    private void RecountWhenDue()
    {
        if (Environment.TickCount64 < Volatile.Read(ref recountAt) || Interlocked.Exchange(ref recounting, 1) == 1)
        {
            return;
        }

        var opened = Archive;
        _ = Task.Run(() =>
        {
            try
            {
                var fresh = CountLinksOrNone(opened);
                if (!fresh.Complete)
                {
                    Interlocked.Exchange(ref recountDelay, Math.Min(Interlocked.Read(ref recountDelay) * 2, (long)MaxLinkRecountInterval.TotalMilliseconds));
                }
                else
                {
                    Context.Log.LogInformation("Hard links of {Archive} in {Snapshot} counted in full", Info.Name, Snapshot.Snapshot.Name);
                }

                Volatile.Write(ref linkCounts, new Lazy<LinkCounts>(Counted(fresh)));
            }
            finally
            {
                Volatile.Write(ref recounting, 0);
            }
        });
    }

    /// <summary>A count that never throws: where the archive cannot be counted at all, no links (every file 1) and short.</summary>
    private LinkCounts CountLinksOrNone(PxarArchive opened)
    {
        try
        {
            var complete = true;
            var counts = CountLinks(opened, () => complete = false);
            return new LinkCounts(counts, complete);
        }
        catch (Exception e)
        {
            // Counting walks the tree; a damaged part elsewhere must not make this file unreadable.
            Context.WarnOnce($"pxar-links:{Snapshot.Snapshot.DirectoryPath}:{Info.Name}", null,
                "Hard links of {Archive} in {Snapshot} could not be counted: {Reason}", Info.Name, Snapshot.Snapshot.Name, e.Message);
            return new LinkCounts(new Dictionary<ulong, int>(), Complete: false);
        }
    }

    private IReadOnlyDictionary<ulong, int> CountLinks(PxarArchive opened, Action leftOut)
    {
        // The catalog the listings use (one reader, one decode of its chunks); unreadable or without this archive → the
        // walk below counts from the archive itself.
        var block = RootCatalogBlock;
        if (block >= 0 && listingCatalog?.Value is { } catalog)
        {
            try
            {
                return opened.HardlinkCounts(catalog.Catalog, block);
            }
            catch (Exception e)
            {
                CatalogUnusable(e.Message);
            }
        }

        if (opened.FormatVersion == 2)
        {
            try
            {
                return opened.HardlinkCountsByScan();
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                // the scan reads the whole metadata stream: one damaged chunk ends it — the walk below skips that part
                Context.WarnOnce($"pxar-links-scan:{Snapshot.Snapshot.DirectoryPath}:{Info.Name}", null,
                    "Hard links of {Archive} in {Snapshot}: the metadata stream cannot be scanned ({Reason}); counting the names that can be read",
                    Info.Name, Snapshot.Snapshot.Name, e.Message);
            }
        }

        // A damaged directory leaves out the names below it (they cannot be listed either), not every link of the archive.
        return opened.HardlinkCountsByWalk(skip: (directory, e) =>
        {
            leftOut();
            Context.WarnOnce($"pxar-links-skip:{Snapshot.Snapshot.DirectoryPath}:{Info.Name}:{directory.EntryOffset}", null,
                "Hard links of {Archive} in {Snapshot}: a directory at offset {Offset} cannot be listed, names below it are not counted: {Reason}",
                Info.Name, Snapshot.Snapshot.Name, directory.EntryOffset, e.Message);
        });
    }

    private (PxarCatalog Catalog, DynamicIndexPxarSource Source)? TryCatalog(int share)
    {
        if (!Snapshot.Manifest.Files.Any(f => f.FileName == SnapshotArchives.CatalogFile))
        {
            return null;
        }

        var source = new DynamicIndexPxarSource(DynamicImageReader.Open(Context.Store, Snapshot.Snapshot, SnapshotArchives.CatalogFile, Context.Options.Key,
            ReaderOptions(share), Snapshot.Manifest));
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

    /// <summary>Catalog entries a block cache may hold in all (a few directories' worth: a walk needs the parent's block
    /// while it descends into its children).</summary>
    private const int MaxCachedBlockEntries = 64 * 1024;

    /// <summary>
    /// The catalog block of the archive's root directory, or −1 when listings cannot come from the catalog: split
    /// archives (their metadata stream is already compact), snapshots without a catalog, or a catalog that cannot be read
    /// (warned once; listings then decode the archive's entries).
    /// </summary>
    public long RootCatalogBlock
    {
        get
        {
            if (Info.IsSplit)
            {
                return -1;
            }

            // Not under the archive's lock: the catalog is opened while the archive itself opens (see Archive).
            if (Volatile.Read(ref listingCatalog) is null)
            {
                Interlocked.CompareExchange(ref listingCatalog, new Lazy<(PxarCatalog, DynamicIndexPxarSource, long)?>(OpenListingCatalog), null);
            }

            return listingCatalog!.Value?.ArchiveBlock ?? -1;
        }
    }

    private (PxarCatalog Catalog, DynamicIndexPxarSource Source, long ArchiveBlock)? OpenListingCatalog()
    {
        try
        {
            if (TryCatalog(CatalogShare) is not { } opened)
            {
                return null;
            }

            if (opened.Catalog.ArchiveBlock(Info.MetadataFile) is not { } block)
            {
                opened.Source.Dispose();
                return null;
            }

            return (opened.Catalog, opened.Source, block);
        }
        catch (Exception e)
        {
            CatalogUnusable(e.Message);
            return null;
        }
    }

    /// <summary>The entries of a catalog block (cached: a walk reads a parent's block again for each subdirectory);
    /// null when the catalog cannot be read.</summary>
    public IReadOnlyList<PxarCatalogEntry>? CatalogBlock(long offset) => Block(offset)?.Entries;

    /// <summary>The catalog block of the subdirectory <paramref name="name"/> of the directory whose block is
    /// <paramref name="parentBlock"/>; −1 when unknown.</summary>
    public long ChildCatalogBlock(long parentBlock, ReadOnlySpan<byte> name) =>
        Block(parentBlock) is { } block && block.Subdirectories.TryGetValue(System.Text.Encoding.Latin1.GetString(name), out var child) ? child : -1;

    private CachedBlock? Block(long offset)
    {
        if (offset < 0 || listingCatalog?.Value is not { } catalog)
        {
            return null;
        }

        lock (blockLru)
        {
            if (blocks.TryGetValue(offset, out var node))
            {
                blockLru.Remove(node);
                blockLru.AddFirst(node);
                return node.Value;
            }
        }

        IReadOnlyList<PxarCatalogEntry> entries;
        try
        {
            entries = catalog.Catalog.ReadBlock(offset);
        }
        catch (Exception e)
        {
            CatalogUnusable(e.Message);
            return null;
        }

        lock (blockLru)
        {
            if (blocks.TryGetValue(offset, out var other))
            {
                return other.Value; // read by another thread meanwhile
            }

            var block = new CachedBlock(offset, entries);
            blocks[offset] = blockLru.AddFirst(block);
            cachedBlockEntries += entries.Count;
            while (cachedBlockEntries > MaxCachedBlockEntries && blockLru.Count > 1 && blockLru.Last is { } last)
            {
                blockLru.RemoveLast();
                blocks.Remove(last.Value.Offset);
                cachedBlockEntries -= last.Value.Entries.Count;
            }

            return block;
        }
    }

    /// <summary>A cached catalog block. Every lookup asks whether the name is a directory (files too), so the block's
    /// subdirectories are indexed once, on the first lookup (a scan per lookup made `ls -l` of 18,000 files
    /// quadratic); names as Latin-1 strings, one char per byte.</summary>
    private sealed class CachedBlock(long offset, IReadOnlyList<PxarCatalogEntry> entries)
    {
        private Dictionary<string, long>? subdirectories;

        public long Offset => offset;

        public IReadOnlyList<PxarCatalogEntry> Entries => entries;

        public Dictionary<string, long> Subdirectories => LazyInitializer.EnsureInitialized(ref subdirectories, () =>
        {
            var map = new Dictionary<string, long>(StringComparer.Ordinal);
            foreach (var e in entries)
            {
                if (e.Type == PxarCatalogEntryType.Directory)
                {
                    map.TryAdd(System.Text.Encoding.Latin1.GetString(e.Name), e.ChildBlockOffset);
                }
            }

            return map;
        });
    }

    /// <summary>The catalog disagrees with the archive or cannot be read: said once; listings decode the archive.</summary>
    public void CatalogUnusable(string reason) =>
        Context.WarnOnce($"pxar-catalog:{Snapshot.Snapshot.DirectoryPath}:{Info.Name}", null,
            "The catalog of {Archive} in {Snapshot} is not used for listings ({Reason}); listing from the archive itself",
            Info.Name, Snapshot.Snapshot.Name, reason);

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
            if (listingCatalog is { IsValueCreated: true, Value: { } catalog })
            {
                catalog.Source.Dispose();
            }
        }
    }
}
