using System.Text;
using RestoreFs.Fuse;

namespace RestoreFs.Tree;

/// <summary>
/// <c>&lt;disk&gt;.img.dev</c>: a symlink to the image as a kernel block device. The first resolve (readlink, open,
/// <c>mount &lt;path&gt;</c>) attaches it — NBD where the kernel has it, else a read-only loop device over the image file in
/// this mount — and later resolves return the same device. Unmounting detaches it.
/// </summary>
public sealed class AttachNode : FuseNode, IFuseSymlink
{
    private readonly TreeContext context;
    private readonly SnapshotState state;
    private readonly string archive;
    private readonly SnapshotDirectory parent;
    private readonly string imageName;
    private readonly ulong ino;

    public AttachNode(TreeContext context, SnapshotState state, string archive, SnapshotDirectory parent, string imageName)
    {
        this.context = context;
        this.state = state;
        this.archive = archive;
        this.parent = parent;
        this.imageName = imageName;
        ino = context.Inodes.Next();
    }

    public override TimeSpan EntryTimeout => TimeSpan.Zero;

    public override TimeSpan AttrTimeout => TimeSpan.Zero;

    public override FuseAttributes GetAttributes()
    {
        var length = (ulong)(context.Exports.AttachedPath(state, archive)?.Length ?? 0);
        return new FuseAttributes(ino, length, Modes.Symlink, context.Options.Uid, context.Options.Gid, state.Time);
    }

    public async ValueTask<byte[]> ReadLinkAsync(FuseRequestContext ctx, CancellationToken ct)
    {
        try
        {
            var device = await context.Exports.AttachAsync(state, archive, parent.ImagePathInMount(imageName)).ConfigureAwait(false);
            return Encoding.UTF8.GetBytes(device.DevicePath);
        }
        catch (Exception e)
        {
            context.WarnOnce($"attach:{state.Snapshot.DirectoryPath}:{archive}", e,
                "Could not attach {Archive} of {Snapshot} as a block device: {Reason}", archive, state.Snapshot.Name, e.Message);
            throw e is FuseException fuse ? fuse : new FuseException(5, e.Message);
        }
    }
}
