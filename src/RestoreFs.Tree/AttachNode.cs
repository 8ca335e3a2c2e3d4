using System.Text;
using RestoreFs.Fuse;

namespace RestoreFs.Tree;

/// <summary>
/// <c>&lt;disk&gt;.img.dev</c>: a symlink into the mount's hidden <c>.dev/</c> tree (<c>../../../../.dev/vm/100/T/disk.img</c>).
/// Reading it (<c>ls -l</c>, <c>stat</c>, <c>find</c>, <c>rsync -a</c>) has no side effect; following it (open, <c>mount</c>,
/// <c>readlink -f</c>) reaches <see cref="AttachTarget"/>, whose resolution attaches the image.
/// </summary>
public sealed class AttachNode : FuseNode, IFuseSymlink
{
    private readonly TreeContext context;
    private readonly SnapshotState state;
    private readonly byte[] target;
    private readonly ulong ino;

    public AttachNode(TreeContext context, SnapshotState state, string archive, string imageName)
    {
        this.context = context;
        this.state = state;
        Archive = archive;
        ImageName = imageName;
        ino = context.Inodes.Next();
        var s = state.Snapshot;
        var levels = new List<string>();
        if (s.Group.Namespace.Path.Length > 0)
        {
            foreach (var ns in s.Group.Namespace.Path.Split('/'))
            {
                levels.Add(NamespaceDirectory.ChildNamespacesName);
                levels.Add(ns);
            }
        }

        levels.AddRange([s.Group.Type, s.Group.Id, s.TimeName, imageName]);
        var up = string.Concat(Enumerable.Repeat("../", levels.Count)); // snapshots/ + every level but the image
        target = Encoding.UTF8.GetBytes(up + RootDirectory.DevName + "/" + string.Join('/', levels));
    }

    public string Archive { get; }

    public string ImageName { get; }

    public SnapshotState State => state;

    public override TimeSpan EntryTimeout => TimeSpan.FromHours(1);

    public override TimeSpan AttrTimeout => TimeSpan.FromHours(1);

    public override FuseAttributes GetAttributes() =>
        new(ino, (ulong)target.Length, Modes.Symlink, context.Options.Uid, context.Options.Gid, state.Time);

    public ValueTask<byte[]> ReadLinkAsync(FuseRequestContext ctx, CancellationToken ct) => ValueTask.FromResult(target);
}

/// <summary>
/// <c>.dev/…/&lt;disk&gt;.img</c>: where a <c>.img.dev</c> link leads. Its resolution attaches the image as a block device
/// (NBD where the kernel has it, else a read-only loop device over the image file in this mount) and answers the
/// device path; later resolutions answer the same device. Only the mount owner and root may attach.
/// </summary>
public sealed class AttachTarget : FuseNode, IFuseSymlink
{
    private readonly TreeContext context;
    private readonly AttachNode link;
    private readonly SnapshotDirectory parent;
    private readonly ulong ino;

    public AttachTarget(TreeContext context, AttachNode link, SnapshotDirectory parent)
    {
        this.context = context;
        this.link = link;
        this.parent = parent;
        ino = context.Inodes.Next();
    }

    public override TimeSpan EntryTimeout => TimeSpan.Zero;

    public override TimeSpan AttrTimeout => TimeSpan.Zero;

    public override FuseAttributes GetAttributes()
    {
        var length = (ulong)(context.Exports.AttachedPath(link.State, link.Archive)?.Length ?? 0);
        return new FuseAttributes(ino, length, Modes.Symlink, context.Options.Uid, context.Options.Gid, link.State.Time);
    }

    public async ValueTask<byte[]> ReadLinkAsync(FuseRequestContext ctx, CancellationToken ct)
    {
        if (context.Exports.AttachedPath(link.State, link.Archive) is { } attached)
        {
            return Encoding.UTF8.GetBytes(attached);
        }

        context.RequirePrivileged(ctx, $"attaching {link.ImageName} of {link.State.Snapshot.Name}");
        try
        {
            var device = await context.Exports.AttachAsync(link.State, link.Archive, parent.ImagePathInMount(link.ImageName)).ConfigureAwait(false);
            return Encoding.UTF8.GetBytes(device.DevicePath);
        }
        catch (Exception e)
        {
            context.WarnOnce($"attach:{link.State.Snapshot.DirectoryPath}:{link.Archive}", e,
                "Could not attach {Archive} of {Snapshot} as a block device: {Reason}", link.Archive, link.State.Snapshot.Name, e.Message);
            throw e is FuseException fuse ? fuse : new FuseException(Errors.EIO, e.Message);
        }
    }
}

/// <summary>
/// <c>.dev/</c> and its levels: a lookup-only mirror of <c>snapshots/</c> (empty listings, so that <c>find</c>, <c>rsync</c>
/// and file managers never walk into it) whose leaves are the <see cref="AttachTarget"/>s of the images.
/// </summary>
public sealed class DevDirectory : FuseNode, IFuseDirectory
{
    private readonly TreeContext context;
    private readonly TreeDirectory mirrored;
    private readonly ulong ino;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, FuseNode> children = new(StringComparer.Ordinal);

    public DevDirectory(TreeContext context, TreeDirectory mirrored)
    {
        this.context = context;
        this.mirrored = mirrored;
        ino = context.Inodes.Next();
    }

    public TimeSpan NegativeTimeout => TimeSpan.Zero;

    public bool ListingIsImmutable => false;

    public override FuseAttributes GetAttributes() =>
        new(ino, 0, 0x4000 | 0x149, context.Options.Uid, context.Options.Gid, context.MountTime, NLink: 2); // d--x--x--x

    public ValueTask<FuseNode?> LookupAsync(ReadOnlyMemory<byte> name, FuseRequestContext ctx, CancellationToken ct)
    {
        string text;
        try
        {
            text = new UTF8Encoding(false, true).GetString(name.Span);
        }
        catch (DecoderFallbackException)
        {
            return ValueTask.FromResult<FuseNode?>(null);
        }

        if (children.TryGetValue(text, out var known))
        {
            return ValueTask.FromResult<FuseNode?>(known);
        }

        FuseNode? made = null;
        if (mirrored is SnapshotDirectory snapshot)
        {
            if (snapshot.Lookup(text + SnapshotDirectory.DevSuffix) is AttachNode link)
            {
                made = new AttachTarget(context, link, snapshot);
            }
        }
        else if (mirrored.Lookup(text) is TreeDirectory next)
        {
            made = new DevDirectory(context, next);
        }

        return ValueTask.FromResult(made is null ? null : children.GetOrAdd(text, made));
    }

    public ValueTask<IReadOnlyList<FuseDirectoryEntry>> ListAsync(FuseRequestContext ctx, CancellationToken ct) =>
        ValueTask.FromResult<IReadOnlyList<FuseDirectoryEntry>>([]);
}
