using System.Buffers.Binary;

namespace RestoreFs.Pxar;

/// <summary>One goodbye record: name hash, distance back from the GOODBYE item, size as stored, and the FILENAME offset.</summary>
public readonly record struct PxarGoodbyeRecord(ulong Hash, long Back, long Size, long FilenameOffset);

/// <summary>Tuning of a <see cref="PxarArchive"/>.</summary>
/// <summary>A child as a listing shows it without its entry: name, type, inode (<see cref="PxarEntry.Inode"/>) and where its FILENAME is.</summary>
public readonly record struct PxarName(byte[] Name, PxarEntryKind Kind, ulong Inode, long FilenameOffset);

/// <summary>
/// Tuning of a <see cref="PxarArchive"/>'s goodbye-table cache: at most <paramref name="GoodbyeCacheTables"/> tables,
/// together at most <paramref name="GoodbyeCacheBytes"/> of records, each at most <paramref name="MaxCachedTableBytes"/>
/// (larger ones are remembered without their records and searched record by record).
/// </summary>
public sealed record PxarArchiveOptions(int GoodbyeCacheTables = 1024, int MaxCachedTableBytes = 1024 * 1024, long GoodbyeCacheBytes = 8L * 1024 * 1024)
{
    /// <summary>Opening the archive for a walk into it (a lookup or listing in the root follows): the root's goodbye
    /// table, at the end of the metadata stream, is fetched in the background while the root entry at its start is
    /// decoded. Off for a stat of the root alone, which needs neither.</summary>
    public bool FetchRootTableAhead { get; init; }
}

/// <summary>
/// Random access to a pxar archive (format v1, or v2 as metadata + payload stream) over any byte source, starting from
/// the root goodbye table at the end of the stream. Memory is bounded: nothing is loaded whole; goodbye tables
/// are kept in an LRU bounded by count and bytes (tables over <see cref="PxarArchiveOptions.MaxCachedTableBytes"/> without
/// their records, which are then searched record by record). Every offset is checked against the extent of
/// its directory (children lie strictly inside their parent, hard links point strictly backwards to a regular file),
/// so hostile input ends in a <see cref="PxarException"/>, never a hang or an unbounded allocation. Thread-safe.
/// </summary>
public sealed class PxarArchive : IDisposable
{
    /// <summary>Most bytes of attribute items (xattrs, ACLs, fcaps) one entry may have.</summary>
    public const int MaxAttributeBytes = 4 * 1024 * 1024;

    /// <summary>Most records a goodbye table may have (a directory of 16 million entries).</summary>
    public const long MaxGoodbyeRecords = 16L * 1024 * 1024;

    private readonly IPxarSource meta;
    private readonly IPxarSource? payload;
    private readonly PxarArchiveOptions options;
    private readonly object gate = new();
    // Goodbye tables by their directory (end of extent, ENTRY offset): a lookup in a directory whose table is known
    // reads nothing else of that directory's end (in a unified archive often another chunk than the child's).
    private readonly Dictionary<(long End, long Entry), LinkedListNode<((long End, long Entry) Key, Table Table)>> tables = new();
    private readonly LinkedList<((long End, long Entry) Key, Table Table)> tableLru = new();
    private long cachedTableBytes;
    private volatile bool payloadMarkersChecked;
    private readonly IDisposable[] owned;

    private PxarArchive(IPxarSource meta, IPxarSource? payload, PxarArchiveOptions? options, IDisposable[] owned)
    {
        this.meta = meta;
        this.payload = payload;
        this.options = options ?? new PxarArchiveOptions();
        this.owned = owned;
    }

    /// <summary>The name errors use (the metadata stream's).</summary>
    public string Name => meta.Name;

    /// <summary>1 (unified) or 2 (split: metadata + payload stream).</summary>
    public int FormatVersion { get; private set; } = 1;

    /// <summary>Offset and length of the PRELUDE's content (v2 only).</summary>
    public (long Offset, long Length)? PreludeRange { get; private set; }

    public PxarEntry Root { get; private set; } = null!;

    /// <summary>
    /// Opens an archive. <paramref name="payload"/> is the <c>.ppxar</c> stream of a split archive (required when the
    /// metadata stream starts with FORMAT_VERSION 2). <paramref name="owned"/> are disposed with the archive.
    /// </summary>
    public static PxarArchive Open(IPxarSource metadata, IPxarSource? payload = null, PxarArchiveOptions? options = null, params IDisposable[] owned)
    {
        var archive = new PxarArchive(metadata, payload, options, owned);
        archive.OpenRoot();
        return archive;
    }

    private void OpenRoot()
    {
        if (meta.Length < PxarFormat.HeaderSize + PxarFormat.StatSize + 40)
        {
            throw Error($"archive of {meta.Length} bytes is too short to hold a root directory", 0);
        }

        if (options.FetchRootTableAhead)
        {
            meta.Prefetch(meta.Length - 1);
        }

        long pos = 0;
        var (type, size) = Header(meta, pos, meta.Length);
        if (type == PxarFormat.FormatVersion)
        {
            if (size != PxarFormat.HeaderSize + 8)
            {
                throw Error($"FORMAT_VERSION item of {size} bytes (expected 24)", pos);
            }

            var version = ReadU64(meta, pos + PxarFormat.HeaderSize);
            if (version != 2)
            {
                throw Error($"unknown pxar format version {version}", pos);
            }

            FormatVersion = 2;
            pos += size;
            (type, size) = Header(meta, pos, meta.Length);
            if (type == PxarFormat.Prelude)
            {
                PreludeRange = (pos + PxarFormat.HeaderSize, size - PxarFormat.HeaderSize);
                pos += size;
            }

            if (payload is null)
            {
                throw Error("split (v2) archive: the payload stream (.ppxar) is needed as well", 0);
            }

            // The payload stream's markers are checked with the first file contents read from it (CheckContent): a
            // listing never needs the payload, and its first chunk can be as large as the metadata stream's.
        }

        var root = new PxarEntry([], -1) { IsRoot = true, DirectoryEnd = meta.Length };
        DecodeBody(root, pos, meta.Length);
        if (root.Kind != PxarEntryKind.Directory)
        {
            throw Error($"root entry is not a directory (mode {Convert.ToString(root.Mode, 8)})", root.EntryOffset);
        }

        Root = root;
    }

    /// <summary>
    /// Looks up a child by name through the directory's goodbye table; null when absent. <paramref name="directoryExpected"/>: the caller knows the
    /// child is a directory (from the catalog) and will look into it; its goodbye table, at the end of its extent and
    /// often in another chunk than its entry, is then fetched in the background while the entry is decoded.
    /// </summary>
    public PxarEntry? Lookup(PxarEntry directory, ReadOnlySpan<byte> name, bool directoryExpected = false)
    {
        RequireDirectory(directory);
        var table = OpenTable(directory);
        return FindRecord(directory, table, 0, PxarFormat.HashName(name), name, directoryExpected) is { } found
            ? DecodeChild(directory, table, found.FileOffset, found.Size)
            : null;
    }

    public PxarEntry? Lookup(PxarEntry directory, string name) => Lookup(directory, System.Text.Encoding.UTF8.GetBytes(name));

    /// <summary>Looks up a '/'-separated path from the root ("" or "/" is the root). Null when a component is missing or not a directory.</summary>
    public PxarEntry? LookupPath(ReadOnlySpan<byte> path)
    {
        var current = Root;
        while (path.Length > 0)
        {
            var slash = path.IndexOf((byte)'/');
            var part = slash < 0 ? path : path[..slash];
            path = slash < 0 ? default : path[(slash + 1)..];
            if (part.Length == 0 || (part.Length == 1 && part[0] == '.'))
            {
                continue;
            }

            if (current.Kind != PxarEntryKind.Directory)
            {
                return null;
            }

            var next = Lookup(current, part);
            if (next is null)
            {
                return null;
            }

            current = next;
        }

        return current;
    }

    public PxarEntry? LookupPath(string path) => LookupPath(System.Text.Encoding.UTF8.GetBytes(path));

    /// <summary>The children of a directory in stream (= name) order, hard links resolved.</summary>
    public IReadOnlyList<PxarEntry> List(PxarEntry directory)
    {
        RequireDirectory(directory);
        var table = OpenTable(directory);
        var refs = new (long FileOffset, ulong Hash, long Size)[table.Count];
        for (var i = 0; i < table.Count; i++)
        {
            var (hash, fileOffset, size) = Record(directory, table, i);
            refs[i] = (fileOffset, hash, size);
        }

        Array.Sort(refs, (a, b) => a.FileOffset.CompareTo(b.FileOffset));
        var result = new List<PxarEntry>(refs.Length);
        for (var i = 0; i < refs.Length; i++)
        {
            if (i > 0 && refs[i].FileOffset == refs[i - 1].FileOffset)
            {
                throw Error("two goodbye records point to the same entry", table.Offset);
            }

            var child = DecodeChild(directory, table, refs[i].FileOffset, refs[i].Size);
            if (PxarFormat.HashName(child.Name) != refs[i].Hash)
            {
                throw Error($"name hash mismatch: goodbye record has {refs[i].Hash:x16}, the name there hashes to {PxarFormat.HashName(child.Name):x16}",
                    refs[i].FileOffset);
            }

            if (i > 0 && result[^1].IsDirectory && result[^1].DirectoryEnd > child.FilenameOffset)
            {
                throw Error("directory extent overlaps its next sibling", result[^1].FilenameOffset);
            }

            result.Add(child);
        }

        return result;
    }

    /// <summary>
    /// A directory's children as names, types and inode numbers (<see cref="PxarEntry.Inode"/>) from its catalog block,
    /// in stream order, without decoding their entries: what a plain listing needs (a unified archive interleaves
    /// the entries of a directory's children with their file contents, so decoding each child reads most of the
    /// directory's extent). The catalog is checked against the archive first: every name must be valid and hash to a
    /// distinct record of the directory's goodbye table, one name per record. Types come from the catalog; a hard link
    /// is decoded (its inode is its target's). Null when the catalog does not match — list with <see cref="List"/> then.
    /// </summary>
    public IReadOnlyList<PxarName>? ListFromCatalog(PxarEntry directory, IReadOnlyList<PxarCatalogEntry> block)
    {
        RequireDirectory(directory);
        var table = OpenTable(directory);
        if (table.Count != block.Count)
        {
            return null;
        }

        var byHash = new Dictionary<ulong, (long FileOffset, long Size)>((int)table.Count);
        for (var i = 0; i < table.Count; i++)
        {
            var (hash, fileOffset, size) = Record(directory, table, i);
            if (!byHash.TryAdd(hash, (fileOffset, size)))
            {
                return null; // two names with one hash: only the names themselves can tell them apart
            }
        }

        var result = new List<PxarName>(block.Count);
        foreach (var e in block)
        {
            var name = e.Name.AsSpan();
            if (name.Length == 0 || name.Length > PxarFormat.MaxPathContent || name.IndexOf((byte)0) >= 0 || name.IndexOf((byte)'/') >= 0 ||
                name.SequenceEqual("."u8) || name.SequenceEqual(".."u8) || !byHash.Remove(PxarFormat.HashName(name), out var record))
            {
                return null;
            }

            PxarEntryKind kind;
            ulong inode;
            if (e.Type == PxarCatalogEntryType.Hardlink)
            {
                var child = DecodeChild(directory, table, record.FileOffset, record.Size);
                (kind, inode) = (child.Kind, child.Inode);
            }
            else
            {
                kind = e.Type switch
                {
                    PxarCatalogEntryType.Directory => PxarEntryKind.Directory,
                    PxarCatalogEntryType.File => PxarEntryKind.File,
                    PxarCatalogEntryType.Symlink => PxarEntryKind.Symlink,
                    PxarCatalogEntryType.BlockDevice => PxarEntryKind.BlockDevice,
                    PxarCatalogEntryType.CharDevice => PxarEntryKind.CharDevice,
                    PxarCatalogEntryType.Fifo => PxarEntryKind.Fifo,
                    PxarCatalogEntryType.Socket => PxarEntryKind.Socket,
                    _ => throw new PxarException($"catalog entry of unknown type '{(char)e.Type}'", Name, record.FileOffset),
                };

                // The ENTRY item directly follows the FILENAME item (header, name, NUL).
                inode = (ulong)(record.FileOffset + PxarFormat.HeaderSize + name.Length + 1);
            }

            result.Add(new PxarName(e.Name, kind, inode, record.FileOffset));
        }

        result.Sort((a, b) => a.FilenameOffset.CompareTo(b.FilenameOffset));
        return result;
    }

    /// <summary>
    /// Link counts of hard-linked files: inode → number of names (only files with more than one). A FUSE layer reports
    /// these as st_nlink so that cp -a, rsync -H and tar keep the links. Split (v2) archives: a scan of the metadata
    /// stream's item headers (<see cref="HardlinkCountsByScan"/>); unified (v1) ones: a walk of the tree
    /// (<see cref="HardlinkCountsByWalk"/>; it touches every chunk — with a catalog, prefer the catalog overload).
    /// </summary>
    public IReadOnlyDictionary<ulong, int> HardlinkCounts(CancellationToken ct = default) =>
        FormatVersion == 2 ? HardlinkCountsByScan(ct) : HardlinkCountsByWalk(ct);

    /// <summary>
    /// Link counts from one pass over the metadata stream's item headers (v2 only), without decoding entries: a pxar
    /// stream is a flat sequence of items, and every HARDLINK item directly follows its FILENAME and points back to the
    /// target's FILENAME. Only those targets are then decoded (and must be regular files, as the tree requires). A
    /// split archive's metadata stream holds no file contents (a 26,000-entry tree: under 4 MiB), so this reads a few
    /// chunks sequentially and parses headers from a 64 KiB buffer — tens of milliseconds, against seconds for a walk
    /// that decodes every entry and goodbye table. In a well-formed archive every item belongs to the tree, so the
    /// counts equal the walk's; a malformed stream throws <see cref="PxarException"/>.
    /// </summary>
    public IReadOnlyDictionary<ulong, int> HardlinkCountsByScan(CancellationToken ct = default)
    {
        if (FormatVersion != 2)
        {
            throw new InvalidOperationException("a header scan needs a split (v2) archive: a unified stream holds the file contents");
        }

        var targets = new Dictionary<long, (int Links, long FirstLink)>();
        var buffer = new byte[64 * 1024];
        long bufferStart = 0;
        var bufferLength = 0;
        long length = meta.Length;
        long pos = 0;
        long lastFilename = -1;
        ulong previous = 0;
        var items = 0;
        while (pos < length)
        {
            if ((++items & 4095) == 0)
            {
                ct.ThrowIfCancellationRequested();
            }

            var need = Math.Min(PxarFormat.HeaderSize + 8, length - pos);
            if (pos + need > bufferStart + bufferLength)
            {
                bufferStart = pos;
                bufferLength = ReadFully(meta, pos, buffer);
            }

            var at = (int)(pos - bufferStart);
            if (bufferLength - at < PxarFormat.HeaderSize)
            {
                throw Error($"item header at {pos} runs past the end ({length})", pos);
            }

            var type = BinaryPrimitives.ReadUInt64LittleEndian(buffer.AsSpan(at));
            var size = BinaryPrimitives.ReadUInt64LittleEndian(buffer.AsSpan(at + 8));
            if (size < PxarFormat.HeaderSize || size > (ulong)(length - pos))
            {
                throw Error($"{PxarFormat.ItemName(type)} item of {size} bytes does not fit (room {length - pos})", pos);
            }

            if (type == PxarFormat.Filename)
            {
                lastFilename = pos;
            }
            else if (type == PxarFormat.Hardlink && previous == PxarFormat.Filename && size >= PxarFormat.HeaderSize + 9)
            {
                var back = BinaryPrimitives.ReadUInt64LittleEndian(buffer.AsSpan(at + PxarFormat.HeaderSize));
                if (back == 0 || back > (ulong)lastFilename)
                {
                    throw Error($"hard link points {back} bytes back, outside the archive", pos);
                }

                var target = lastFilename - (long)back;
                targets[target] = targets.TryGetValue(target, out var t) ? (t.Links + 1, t.FirstLink) : (1, lastFilename);
            }

            previous = type;
            pos += (long)size;
        }

        var counts = new Dictionary<ulong, int>();
        foreach (var (target, (links, firstLink)) in targets)
        {
            PxarEntry entry;
            try
            {
                entry = DecodeNamed(target, firstLink, allowHardlink: false);
            }
            catch (PxarException)
            {
                continue; // the tree shows these links as damaged (EIO); they name no file
            }

            if (entry.Kind == PxarEntryKind.File)
            {
                counts[entry.Inode] = links + 1;
            }
        }

        return counts;
    }

    /// <summary>
    /// Link counts from a walk of the whole tree (every directory listed, every entry decoded). A directory that cannot
    /// be listed (a damaged chunk) ends the walk with its error, unless <paramref name="skip"/> is given: it is then told
    /// the directory and the error, and the walk goes on without that subtree — the counts are those of the names that
    /// can be read, which is what a walk of the mounted tree finds, and damage in one place does not take the links of
    /// the rest of the tree with it.
    /// </summary>
    public IReadOnlyDictionary<ulong, int> HardlinkCountsByWalk(CancellationToken ct = default, Action<PxarEntry, Exception>? skip = null)
    {
        var counts = new Dictionary<ulong, int>();
        var pending = new Stack<PxarEntry>();
        pending.Push(Root);
        while (pending.Count > 0)
        {
            ct.ThrowIfCancellationRequested();
            var directory = pending.Pop();
            IReadOnlyList<PxarEntry> children;
            try
            {
                children = List(directory);
            }
            catch (Exception e) when (skip is not null && e is not OperationCanceledException)
            {
                skip(directory, e);
                continue;
            }

            foreach (var child in children)
            {
                if (child.IsDirectory)
                {
                    pending.Push(child);
                }
                else if (child.IsHardlink)
                {
                    counts[child.Inode] = counts.GetValueOrDefault(child.Inode, 1) + 1;
                }
            }
        }

        return counts;
    }

    /// <summary>
    /// The same from the catalog's hard-link names (a catalog of unified archives lists every later name as 'h'): only
    /// those names, and the directories on their way, are read from the archive. <paramref name="archiveBlock"/> is the
    /// catalog block of this archive (the root block's directory entry named after the archive's index file).
    /// <para>First the catalog alone tells which directories hold a hard link somewhere below them; those are walked in
    /// stream order (the catalog's order is the archive's), each looked up in its parent, and each link gives where its
    /// target lies without the target being read. Then the targets are read in stream order. So every chunk on the way
    /// is decoded about once, however the links and their targets are spread (names resolved one by one from the root
    /// jumped between both and decoded chunks again and again). A target that cannot be read is left out: reading it
    /// through its names reports why. A catalog whose directory block is reached twice is malformed (it would make the
    /// walk exponential): <see cref="PxarException"/>.</para>
    /// </summary>
    public IReadOnlyDictionary<ulong, int> HardlinkCounts(PxarCatalog catalog, long archiveBlock, CancellationToken ct = default)
    {
        var holdsLinks = CatalogBlocksHoldingLinks(catalog, archiveBlock, ct);
        var targets = new SortedDictionary<long, (int Names, long FirstLink)>();
        var walk = new Stack<(IReadOnlyList<PxarCatalogEntry> Entries, PxarEntry Directory)>();
        var next = new Stack<int>();
        if (holdsLinks[archiveBlock])
        {
            walk.Push((catalog.ReadBlock(archiveBlock), Root));
            next.Push(0);
        }

        while (walk.Count > 0)
        {
            ct.ThrowIfCancellationRequested();
            var (entries, directory) = walk.Peek();
            var i = next.Pop();
            if (i == entries.Count)
            {
                walk.Pop();
                continue;
            }

            next.Push(i + 1);
            var e = entries[i];
            if (e.Type == PxarCatalogEntryType.Directory && holdsLinks[e.ChildBlockOffset]
                && Lookup(directory, e.Name, directoryExpected: true) is { Kind: PxarEntryKind.Directory } sub)
            {
                walk.Push((catalog.ReadBlock(e.ChildBlockOffset), sub));
                next.Push(0);
            }
            else if (e.Type == PxarCatalogEntryType.Hardlink && HardlinkTargetOf(directory, e.Name) is { } link)
            {
                targets[link.Target] = targets.TryGetValue(link.Target, out var t)
                    ? (t.Names + 1, Math.Min(t.FirstLink, link.Link))
                    : (1, link.Link);
            }
        }

        var counts = new Dictionary<ulong, int>();
        foreach (var (offset, (names, firstLink)) in targets)
        {
            ct.ThrowIfCancellationRequested();
            try
            {
                if (DecodeNamed(offset, firstLink, allowHardlink: false) is { Kind: PxarEntryKind.File } target)
                {
                    counts[target.Inode] = 1 + names;
                }
            }
            catch (PxarException)
            {
                // See above: the names of this file report it when read.
            }
        }

        return counts;
    }

    /// <summary>For every directory block below <paramref name="top"/> (and itself): whether it or a directory below it
    /// lists a hard-link name. Iterative (no recursion however deep the tree), every block read once.</summary>
    private static Dictionary<long, bool> CatalogBlocksHoldingLinks(PxarCatalog catalog, long top, CancellationToken ct)
    {
        var holds = new Dictionary<long, bool>();
        var seen = new HashSet<long> { top };
        var open = new Stack<(long Block, IReadOnlyList<PxarCatalogEntry> Entries)>();
        var state = new Stack<(int Next, bool Holds)>();
        open.Push((top, catalog.ReadBlock(top)));
        state.Push((0, false));
        while (open.Count > 0)
        {
            ct.ThrowIfCancellationRequested();
            var (block, entries) = open.Peek();
            var (i, found) = state.Pop();
            if (i == entries.Count)
            {
                open.Pop();
                holds[block] = found;
                if (state.Count > 0)
                {
                    var parent = state.Pop();
                    state.Push((parent.Next, parent.Holds || found));
                }

                continue;
            }

            var e = entries[i];
            state.Push((i + 1, found || e.Type == PxarCatalogEntryType.Hardlink));
            if (e.Type == PxarCatalogEntryType.Directory)
            {
                if (!seen.Add(e.ChildBlockOffset))
                {
                    throw new PxarException("catalog directory block is listed by two directories", catalog.Name, e.ChildBlockOffset);
                }

                open.Push((e.ChildBlockOffset, catalog.ReadBlock(e.ChildBlockOffset)));
                state.Push((0, false));
            }
        }

        return holds;
    }

    /// <summary>A directory's goodbye records in stored (hash-tree) order, the order PBS's own readdir uses.</summary>
    public IReadOnlyList<PxarGoodbyeRecord> GoodbyeRecords(PxarEntry directory)
    {
        RequireDirectory(directory);
        var table = OpenTable(directory);
        var result = new List<PxarGoodbyeRecord>((int)Math.Min(table.Count, 1 << 20));
        for (var i = 0; i < table.Count; i++)
        {
            var (hash, fileOffset, size) = Record(directory, table, i);
            result.Add(new PxarGoodbyeRecord(hash, table.Offset - fileOffset, size, fileOffset));
        }

        return result;
    }

    /// <summary>Offset of a directory's GOODBYE item.</summary>
    public long GoodbyeOffset(PxarEntry directory)
    {
        RequireDirectory(directory);
        return OpenTable(directory).Offset;
    }

    /// <summary>Reads a regular file's bytes at <paramref name="offset"/>: min(dst.Length, Size − offset); 0 at or past the end.</summary>
    public int Read(PxarEntry file, long offset, Span<byte> dst)
    {
        if (file.Kind != PxarEntryKind.File)
        {
            throw new ArgumentException($"{file} is not a regular file", nameof(file));
        }

        if (file.ContentInPayloadStream && !file.PayloadHeaderChecked)
        {
            CheckContent(file.Content);
            file.PayloadHeaderChecked = true;
        }

        return Read(file.Content, offset, dst);
    }

    /// <summary>
    /// Reads a regular file's bytes by where they lie (<see cref="PxarEntry.Content"/>), for a caller that keeps that
    /// instead of the whole entry; in a split archive <see cref="CheckContent"/> must have passed before the first read.
    /// </summary>
    public int Read(in PxarContent content, long offset, Span<byte> dst)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        if (offset >= content.Size)
        {
            return 0;
        }

        var n = (int)Math.Min(dst.Length, content.Size - offset);
        var source = content.InPayloadStream ? payload ?? throw Error("the entry's contents are in a payload stream the archive has not got", content.PayloadRefOffset) : meta;
        var got = ReadFully(source, content.Offset + offset, dst[..n]);
        if (got != n)
        {
            throw new PxarException("file contents are truncated", source.Name, content.Offset + offset + got);
        }

        return n;
    }

    /// <summary>
    /// A split archive's PAYLOAD_REF must point at a PAYLOAD item of exactly the referenced size in the payload stream;
    /// throws if it does not. Nothing to check for contents inside a unified archive.
    /// </summary>
    public void CheckContent(in PxarContent content)
    {
        if (!content.InPayloadStream)
        {
            return;
        }

        var stream = payload ?? throw Error("the entry's contents are in a payload stream the archive has not got", content.PayloadRefOffset);
        if (!payloadMarkersChecked)
        {
            CheckPayloadMarkers(stream);
        }

        Span<byte> ph = stackalloc byte[PxarFormat.HeaderSize];
        var at = content.Offset - PxarFormat.HeaderSize;
        ReadExact(stream, at, ph);
        var ptype = BinaryPrimitives.ReadUInt64LittleEndian(ph);
        var psize = BinaryPrimitives.ReadUInt64LittleEndian(ph[8..]);
        if (ptype != PxarFormat.Payload || psize != (ulong)content.Size + PxarFormat.HeaderSize)
        {
            throw Error($"PAYLOAD_REF ({at}, {content.Size}) does not match the payload stream's {PxarFormat.ItemName(ptype)} of {psize} bytes there",
                content.PayloadRefOffset);
        }
    }

    /// <summary>
    /// A split archive's payload stream must start with PAYLOAD_START_MARKER and end with PAYLOAD_TAIL_MARKER; checked once,
    /// before the first file contents are read from it (its first and last chunks are decoded for that, so a listing does
    /// not pay for them). A failure is not remembered: every later read reports it again.
    /// </summary>
    private void CheckPayloadMarkers(IPxarSource stream)
    {
        if (stream.Length < 2 * PxarFormat.HeaderSize)
        {
            throw new PxarException($"payload stream of {stream.Length} bytes is too short to hold its start and tail markers", stream.Name, 0);
        }

        var (start, startSize) = Header(stream, 0, stream.Length, "payload stream");
        if (start != PxarFormat.PayloadStartMarker || startSize != PxarFormat.HeaderSize)
        {
            throw new PxarException($"payload stream does not start with PAYLOAD_START_MARKER ({PxarFormat.ItemName(start)})", stream.Name, 0);
        }

        var (end, endSize) = Header(stream, stream.Length - PxarFormat.HeaderSize, stream.Length, "payload stream");
        if (end != PxarFormat.PayloadTailMarker || endSize != PxarFormat.HeaderSize)
        {
            throw new PxarException($"payload stream does not end with PAYLOAD_TAIL_MARKER ({PxarFormat.ItemName(end)})", stream.Name,
                stream.Length - PxarFormat.HeaderSize);
        }

        payloadMarkersChecked = true;
    }

    /// <summary>A read-only seekable stream over a regular file's contents.</summary>
    public Stream OpenRead(PxarEntry file)
    {
        if (file.Kind != PxarEntryKind.File)
        {
            throw new ArgumentException($"{file} is not a regular file", nameof(file));
        }

        return new PxarFileStream(this, file);
    }

    /// <summary>The PRELUDE bytes of a v2 archive (at most 1 MiB), or null.</summary>
    public byte[]? ReadPrelude()
    {
        if (PreludeRange is not { } r)
        {
            return null;
        }

        if (r.Length > 1024 * 1024)
        {
            throw Error($"PRELUDE of {r.Length} bytes is larger than 1 MiB", r.Offset);
        }

        var bytes = new byte[r.Length];
        ReadExact(meta, r.Offset, bytes);
        return bytes;
    }

    public void Dispose()
    {
        foreach (var d in owned)
        {
            d.Dispose();
        }
    }

    // ---------------------------------------------------------------------------------------------------------------
    // goodbye tables

    private readonly record struct Table(long Offset, long Count, byte[]? Records);

    private static void RequireDirectory(PxarEntry entry)
    {
        if (entry.Kind != PxarEntryKind.Directory)
        {
            throw new ArgumentException($"{entry} is not a directory", nameof(entry));
        }
    }

    /// <summary>Finds and checks a directory's goodbye table from the end of its extent (cached per directory).</summary>
    private Table OpenTable(PxarEntry dir)
    {
        var key = (dir.DirectoryEnd, dir.IsRoot ? -1 : dir.EntryOffset);
        lock (gate)
        {
            if (tables.TryGetValue(key, out var node))
            {
                tableLru.Remove(node);
                tableLru.AddFirst(node);
                return node.Value.Table;
            }
        }

        var table = ReadTable(dir);
        if (options.GoodbyeCacheTables <= 0)
        {
            return table;
        }

        lock (gate)
        {
            if (!tables.ContainsKey(key))
            {
                tables[key] = tableLru.AddFirst((key, table));
                cachedTableBytes += table.Records?.Length ?? 0;
                while ((tables.Count > options.GoodbyeCacheTables || cachedTableBytes > options.GoodbyeCacheBytes) && tableLru.Last is { } last &&
                       last != tableLru.First)
                {
                    tableLru.RemoveLast();
                    tables.Remove(last.Value.Key);
                    cachedTableBytes -= last.Value.Table.Records?.Length ?? 0;
                }
            }
        }

        return table;
    }

    private Table ReadTable(PxarEntry dir)
    {
        var end = dir.DirectoryEnd;
        if (end - PxarFormat.GoodbyeRecordSize < dir.ContentStart)
        {
            throw Error("directory has no room for its goodbye table", dir.ContentStart);
        }

        Span<byte> tail = stackalloc byte[PxarFormat.GoodbyeRecordSize];
        ReadExact(meta, end - PxarFormat.GoodbyeRecordSize, tail);
        var marker = BinaryPrimitives.ReadUInt64LittleEndian(tail);
        var back = BinaryPrimitives.ReadUInt64LittleEndian(tail[8..]);
        var size = BinaryPrimitives.ReadUInt64LittleEndian(tail[16..]);
        if (marker != PxarFormat.GoodbyeTailMarker)
        {
            throw Error($"no goodbye tail marker at the end of the directory (found {marker:x16})", end - PxarFormat.GoodbyeRecordSize);
        }

        if (size < 40 || (size - 16) % 24 != 0 || size > (ulong)(end - dir.ContentStart))
        {
            throw Error($"goodbye table size {size} does not fit the directory (extent {dir.ContentStart}…{end})", end - PxarFormat.GoodbyeRecordSize);
        }

        var offset = end - (long)size;
        var expectedBack = dir.IsRoot ? offset : offset - dir.EntryOffset;
        if (back != (ulong)expectedBack)
        {
            throw Error($"goodbye tail points {back} bytes back, not to the directory's entry ({expectedBack})", end - PxarFormat.GoodbyeRecordSize);
        }

        var (type, full) = Header(meta, offset, end);
        if (type != PxarFormat.Goodbye || full != (long)size)
        {
            throw Error($"expected a GOODBYE item of {size} bytes, found {PxarFormat.ItemName(type)} of {full}", offset);
        }

        var count = ((long)size - 16) / 24 - 1;
        if (count > MaxGoodbyeRecords)
        {
            throw Error($"goodbye table of {count} records is absurd", offset);
        }

        var bytes = count * 24;
        if (bytes > options.MaxCachedTableBytes)
        {
            return new Table(offset, count, null);
        }

        var records = new byte[bytes];
        ReadExact(meta, offset + PxarFormat.HeaderSize, records);
        return new Table(offset, count, records);
    }

    /// <summary>Record <paramref name="i"/>: its hash, the child's FILENAME offset (checked to lie inside the directory) and size.</summary>
    private (ulong Hash, long FileOffset, long Size) Record(PxarEntry dir, Table table, long i)
    {
        Span<byte> rec = stackalloc byte[24];
        if (table.Records is { } cached)
        {
            cached.AsSpan((int)(i * 24), 24).CopyTo(rec);
        }
        else
        {
            ReadExact(meta, table.Offset + PxarFormat.HeaderSize + i * 24, rec);
        }

        var hash = BinaryPrimitives.ReadUInt64LittleEndian(rec);
        var back = BinaryPrimitives.ReadUInt64LittleEndian(rec[8..]);
        var size = BinaryPrimitives.ReadUInt64LittleEndian(rec[16..]);
        if (back == 0 || back > (ulong)(table.Offset - dir.ContentStart))
        {
            throw Error($"goodbye record {i} points {back} bytes back, outside its directory ({dir.ContentStart}…{table.Offset})",
                table.Offset + PxarFormat.HeaderSize + i * 24);
        }

        // (v2 file records count their payload bytes too, so the bound is both streams together.)
        if (size > (ulong)meta.Length + (ulong)(payload?.Length ?? 0))
        {
            throw Error($"goodbye record {i} has an absurd size {size}", table.Offset + PxarFormat.HeaderSize + i * 24);
        }

        return (hash, table.Offset - (long)back, (long)size);
    }

    /// <summary>Searches the implicit binary tree below index <paramref name="i"/>; on equal hashes with another name, both subtrees.</summary>
    /// <summary>The goodbye record of <paramref name="name"/> in a directory's table (its FILENAME's offset and its extent's
    /// size), searched from record <paramref name="i"/>; null when the name is not there. The name is checked against the
    /// record's hash on the way.</summary>
    private (long FileOffset, long Size)? FindRecord(PxarEntry dir, Table table, long i, ulong hash, ReadOnlySpan<byte> name, bool directoryExpected)
    {
        while (i < table.Count)
        {
            var (recordHash, fileOffset, size) = Record(dir, table, i);
            if (hash < recordHash)
            {
                i = 2 * i + 1;
            }
            else if (hash > recordHash)
            {
                i = 2 * i + 2;
            }
            else
            {
                if (directoryExpected && size > 0)
                {
                    meta.Prefetch(fileOffset + size - 1);
                }

                var storedName = ReadFilename(fileOffset, table.Offset);
                if (PxarFormat.HashName(storedName) != recordHash)
                {
                    throw Error($"name hash mismatch: goodbye record has {recordHash:x16}, the name there hashes to {PxarFormat.HashName(storedName):x16}",
                        fileOffset);
                }

                if (name.SequenceEqual(storedName))
                {
                    return (fileOffset, size);
                }

                // A 64-bit collision: further records with this hash sit in either subtree.
                return FindRecord(dir, table, 2 * i + 1, hash, name, directoryExpected) ?? FindRecord(dir, table, 2 * i + 2, hash, name, directoryExpected);
            }
        }

        return null;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // entries

    private byte[] ReadFilename(long offset, long limit)
    {
        var (type, size) = Header(meta, offset, limit);
        if (type != PxarFormat.Filename)
        {
            throw Error($"expected FILENAME, found {PxarFormat.ItemName(type)}", offset);
        }

        var content = size - PxarFormat.HeaderSize;
        if (content < 2 || content > PxarFormat.MaxPathContent)
        {
            throw Error($"FILENAME of {content} bytes", offset);
        }

        var bytes = new byte[content];
        ReadExact(meta, offset + PxarFormat.HeaderSize, bytes);
        var name = bytes.AsSpan(0, bytes.Length - 1);
        if (bytes[^1] != 0 || name.IndexOf((byte)0) >= 0 || name.IndexOf((byte)'/') >= 0 ||
            name.SequenceEqual("."u8) || name.SequenceEqual(".."u8))
        {
            throw Error("invalid file name (not NUL-terminated, or holds NUL or '/', or is . or ..)", offset);
        }

        return name.ToArray();
    }

    /// <summary>Decodes the child whose FILENAME is at <paramref name="fileOffset"/> (inside <paramref name="dir"/>, before its goodbye table).</summary>
    private PxarEntry DecodeChild(PxarEntry dir, Table table, long fileOffset, long recordSize)
    {
        var entry = DecodeNamed(fileOffset, table.Offset, allowHardlink: true);
        if (entry.Kind == PxarEntryKind.Directory)
        {
            var end = fileOffset + recordSize;
            if (recordSize <= 0 || end > table.Offset || end <= entry.ContentStart)
            {
                throw Error($"goodbye record gives the subdirectory an extent {fileOffset}…{end} outside its parent (…{table.Offset})", fileOffset);
            }

            entry.DirectoryEnd = end;
        }

        return entry;
    }

    /// <summary>The HARDLINK item at <paramref name="pos"/> (of <paramref name="size"/> bytes) of the name at
    /// <paramref name="fileOffset"/>: its target's FILENAME offset, and the item's content (offset, then the path).</summary>
    private (long TargetOffset, byte[] Content) ReadHardlink(long fileOffset, long pos, long size)
    {
        var content = size - PxarFormat.HeaderSize;
        if (content < 9 || content > PxarFormat.MaxHardlinkContent)
        {
            throw Error($"HARDLINK of {content} bytes", pos);
        }

        var bytes = new byte[content];
        ReadExact(meta, pos + PxarFormat.HeaderSize, bytes);
        var back = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        if (back == 0 || back > (ulong)fileOffset)
        {
            throw Error($"hard link points {back} bytes back, outside the archive", pos);
        }

        return (fileOffset - (long)back, bytes);
    }

    /// <summary>Where the hard link <paramref name="name"/> of a directory points (its target's FILENAME offset), read
    /// from the link alone, and the link's own FILENAME offset; null when the name is missing or not a hard link.</summary>
    private (long Target, long Link)? HardlinkTargetOf(PxarEntry directory, ReadOnlySpan<byte> name)
    {
        var table = OpenTable(directory);
        if (FindRecord(directory, table, 0, PxarFormat.HashName(name), name, directoryExpected: false) is not { } found)
        {
            return null;
        }

        var pos = found.FileOffset + PxarFormat.HeaderSize + name.Length + 1;
        var (type, size) = Header(meta, pos, table.Offset);
        return type == PxarFormat.Hardlink ? (ReadHardlink(found.FileOffset, pos, size).TargetOffset, found.FileOffset) : null;
    }

    /// <summary>FILENAME, then ENTRY + attributes (or HARDLINK, resolved), all below <paramref name="limit"/>.</summary>
    private PxarEntry DecodeNamed(long fileOffset, long limit, bool allowHardlink)
    {
        var name = ReadFilename(fileOffset, limit);
        var pos = fileOffset + PxarFormat.HeaderSize + name.Length + 1;
        var (type, size) = Header(meta, pos, limit);
        if (type == PxarFormat.Hardlink)
        {
            if (!allowHardlink)
            {
                throw Error("hard link points to another hard link", pos);
            }

            var (targetOffset, bytes) = ReadHardlink(fileOffset, pos, size);
            PxarEntry target;
            try
            {
                target = DecodeNamed(targetOffset, fileOffset, allowHardlink: false);
            }
            catch (PxarException e)
            {
                throw new PxarException($"hard link target at {targetOffset} is not a valid entry: {e.Message}", Name, pos, e);
            }

            if (target.Kind != PxarEntryKind.File)
            {
                throw Error($"hard link target at {targetOffset} is a {target.Kind}, not a regular file", pos);
            }

            target.Name = name;
            target.FilenameOffset = fileOffset;
            target.IsHardlink = true;
            target.HardlinkTargetOffset = targetOffset;
            target.HardlinkPath = bytes.AsSpan(8, bytes.Length - 9).ToArray();
            return target;
        }

        var entry = new PxarEntry(name, fileOffset);
        DecodeBody(entry, pos, limit);
        return entry;
    }

    /// <summary>ENTRY (or ENTRY_V1) at <paramref name="pos"/> and the attributes and type-specific item that follow.</summary>
    private void DecodeBody(PxarEntry entry, long pos, long limit)
    {
        var (type, size) = Header(meta, pos, limit);
        if (type != PxarFormat.Entry && type != PxarFormat.EntryV1)
        {
            throw Error($"expected ENTRY, found {PxarFormat.ItemName(type)}", pos);
        }

        if (size != PxarFormat.HeaderSize + PxarFormat.StatSize)
        {
            throw Error($"ENTRY of {size} bytes (expected 56)", pos);
        }

        Span<byte> stat = stackalloc byte[PxarFormat.StatSize];
        ReadExact(meta, pos + PxarFormat.HeaderSize, stat);
        var mode = BinaryPrimitives.ReadUInt64LittleEndian(stat);
        var flags = BinaryPrimitives.ReadUInt64LittleEndian(stat[8..]);
        var uid = BinaryPrimitives.ReadUInt32LittleEndian(stat[16..]);
        var gid = BinaryPrimitives.ReadUInt32LittleEndian(stat[20..]);
        long seconds;
        uint nanos;
        if (type == PxarFormat.Entry)
        {
            seconds = BinaryPrimitives.ReadInt64LittleEndian(stat[24..]);
            nanos = BinaryPrimitives.ReadUInt32LittleEndian(stat[32..]);
            if (nanos >= 1_000_000_000)
            {
                throw Error($"mtime nanoseconds {nanos} out of range", pos);
            }
        }
        else
        {
            var total = BinaryPrimitives.ReadUInt64LittleEndian(stat[24..]);
            seconds = (long)(total / 1_000_000_000);
            nanos = (uint)(total % 1_000_000_000);
        }

        if (mode > 0xFFFF)
        {
            throw Error($"mode {Convert.ToString((long)mode, 8)} has bits beyond st_mode", pos);
        }

        entry.EntryOffset = pos;
        entry.Stat = new PxarStat(mode, flags, uid, gid, seconds, nanos);
        entry.Kind = (mode & PxarStat.TypeMask) switch
        {
            0x4000 => PxarEntryKind.Directory,
            0x8000 => PxarEntryKind.File,
            0xA000 => PxarEntryKind.Symlink,
            0x2000 => PxarEntryKind.CharDevice,
            0x6000 => PxarEntryKind.BlockDevice,
            0x1000 => PxarEntryKind.Fifo,
            0xC000 => PxarEntryKind.Socket,
            _ => throw Error($"mode {Convert.ToString((long)mode, 8)} has no known file type", pos),
        };
        pos += size;

        List<PxarXattr>? xattrs = null;
        var budget = MaxAttributeBytes;
        while (true)
        {
            if (pos >= limit)
            {
                if (entry.Kind is PxarEntryKind.Fifo or PxarEntryKind.Socket && pos == limit)
                {
                    break;
                }

                throw Error($"{entry.Kind} entry ends before its {(entry.Kind == PxarEntryKind.Directory ? "goodbye table" : "contents")}", pos);
            }

            (type, size) = Header(meta, pos, limit);
            var content = size - PxarFormat.HeaderSize;
            if (type is PxarFormat.Xattr or PxarFormat.Fcaps or PxarFormat.AclUser or PxarFormat.AclGroup or PxarFormat.AclGroupObj
                or PxarFormat.AclDefault or PxarFormat.AclDefaultUser or PxarFormat.AclDefaultGroup or PxarFormat.QuotaProjectId)
            {
                budget -= (int)Math.Min(content + PxarFormat.HeaderSize, int.MaxValue / 2);
                if (budget < 0)
                {
                    throw Error($"entry has more than {MaxAttributeBytes} bytes of attributes", pos);
                }
            }

            switch (type)
            {
                case PxarFormat.Xattr:
                {
                    var bytes = ReadContent(pos, content, 2, PxarFormat.MaxXattrContent, "XATTR");
                    var nul = Array.IndexOf(bytes, (byte)0);
                    if (nul <= 0)
                    {
                        throw Error("XATTR without a name", pos);
                    }

                    (xattrs ??= []).Add(new PxarXattr(bytes[..nul], bytes[(nul + 1)..]));
                    break;
                }

                case PxarFormat.Fcaps:
                    entry.Fcaps = ReadContent(pos, content, 0, PxarFormat.MaxXattrContent, "FCAPS");
                    break;
                case PxarFormat.AclUser:
                case PxarFormat.AclGroup:
                case PxarFormat.AclDefaultUser:
                case PxarFormat.AclDefaultGroup:
                {
                    var bytes = ReadContent(pos, content, 16, 16, PxarFormat.ItemName(type));
                    var id = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
                    if (id > uint.MaxValue)
                    {
                        throw Error($"ACL id {id} out of range", pos);
                    }

                    var e = new PxarAclEntry((uint)id, BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(8)));
                    (type switch
                    {
                        PxarFormat.AclUser => entry.MutableAcl.Users,
                        PxarFormat.AclGroup => entry.MutableAcl.Groups,
                        PxarFormat.AclDefaultUser => entry.MutableAcl.DefaultUsers,
                        _ => entry.MutableAcl.DefaultGroups,
                    }).Add(e);
                    break;
                }

                case PxarFormat.AclGroupObj:
                    entry.MutableAcl.GroupObj = BinaryPrimitives.ReadUInt64LittleEndian(ReadContent(pos, content, 8, 8, "ACL_GROUP_OBJ"));
                    break;
                case PxarFormat.AclDefault:
                {
                    var b = ReadContent(pos, content, 32, 32, "ACL_DEFAULT");
                    entry.MutableAcl.Default = new PxarDefaultAcl(BinaryPrimitives.ReadUInt64LittleEndian(b), BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(8)),
                        BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(16)), BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(24)));
                    break;
                }

                case PxarFormat.QuotaProjectId:
                    entry.QuotaProjectId = BinaryPrimitives.ReadUInt64LittleEndian(ReadContent(pos, content, 8, 8, "QUOTA_PROJID"));
                    break;
                case PxarFormat.Payload:
                    Expect(entry, PxarEntryKind.File, type, pos);
                    entry.Size = content;
                    entry.ContentOffset = pos + PxarFormat.HeaderSize;
                    goto done;
                case PxarFormat.PayloadRef:
                {
                    Expect(entry, PxarEntryKind.File, type, pos);
                    if (payload is null)
                    {
                        throw Error("PAYLOAD_REF in an archive without a payload stream", pos);
                    }

                    var b = ReadContent(pos, content, 16, 16, "PAYLOAD_REF");
                    var at = BinaryPrimitives.ReadUInt64LittleEndian(b);
                    var length = BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(8));
                    if (at > (ulong)payload.Length || length > (ulong)payload.Length - at || (ulong)payload.Length - at - length < PxarFormat.HeaderSize)
                    {
                        throw Error($"PAYLOAD_REF ({at}, {length}) points outside the payload stream of {payload.Length} bytes", pos);
                    }

                    // The PAYLOAD header this points at is checked on the first read of the contents (CheckPayloadHeader),
                    // not here: listing a directory must not decode the payload chunks of every file in it.
                    entry.PayloadRefOffset = pos;
                    entry.Size = (long)length;
                    entry.ContentOffset = (long)at + PxarFormat.HeaderSize;
                    entry.ContentInPayloadStream = true;
                    goto done;
                }

                case PxarFormat.Symlink:
                {
                    Expect(entry, PxarEntryKind.Symlink, type, pos);
                    var b = ReadContent(pos, content, 2, PxarFormat.MaxPathContent, "SYMLINK");
                    if (b[^1] != 0)
                    {
                        throw Error("symlink target is not NUL-terminated", pos);
                    }

                    entry.SymlinkTarget = b[..^1];
                    goto done;
                }

                case PxarFormat.Device:
                {
                    if (entry.Kind is not (PxarEntryKind.CharDevice or PxarEntryKind.BlockDevice))
                    {
                        throw Error($"DEVICE item in a {entry.Kind} entry", pos);
                    }

                    var b = ReadContent(pos, content, 16, 16, "DEVICE");
                    entry.DeviceMajor = BinaryPrimitives.ReadUInt64LittleEndian(b);
                    entry.DeviceMinor = BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(8));
                    goto done;
                }

                case PxarFormat.Filename:
                case PxarFormat.Goodbye:
                    if (entry.Kind == PxarEntryKind.Directory)
                    {
                        entry.ContentStart = pos;
                        goto done;
                    }

                    if (entry.Kind is PxarEntryKind.Fifo or PxarEntryKind.Socket)
                    {
                        goto done;
                    }

                    throw Error($"{entry.Kind} entry has no {(entry.Kind == PxarEntryKind.File ? "PAYLOAD" : entry.Kind == PxarEntryKind.Symlink ? "SYMLINK" : "DEVICE")} item", pos);
                default:
                    throw Error($"unexpected {PxarFormat.ItemName(type)} in an entry", pos);
            }

            pos += size;
        }

        done:
        entry.Xattrs = xattrs ?? (IReadOnlyList<PxarXattr>)[];
    }

    private void Expect(PxarEntry entry, PxarEntryKind kind, ulong type, long pos)
    {
        if (entry.Kind != kind)
        {
            throw Error($"{PxarFormat.ItemName(type)} item in a {entry.Kind} entry", pos);
        }
    }

    private byte[] ReadContent(long pos, long content, int min, int max, string what)
    {
        if (content < min || content > max)
        {
            throw Error($"{what} of {content} bytes (allowed {min}…{max})", pos);
        }

        var bytes = new byte[content];
        ReadExact(meta, pos + PxarFormat.HeaderSize, bytes);
        return bytes;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // raw reads

    /// <summary>An item header at <paramref name="pos"/> whose item must end at or before <paramref name="limit"/>.</summary>
    private (ulong Type, long Size) Header(IPxarSource source, long pos, long limit, string? what = null)
    {
        if (pos < 0 || pos > limit - PxarFormat.HeaderSize)
        {
            throw new PxarException($"item header at {pos} runs past the end ({limit}){(what is null ? "" : " of the " + what)}", source.Name, pos);
        }

        Span<byte> h = stackalloc byte[PxarFormat.HeaderSize];
        ReadExact(source, pos, h);
        var type = BinaryPrimitives.ReadUInt64LittleEndian(h);
        var size = BinaryPrimitives.ReadUInt64LittleEndian(h[8..]);
        if (size < PxarFormat.HeaderSize || size > (ulong)(limit - pos))
        {
            throw new PxarException($"{PxarFormat.ItemName(type)} item of {size} bytes does not fit (room {limit - pos})", source.Name, pos);
        }

        return (type, (long)size);
    }

    private ulong ReadU64(IPxarSource source, long pos)
    {
        Span<byte> b = stackalloc byte[8];
        ReadExact(source, pos, b);
        return BinaryPrimitives.ReadUInt64LittleEndian(b);
    }

    private static void ReadExact(IPxarSource source, long pos, Span<byte> dst)
    {
        if (ReadFully(source, pos, dst) != dst.Length)
        {
            throw new PxarException($"archive is truncated (wanted {dst.Length} bytes)", source.Name, pos);
        }
    }

    private static int ReadFully(IPxarSource source, long pos, Span<byte> dst)
    {
        var done = 0;
        while (done < dst.Length)
        {
            var n = source.Read(pos + done, dst[done..]);
            if (n <= 0)
            {
                break;
            }

            done += n;
        }

        return done;
    }

    private PxarException Error(string message, long offset) => new(message, meta.Name, offset);

    /// <summary>A read-only seekable view of one file's contents.</summary>
    private sealed class PxarFileStream(PxarArchive archive, PxarEntry file) : Stream
    {
        private long position;

        public override bool CanRead => true;

        public override bool CanSeek => true;

        public override bool CanWrite => false;

        public override long Length => file.Size;

        public override long Position
        {
            get => position;
            set => position = value >= 0 ? value : throw new ArgumentOutOfRangeException(nameof(value));
        }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            var n = archive.Read(file, position, buffer);
            position += n;
            return n;
        }

        public override long Seek(long offset, SeekOrigin origin) => Position = origin switch
        {
            SeekOrigin.Begin => offset,
            SeekOrigin.Current => position + offset,
            _ => file.Size + offset,
        };

        public override void Flush()
        {
        }

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
