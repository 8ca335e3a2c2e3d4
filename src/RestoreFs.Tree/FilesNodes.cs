using System.Text;
using Microsoft.Extensions.Logging;
using RestoreFs.Fuse;
using RestoreFs.Tree.Files;

namespace RestoreFs.Tree;

/// <summary>
/// <c>files/</c> of a snapshot: one directory per disk image. Listing it costs nothing; entering a disk starts (or
/// reuses) the snapshot's restore VM.
/// </summary>
public sealed class FilesRootDirectory : TreeDirectory
{
    private readonly SnapshotState state;

    public FilesRootDirectory(TreeContext context, SnapshotState state)
        : base(context, immutable: true)
    {
        this.state = state;
    }

    protected override DateTimeOffset MTime => state.Time;

    protected override IReadOnlyList<string> ListNames() => state.ImageArchives.Select(SnapshotDirectory.ImageName).ToList();

    protected override FuseNode? CreateChild(string name)
    {
        var archive = state.ImageArchives.FirstOrDefault(a => SnapshotDirectory.ImageName(a) == name);
        if (archive is null)
        {
            return null;
        }

        var entry = new RemoteEntry(Encoding.UTF8.GetBytes(name), 'v', 0, state.Time.ToUnixTimeSeconds(), 0, 0, 0, null, null);
        return new RemoteDirectory(Context, state, Encoding.UTF8.GetBytes(archive), entry);
    }
}

/// <summary>Shared helpers of the nodes forwarded to the restore VM.</summary>
internal static class Remote
{
    public static readonly TimeSpan Forever = TimeSpan.FromHours(24);

    public static IFilesBackend Backend(TreeContext context) =>
        context.Files ?? throw new FuseException(Errors.EIO, "the restore VM is not available on this mount");

    public static byte[] Child(byte[] parent, byte[] name)
    {
        var path = new byte[parent.Length + 1 + name.Length];
        parent.CopyTo(path, 0);
        path[parent.Length] = (byte)'/';
        name.CopyTo(path, parent.Length + 1);
        return path;
    }

    /// <summary>
    /// Throws EACCES when serving the caller would start the snapshot's restore VM and the caller is not the mount
    /// owner or root (others, on an --allow-other mount, use a VM the owner started).
    /// </summary>
    public static void RequireVmAccess(TreeContext context, SnapshotState state, FuseRequestContext ctx)
    {
        if (!context.IsPrivileged(ctx) && !Backend(context).IsVmRunning(state))
        {
            context.RequirePrivileged(ctx, $"starting the restore VM of {state.Snapshot.Name}");
        }
    }

    /// <summary>The entry's type and its permission bits exactly as the backup has them (0000 stays 0000, setuid,
    /// setgid and sticky kept); a level the restore API adds (disk, <c>part</c>, <c>lvm</c>) is dr-xr-xr-x.</summary>
    public static uint ModeOf(RemoteEntry e)
    {
        var perm = e.Mode & 0xFFF;
        if (e.Type == 'v' && !e.HasStat)
        {
            perm = 0x16D; // a level the restore API adds (disk, part, lvm): dr-xr-xr-x
        }

        return GuestAnswers.TypeBits(e.Type) | perm;
    }

    /// <summary>The kernel's device number encoding (new_encode_dev) of a major:minor pair.</summary>
    public static uint EncodeDev((uint Major, uint Minor) d) => (d.Minor & 0xFF) | ((d.Major & 0xFFF) << 8) | ((d.Minor & ~0xFFu) << 12);

    /// <summary>What stat shows: the guest's mode, owner, ns times, nlink, blocks and rdev where it reported them.</summary>
    public static FuseAttributes Attributes(TreeContext context, ulong ino, RemoteEntry e, ulong size)
    {
        var mode = ModeOf(e);
        var synthetic = e.Type == 'v' && !e.HasStat;
        var isDir = (mode & 0xF000) == 0x4000;
        var mtime = FuseTime.From(e.MTime, e.MTimeNs);
        return new FuseAttributes(ino, size, mode,
            synthetic ? context.Options.Uid : e.Uid, synthetic ? context.Options.Gid : e.Gid,
            mtime, NLink: e.NLink is { } n and > 0 ? n : isDir ? 2u : 1u,
            Blocks: e.Blocks ?? (size + 511) / 512, BlockSize: 128 * 1024,
            RDev: e.Type is 'b' or 'c' && e.RDev is { } rdev ? EncodeDev(rdev) : 0,
            ATime: e.ATime ?? mtime, CTime: e.CTime ?? mtime);
    }

    /// <summary>A directory's size as stat shows it (the guest's for a directory of a file system).</summary>
    public static ulong DirectorySize(RemoteEntry e) => e.Type == 'd' ? e.Size : 0;

    public static FuseException Fail(TreeContext context, SnapshotState state, byte[] path, Exception e)
    {
        if (e is FuseException fuse)
        {
            return fuse;
        }

        if (e is MalformedAnswerException)
        {
            context.WarnOnce($"malformed:{state.Snapshot.DirectoryPath}:{e.Message}", null,
                "Refusing an answer of the restore VM of {Snapshot}: {Reason}", state.Snapshot.Name, e.Message);
            return new FuseException(Errors.EIO, e.Message);
        }

        context.Log.LogWarning("Restore VM request for {Path} in {Snapshot} failed: {Reason}",
            Encoding.UTF8.GetString(path), state.Snapshot.Name, e.Message);
        return new FuseException(Errors.EIO, e.Message);
    }
}

/// <summary>A directory inside a disk (or a bucket level: <c>part</c>, <c>lvm/&lt;vg&gt;</c>, …), listed once by the VM.</summary>
public sealed class RemoteDirectory : FuseNode, IFuseDirectory, IFuseXattrs
{
    private readonly TreeContext context;
    private readonly SnapshotState state;
    private readonly byte[] path;
    private readonly RemoteEntry entry;
    private readonly ulong ino;
    private readonly SemaphoreSlim loading = new(1, 1);
    private volatile IReadOnlyList<(byte[] Name, FuseNode Node)>? children;

    /// <summary>When the listing is asked for again (a <see cref="Environment.TickCount64"/> time): set while it holds a
    /// volume that could not be mounted; 0 once it holds none (kept, by us and by the kernel).</summary>
    private long relistAt;

    public RemoteDirectory(TreeContext context, SnapshotState state, byte[] path, RemoteEntry entry)
    {
        this.context = context;
        this.state = state;
        this.path = path;
        this.entry = entry;
        ino = context.Inodes.Next();
        xattrs = new XattrSource(context, state, path, entry);
    }

    private readonly XattrSource xattrs;

    public ValueTask<IReadOnlyList<FuseXattr>> ListXattrsAsync(FuseRequestContext ctx, CancellationToken ct) => xattrs.ListAsync(ctx, ct);

    public override TimeSpan EntryTimeout => Remote.Forever;

    public override TimeSpan AttrTimeout => Remote.Forever;

    /// <summary>Forever, but a second while the listing holds a volume that could not be mounted (it may mount later).</summary>
    public TimeSpan NegativeTimeout => Settled ? Remote.Forever : TimeSpan.FromSeconds(1);

    /// <summary>The kernel keeps the listing, unless it holds a volume that could not be mounted.</summary>
    public bool ListingIsImmutable => Settled;

    private bool Settled => Interlocked.Read(ref relistAt) == 0;

    public override FuseAttributes GetAttributes() => Remote.Attributes(context, ino, entry, Remote.DirectorySize(entry));

    private bool Current(IReadOnlyList<(byte[] Name, FuseNode Node)>? list) =>
        list is not null && (Settled || Environment.TickCount64 < Interlocked.Read(ref relistAt));

    private async ValueTask<IReadOnlyList<(byte[] Name, FuseNode Node)>> LoadAsync(FuseRequestContext ctx, CancellationToken ct)
    {
        if (children is { } ready && Current(ready))
        {
            return ready;
        }

        Remote.RequireVmAccess(context, state, ctx);

        await loading.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            var previous = children;
            if (previous is not null && Current(previous))
            {
                return previous;
            }

            IReadOnlyList<RemoteEntry> entries;
            try
            {
                entries = await Remote.Backend(context).ListAsync(state, path, ct).ConfigureAwait(false);
                GuestAnswers.CheckListing(path, entries);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                throw Remote.Fail(context, state, path, e);
            }

            var vm = RestoreVms.VmName(state);
            var links = context.FilesNodes.Links(vm);
            var list = new List<(byte[], FuseNode)>(entries.Count);
            var failedMounts = false;
            // Listed again after a mount failed: names that are as they were keep their nodes (and inode numbers).
            var kept = previous?.ToDictionary(c => Convert.ToHexString(c.Name), c => c.Node, StringComparer.Ordinal);
            FuseNode? Kept(byte[] name) => kept is not null && kept.TryGetValue(Convert.ToHexString(name), out var node) ? node : null;
            foreach (var child in entries)
            {
                var childPath = Remote.Child(path, child.Name);
                var before = Kept(child.Name);
                if (child.Error is null && before is not (null or EmptyDirectory or UnreadableEntry or ErrorFile))
                {
                    list.Add((child.Name, before));
                    continue;
                }

                if (child.Error is { } same && before is EmptyDirectory && Kept([.. child.Name, .. ".error"u8]) is ErrorFile { Error: var was } errorFile
                    && was == same && child.Type != '?')
                {
                    list.Add((child.Name, before));
                    list.Add(([.. child.Name, .. ".error"u8], errorFile));
                    failedMounts = true;
                    continue;
                }

                if (child.Error is { } unreadable && child.Type == '?')
                {
                    if (before is UnreadableEntry { Error: var known } && known == unreadable)
                    {
                        list.Add((child.Name, before));
                        continue;
                    }

                    context.WarnOnce($"entry:{state.Snapshot.DirectoryPath}:{Encoding.UTF8.GetString(childPath)}", null,
                        "{Path} in {Snapshot} cannot be read: {Error}", Encoding.UTF8.GetString(childPath), state.Snapshot.Name, unreadable);
                    list.Add((child.Name, new UnreadableEntry(context, child, unreadable)));
                    continue;
                }

                if (child.Error is { } error)
                {
                    context.WarnOnce($"bucket:{state.Snapshot.DirectoryPath}:{Encoding.UTF8.GetString(childPath)}", null,
                        "{Path} in {Snapshot} cannot be mounted: {Error}", Encoding.UTF8.GetString(childPath), state.Snapshot.Name, error);
                    list.Add((child.Name, new EmptyDirectory(context, ino: context.Inodes.Next(), child)));
                    list.Add(([.. child.Name, .. ".error"u8], new ErrorFile(context, state.Time, error)));
                    failedMounts = true;
                    continue;
                }

                var node = links.NodeFor(childPath, child, () => child.Type switch
                {
                    'd' or 'v' => new RemoteDirectory(context, state, childPath, child),
                    'l' => new RemoteSymlink(context, state, childPath, child),
                    'f' or 'h' => new RemoteFile(context, state, childPath, child),
                    _ => (FuseNode)new RemoteSpecial(context, state, childPath, child),
                });
                list.Add((child.Name, node));
            }

            Interlocked.Exchange(ref relistAt, failedMounts ? Environment.TickCount64 + (long)context.Options.FailedMountRelist.TotalMilliseconds : 0);
            children = list;
            context.FilesNodes.Loaded(vm, this);
            return list;
        }
        finally
        {
            loading.Release();
        }
    }

    /// <summary>Drops the loaded listing (the snapshot's VM stopped); the next lookup or readdir lists again.</summary>
    public void Unload() => children = null;

    public async ValueTask<FuseNode?> LookupAsync(ReadOnlyMemory<byte> name, FuseRequestContext ctx, CancellationToken ct)
    {
        var list = await LoadAsync(ctx, ct).ConfigureAwait(false);
        foreach (var (childName, node) in list)
        {
            if (name.Span.SequenceEqual(childName))
            {
                // As on a disk with a damaged inode: the name is listed, looking it up fails with EIO.
                return node is UnreadableEntry broken ? throw new FuseException(Errors.EIO, broken.Error) : node;
            }
        }

        return null;
    }

    public async ValueTask<IReadOnlyList<FuseDirectoryEntry>> ListAsync(FuseRequestContext ctx, CancellationToken ct)
    {
        var list = await LoadAsync(ctx, ct).ConfigureAwait(false);
        return list.Select(c => new FuseDirectoryEntry(c.Name, c.Node)).ToList();
    }
}

/// <summary>The directory of a filesystem that could not be mounted: empty; the reason is in the sibling <c>.error</c> file.</summary>
public sealed class EmptyDirectory(TreeContext context, ulong ino, RemoteEntry entry) : FuseNode, IFuseDirectory
{
    public TimeSpan NegativeTimeout => Remote.Forever;

    public bool ListingIsImmutable => true;

    public override FuseAttributes GetAttributes() => Remote.Attributes(context, ino, entry with { Type = 'd', Dev = null }, 0);

    public ValueTask<FuseNode?> LookupAsync(ReadOnlyMemory<byte> name, FuseRequestContext ctx, CancellationToken ct) =>
        ValueTask.FromResult<FuseNode?>(null);

    public ValueTask<IReadOnlyList<FuseDirectoryEntry>> ListAsync(FuseRequestContext ctx, CancellationToken ct) =>
        ValueTask.FromResult<IReadOnlyList<FuseDirectoryEntry>>([]);
}

/// <summary>An entry the VM could not read (a damaged inode): shown by readdir, EIO on lookup.</summary>
public sealed class UnreadableEntry(TreeContext context, RemoteEntry entry, string error) : FuseNode
{
    private readonly ulong ino = context.Inodes.Next();

    public string Error => error;

    public override FuseAttributes GetAttributes() => Remote.Attributes(context, ino, entry with { Type = 'f' }, 0);
}

/// <summary><c>&lt;name&gt;.error</c>: why a filesystem could not be mounted.</summary>
public sealed class ErrorFile(TreeContext context, DateTimeOffset mtime, string error) : BytesFile(context, mtime)
{
    public string Error => error;

    /// <summary>A second: the volume it names may mount when its directory is listed again.</summary>
    public override TimeSpan EntryTimeout => TimeSpan.FromSeconds(1);

    public override TimeSpan AttrTimeout => TimeSpan.FromSeconds(1);

    protected override byte[] Load() => Encoding.UTF8.GetBytes(error.TrimEnd() + "\n");
}

/// <summary>A regular file inside a disk; reads are range reads to the VM.</summary>
public sealed class RemoteFile(TreeContext context, SnapshotState state, byte[] path, RemoteEntry entry) : FuseNode, IFuseFile, IFuseXattrs
{
    private readonly ulong ino = context.Inodes.Next();
    private readonly XattrSource xattrs = new(context, state, path, entry);

    public ValueTask<IReadOnlyList<FuseXattr>> ListXattrsAsync(FuseRequestContext ctx, CancellationToken ct) => xattrs.ListAsync(ctx, ct);

    public override TimeSpan EntryTimeout => Remote.Forever;

    public override TimeSpan AttrTimeout => Remote.Forever;

    public override FuseAttributes GetAttributes() => Remote.Attributes(context, ino, entry, entry.Size);

    public ValueTask<IFuseFileHandle> OpenAsync(FuseOpenFlags flags, FuseRequestContext ctx, CancellationToken ct)
    {
        // A handle remembers who opened it: its reads may start the VM only for the owner or root.
        var privileged = context.IsPrivileged(ctx);
        return ValueTask.FromResult<IFuseFileHandle>(new Handle(context, state, path, (long)entry.Size, privileged ? null : ctx));
    }

    private sealed class Handle(TreeContext context, SnapshotState state, byte[] path, long size, FuseRequestContext? unprivileged) : IFuseFileHandle
    {
        public bool KeepCache => true;

        public bool DirectIo => false;

        public async ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct)
        {
            if (offset >= size)
            {
                return 0;
            }

            var want = (int)Math.Min(buffer.Length, size - offset);
            var done = 0;
            if (unprivileged is not null && !Remote.Backend(context).IsMapped(state, path))
            {
                Remote.RequireVmAccess(context, state, unprivileged);
            }

            try
            {
                while (done < want)
                {
                    var n = await Remote.Backend(context).ReadAsync(state, path, offset + done, buffer[done..want], ct).ConfigureAwait(false);
                    if (n <= 0)
                    {
                        break;
                    }

                    done += n;
                }
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                throw Remote.Fail(context, state, path, e);
            }

            if (done < want)
            {
                throw Remote.Fail(context, state, path, new IOException($"short read at offset {offset + done} of {size} bytes"));
            }

            return done;
        }

        /// <summary>Holes as the guest's file has them: from the file map for a mapped file, else the guest's lseek.</summary>
        public async ValueTask<long> SeekDataOrHoleAsync(long offset, bool data, CancellationToken ct)
        {
            if (offset >= size)
            {
                throw new FuseException(Errors.ENXIO, "offset at or past the end");
            }

            var backend = Remote.Backend(context);
            if (unprivileged is not null && !backend.IsMapped(state, path))
            {
                Remote.RequireVmAccess(context, state, unprivileged);
            }

            long answer;
            try
            {
                answer = await backend.SeekAsync(state, path, offset, data, ct).ConfigureAwait(false);
                GuestAnswers.CheckSeek(path, offset, size, data, answer);
            }
            catch (NotSupportedException)
            {
                throw;
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                throw Remote.Fail(context, state, path, e);
            }

            return answer < 0 ? throw new FuseException(Errors.ENXIO, "no data after the offset") : answer;
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}

/// <summary>A symlink inside a disk: its target as stored, never followed on the host side.</summary>
public sealed class RemoteSymlink(TreeContext context, SnapshotState state, byte[] path, RemoteEntry entry) : FuseNode, IFuseSymlink, IFuseXattrs
{
    private readonly ulong ino = context.Inodes.Next();
    private readonly XattrSource xattrs = new(context, state, path, entry);

    public ValueTask<IReadOnlyList<FuseXattr>> ListXattrsAsync(FuseRequestContext ctx, CancellationToken ct) => xattrs.ListAsync(ctx, ct);

    public override TimeSpan EntryTimeout => Remote.Forever;

    public override TimeSpan AttrTimeout => Remote.Forever;

    public override FuseAttributes GetAttributes() =>
        Remote.Attributes(context, ino, entry, (ulong)(entry.Target?.Length ?? 0));

    public ValueTask<byte[]> ReadLinkAsync(FuseRequestContext ctx, CancellationToken ct) =>
        ValueTask.FromResult(entry.Target ?? []);
}

/// <summary>A device node, fifo or socket inside a disk: shown with its type, never opened.</summary>
public sealed class RemoteSpecial(TreeContext context, SnapshotState state, byte[] path, RemoteEntry entry) : FuseNode, IFuseXattrs
{
    private readonly ulong ino = context.Inodes.Next();
    private readonly XattrSource xattrs = new(context, state, path, entry);

    public ValueTask<IReadOnlyList<FuseXattr>> ListXattrsAsync(FuseRequestContext ctx, CancellationToken ct) => xattrs.ListAsync(ctx, ct);

    public override TimeSpan EntryTimeout => Remote.Forever;

    public override TimeSpan AttrTimeout => Remote.Forever;

    public override FuseAttributes GetAttributes() => Remote.Attributes(context, ino, entry, 0);
}

/// <summary>
/// The extended attributes of a guest entry: those the listing carried, else asked from the VM once (a symlink's own,
/// never followed). An attribute the guest could not read fails the whole request with EIO: a copy would otherwise
/// silently lack it.
/// </summary>
internal sealed class XattrSource(TreeContext context, SnapshotState state, byte[] path, RemoteEntry entry)
{
    private IReadOnlyList<FuseXattr>? cached;

    public async ValueTask<IReadOnlyList<FuseXattr>> ListAsync(FuseRequestContext ctx, CancellationToken ct)
    {
        if (cached is { } ready)
        {
            return ready;
        }

        if (entry.Type == 'v' && !entry.HasStat)
        {
            return []; // a level the restore API adds: nothing of the guest's
        }

        IReadOnlyList<RemoteXattr> raw;
        if (entry.Xattrs is { } inline)
        {
            raw = inline;
        }
        else
        {
            Remote.RequireVmAccess(context, state, ctx);
            try
            {
                raw = await Remote.Backend(context).XattrsAsync(state, path, ct).ConfigureAwait(false);
                GuestAnswers.CheckXattrs(path, raw);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                throw Remote.Fail(context, state, path, e);
            }
        }

        if (raw.FirstOrDefault(x => x.Value is null) is { } failed)
        {
            context.WarnOnce($"xattr:{state.Snapshot.DirectoryPath}:{Convert.ToBase64String(path)}", null,
                "Extended attribute {Name} of {Path} in {Snapshot} cannot be read: {Error}",
                Encoding.UTF8.GetString(failed.Name), Encoding.UTF8.GetString(path), state.Snapshot.Name, failed.Error);
            throw new FuseException(Errors.EIO, $"extended attribute {Encoding.UTF8.GetString(failed.Name)}: {failed.Error}");
        }

        var list = raw.Select(x => new FuseXattr(x.Name, x.Value!)).ToList();
        cached = list;
        return list;
    }
}
