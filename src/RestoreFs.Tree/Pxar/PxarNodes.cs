using RestoreFs.Fuse;
using RestoreFs.Pxar;

namespace RestoreFs.Tree.Pxar;

/// <summary>
/// <c>&lt;name&gt;.pxar/</c> of a snapshot: the archive's root directory, with the attributes of the archive's root
/// entry (the backed-up directory's mode, owner, times and xattrs: what `cp -a` and `rsync -a` of the directory copy).
/// A stat reads that entry only (the index and the first chunk); entering starts the rest
/// (<see cref="PxarArchiveState.Enter"/>). A listing of the snapshot gives name, type and inode number alone until
/// then, so a plain `ls` of it reads nothing. Where the archive cannot be opened (damaged, encrypted without its key), the
/// directory shows the snapshot's attributes and entering it answers the error.
/// </summary>
public sealed class PxarRootDirectory : FuseNode, IFuseDirectory, IFuseXattrs
{
    private readonly PxarArchiveState state;
    private readonly ulong placeholderIno;

    public PxarRootDirectory(PxarArchiveState state)
    {
        this.state = state;
        placeholderIno = state.Context.Inodes.Next();
    }

    public PxarArchiveState State => state;

    /// <summary>st_ino, the same before and after the archive is opened.</summary>
    public ulong Ino => placeholderIno;

    public override TimeSpan EntryTimeout => PxarNode.Forever;

    public override TimeSpan AttrTimeout => state.IsOpen ? PxarNode.Forever : TimeSpan.FromSeconds(1);

    public TimeSpan NegativeTimeout => PxarNode.Forever;

    public bool ListingIsImmutable => true;

    public override FuseAttributes GetAttributes()
    {
        try
        {
            return PxarNode.AttributesOf(state, state.Archive.Root) with { Ino = placeholderIno };
        }
        catch (FuseException)
        {
            // Logged by the state; entering the directory answers the error.
        }

        var ctx = state.Context;
        return new FuseAttributes(placeholderIno, 0, Modes.Directory, ctx.Options.Uid, ctx.Options.Gid, state.Snapshot.Time, NLink: 1);
    }

    public ValueTask<FuseNode?> LookupAsync(ReadOnlyMemory<byte> name, FuseRequestContext ctx, CancellationToken ct) =>
        PxarDirectory.Lookup(state, state.Enter().Root, name, state.RootCatalogBlock);

    public ValueTask<IReadOnlyList<FuseDirectoryEntry>> ListAsync(FuseRequestContext ctx, CancellationToken ct)
    {
        // The root's goodbye table (the archive's last chunk) first: the catalog opens in the background meanwhile.
        var root = state.Enter().Root;
        try
        {
            _ = state.Archive.GoodbyeOffset(root);
        }
        catch (Exception e) when (e is not FuseException)
        {
            throw state.Fail(e);
        }

        return PxarDirectory.List(state, root, state.RootCatalogBlock);
    }

    public ValueTask<IReadOnlyList<FuseXattr>> ListXattrsAsync(FuseRequestContext ctx, CancellationToken ct) =>
        PxarNode.Xattrs(state.Archive.Root);
}

/// <summary>Shared parts of the nodes inside an archive: attributes exactly as the archive has them.</summary>
public abstract class PxarNode(PxarArchiveState state, PxarEntry entry) : FuseNode, IFuseXattrs
{
    public static readonly TimeSpan Forever = TimeSpan.FromHours(24);

    protected PxarArchiveState State => state;

    public PxarEntry Entry => entry;

    public override TimeSpan EntryTimeout => Forever;

    public override TimeSpan AttrTimeout => Forever;

    public override FuseAttributes GetAttributes() => AttributesOf(state, entry);

    public ValueTask<IReadOnlyList<FuseXattr>> ListXattrsAsync(FuseRequestContext ctx, CancellationToken ct) => Xattrs(entry);

    internal static ValueTask<IReadOnlyList<FuseXattr>> Xattrs(PxarEntry entry) =>
        ValueTask.FromResult<IReadOnlyList<FuseXattr>>(entry.AllXattrs().Select(x => new FuseXattr(x.Name, x.Value)).ToList());

    /// <summary>The file type bits of st_mode (<c>mode &gt;&gt; 12</c>, as d_type) of a kind.</summary>
    public static uint TypeBits(PxarEntryKind kind) => kind switch
    {
        PxarEntryKind.Fifo => 1,
        PxarEntryKind.CharDevice => 2,
        PxarEntryKind.Directory => 4,
        PxarEntryKind.BlockDevice => 6,
        PxarEntryKind.File => 8,
        PxarEntryKind.Symlink => 10,
        _ => 12,
    };

    /// <summary>The kernel's 32-bit device number (new_encode_dev) of a major/minor pair.</summary>
    public static uint EncodeDevice(ulong major, ulong minor) =>
        (uint)((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xffUL) << 12));

    public static FuseAttributes AttributesOf(PxarArchiveState state, PxarEntry e)
    {
        ulong size = e.Kind switch
        {
            PxarEntryKind.File => (ulong)e.Size,
            PxarEntryKind.Symlink => (ulong)(e.SymlinkTarget?.Length ?? 0),
            _ => 0,
        };
        var nlink = e.Kind == PxarEntryKind.File ? state.LinkCount(e.Inode) : 1u;
        var rdev = e.Kind is PxarEntryKind.BlockDevice or PxarEntryKind.CharDevice ? EncodeDevice(e.DeviceMajor, e.DeviceMinor) : 0u;
        return Attributes(state, e.Inode, size, e.Mode, e.Stat.Uid, e.Stat.Gid, e.Stat.MtimeSeconds, e.Stat.MtimeNanos, nlink, rdev);
    }

    /// <summary>The attributes of an entry from its fields (<see cref="PxarFile"/> keeps those, not the entry).</summary>
    internal static FuseAttributes Attributes(PxarArchiveState state, ulong inode, ulong size, uint mode, uint uid, uint gid,
        long mtimeSeconds, uint mtimeNanos, uint nlink, uint rdev = 0) =>
        new(state.InodeOf(inode), size, mode, uid, gid, FuseTime.From(mtimeSeconds, mtimeNanos), NLink: nlink,
            Blocks: (size + 511) / 512, BlockSize: 4096, RDev: rdev);

    /// <summary>The node of an entry by its kind (<paramref name="catalogBlock"/>: a directory's catalog block, −1 for none).</summary>
    public static FuseNode Of(PxarArchiveState state, PxarEntry e, long catalogBlock = -1) => e.Kind switch
    {
        PxarEntryKind.Directory => new PxarDirectory(state, e, catalogBlock),
        PxarEntryKind.File => new PxarFile(state, e),
        PxarEntryKind.Symlink => new PxarSymlink(state, e),
        _ => new PxarSpecial(state, e),
    };
}

/// <summary>
/// A directory inside an archive: lookups through its goodbye table, listings in stream order. In a unified (v1)
/// archive with a catalog, <paramref name="catalogBlock"/> is the directory's catalog block and a listing is names,
/// types and inode numbers from it, checked against the goodbye table, with no child decoded (the children's entries
/// lie spread over the directory's extent, between their file contents); a lookup decodes the one child asked for.
/// </summary>
public sealed class PxarDirectory(PxarArchiveState state, PxarEntry entry, long catalogBlock = -1) : PxarNode(state, entry), IFuseDirectory
{
    public TimeSpan NegativeTimeout => Forever;

    public bool ListingIsImmutable => true;

    public ValueTask<FuseNode?> LookupAsync(ReadOnlyMemory<byte> name, FuseRequestContext ctx, CancellationToken ct) =>
        Lookup(State, Entry, name, catalogBlock);

    public ValueTask<IReadOnlyList<FuseDirectoryEntry>> ListAsync(FuseRequestContext ctx, CancellationToken ct) =>
        List(State, Entry, catalogBlock);

    internal static ValueTask<FuseNode?> Lookup(PxarArchiveState state, PxarEntry directory, ReadOnlyMemory<byte> name, long catalogBlock)
    {
        try
        {
            // The catalog says whether the name is a directory before the archive is read: then its goodbye table,
            // which the next lookup or listing in it needs, is fetched while its entry is decoded.
            var childBlock = catalogBlock >= 0 ? state.ChildCatalogBlock(catalogBlock, name.Span) : -1;
            var child = state.Archive.Lookup(directory, name.Span, directoryExpected: childBlock >= 0);
            if (child is null)
            {
                return ValueTask.FromResult<FuseNode?>(null);
            }

            if (!child.IsDirectory)
            {
                childBlock = -1;
            }
            return ValueTask.FromResult<FuseNode?>(Of(state, child, childBlock));
        }
        catch (Exception e) when (e is not FuseException)
        {
            throw state.Fail(e);
        }
    }

    internal static ValueTask<IReadOnlyList<FuseDirectoryEntry>> List(PxarArchiveState state, PxarEntry directory, long catalogBlock)
    {
        try
        {
            if (catalogBlock >= 0 && state.CatalogBlock(catalogBlock) is { } block)
            {
                if (state.Archive.ListFromCatalog(directory, block) is { } names)
                {
                    var named = new List<FuseDirectoryEntry>(names.Count);
                    foreach (var n in names)
                    {
                        named.Add(FuseDirectoryEntry.NameOnly(n.Name, TypeBits(n.Kind), state.InodeOf(n.Inode)));
                    }

                    return ValueTask.FromResult<IReadOnlyList<FuseDirectoryEntry>>(named);
                }

                state.CatalogUnusable($"its block at {catalogBlock} does not match the directory at offset {directory.EntryOffset}");
            }

            var children = state.Archive.List(directory);
            var list = new List<FuseDirectoryEntry>(children.Count);
            foreach (var child in children)
            {
                list.Add(new FuseDirectoryEntry(child.Name, Of(state, child)));
            }

            return ValueTask.FromResult<IReadOnlyList<FuseDirectoryEntry>>(list);
        }
        catch (Exception e) when (e is not FuseException)
        {
            throw state.Fail(e);
        }
    }
}

/// <summary>
/// A regular file: reads are range reads of the archive (payload stream for split archives). Most nodes of a walk are
/// files and the mount keeps a node for every name the kernel knows, so a file keeps only what its attributes and reads
/// need (about 120 bytes) instead of its decoded entry and name (about 260); the entry is kept whole only when it has
/// extended attributes, ACLs or capabilities to list.
/// </summary>
public sealed class PxarFile : FuseNode, IFuseFile, IFuseXattrs
{
    private readonly PxarArchiveState state;
    private readonly PxarEntry? withXattrs;
    private readonly PxarContent content;
    private readonly ulong inode;
    private readonly long mtimeSeconds;
    private readonly uint mtimeNanos;
    private readonly uint mode;
    private readonly uint uid;
    private readonly uint gid;
    private volatile bool contentChecked;

    public PxarFile(PxarArchiveState state, PxarEntry entry)
    {
        if (entry.Kind != PxarEntryKind.File)
        {
            throw new ArgumentException($"{entry} is not a regular file", nameof(entry));
        }

        this.state = state;
        withXattrs = entry.HasXattrs ? entry : null;
        content = entry.Content;
        inode = entry.Inode;
        mtimeSeconds = entry.Stat.MtimeSeconds;
        mtimeNanos = entry.Stat.MtimeNanos;
        mode = entry.Mode;
        uid = entry.Stat.Uid;
        gid = entry.Stat.Gid;
        contentChecked = !content.InPayloadStream;
    }

    public override TimeSpan EntryTimeout => PxarNode.Forever;

    /// <summary>Forever once the archive's hard links are counted in full; a second while the count is short (the kernel
    /// then asks again, and sees nlink grow when a count made after an outage finds the missing names).</summary>
    public override TimeSpan AttrTimeout => state.LinkCountsSettled ? PxarNode.Forever : TimeSpan.FromSeconds(1);

    public override FuseAttributes GetAttributes() =>
        PxarNode.Attributes(state, inode, (ulong)content.Size, mode, uid, gid, mtimeSeconds, mtimeNanos, state.LinkCount(inode));

    public ValueTask<IReadOnlyList<FuseXattr>> ListXattrsAsync(FuseRequestContext ctx, CancellationToken ct) =>
        withXattrs is null ? ValueTask.FromResult<IReadOnlyList<FuseXattr>>([]) : PxarNode.Xattrs(withXattrs);

    public ValueTask<IFuseFileHandle> OpenAsync(FuseOpenFlags flags, FuseRequestContext ctx, CancellationToken ct) =>
        ValueTask.FromResult<IFuseFileHandle>(new Handle(this));

    private sealed class Handle(PxarFile file) : IFuseFileHandle
    {
        public bool KeepCache => true;

        public bool DirectIo => false;

        public ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct)
        {
            var state = file.state;
            try
            {
                var archive = state.Archive;
                if (!file.contentChecked)
                {
                    archive.CheckContent(file.content);
                    file.contentChecked = true;
                }

                var done = 0;
                while (done < buffer.Length)
                {
                    var n = archive.Read(file.content, offset + done, buffer.Span[done..]);
                    if (n <= 0)
                    {
                        break;
                    }

                    done += n;
                }

                return ValueTask.FromResult(done);
            }
            catch (Exception e) when (e is not FuseException)
            {
                throw state.Fail(e);
            }
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}

/// <summary>A symlink: its target as stored, never followed.</summary>
public sealed class PxarSymlink(PxarArchiveState state, PxarEntry entry) : PxarNode(state, entry), IFuseSymlink
{
    public ValueTask<byte[]> ReadLinkAsync(FuseRequestContext ctx, CancellationToken ct) => ValueTask.FromResult(Entry.SymlinkTarget ?? []);
}

/// <summary>A device node, fifo or socket: shown with its type and device number, never opened.</summary>
public sealed class PxarSpecial(PxarArchiveState state, PxarEntry entry) : PxarNode(state, entry);
