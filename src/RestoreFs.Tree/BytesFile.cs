using RestoreFs.Fuse;

namespace RestoreFs.Tree;

/// <summary>A small read-only file whose content is computed once (decoded blobs, URIs, error texts).</summary>
public abstract class BytesFile : FuseNode, IFuseFile
{
    private readonly Lazy<byte[]> content;
    private readonly ulong ino;

    protected BytesFile(TreeContext context, DateTimeOffset mtime)
    {
        Context = context;
        MTime = mtime;
        ino = context.Inodes.Next();
        content = new Lazy<byte[]>(Load, LazyThreadSafetyMode.PublicationOnly);
    }

    protected TreeContext Context { get; }

    protected DateTimeOffset MTime { get; }

    public override TimeSpan EntryTimeout => TimeSpan.FromHours(1);

    public override TimeSpan AttrTimeout => TimeSpan.FromHours(1);

    /// <summary>Computes the content; throws <see cref="FuseException"/> when it cannot be had (then the size is 0).</summary>
    protected abstract byte[] Load();

    private byte[]? TryContent()
    {
        try
        {
            return content.Value;
        }
        catch (FuseException)
        {
            return null;
        }
    }

    public override FuseAttributes GetAttributes()
    {
        var length = (ulong)(TryContent()?.Length ?? 0);
        return new FuseAttributes(ino, length, Modes.RegularFile, Context.Options.Uid, Context.Options.Gid, MTime,
            Blocks: (length + 511) / 512);
    }

    public ValueTask<IFuseFileHandle> OpenAsync(FuseOpenFlags flags, FuseRequestContext ctx, CancellationToken ct)
    {
        OnOpen(ctx);
        return ValueTask.FromResult<IFuseFileHandle>(new Handle(content.Value));
    }

    /// <summary>Called when someone opens the file (explicit use, unlike stat): the place for side effects.</summary>
    protected virtual void OnOpen(FuseRequestContext ctx)
    {
    }

    private sealed class Handle(byte[] data) : IFuseFileHandle
    {
        public bool KeepCache => true;

        public bool DirectIo => false;

        public ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct)
        {
            if (offset >= data.Length)
            {
                return ValueTask.FromResult(0);
            }

            var n = (int)Math.Min(buffer.Length, data.Length - offset);
            data.AsSpan((int)offset, n).CopyTo(buffer.Span);
            return ValueTask.FromResult(n);
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}

/// <summary>A snapshot blob (<c>qemu-server.conf</c>, <c>fw.conf</c>, <c>client.log</c>, <c>index.json</c>) decoded.</summary>
public sealed class BlobFile(TreeContext context, SnapshotState state, string blobName) : BytesFile(context, state.Time)
{
    protected override byte[] Load()
    {
        try
        {
            return Context.Store.ReadBlob(state.Snapshot, blobName, Context.Options.Key, blobName == "index.json.blob" ? null : state.Manifest);
        }
        catch (Exception e)
        {
            throw state.Translate(e, blobName);
        }
    }
}

/// <summary>
/// <c>&lt;disk&gt;.img.nbd</c>: the NBD URI the image is exported at, for qemu-img, nbdinfo, nbdfuse. Its size and content cost nothing; opening it (as the mount
/// owner or root) starts the mount's NBD server and the export, so the URI works once read.
/// </summary>
public sealed class NbdUriFile(TreeContext context, SnapshotState state, string archive) : BytesFile(context, state.Time)
{
    protected override byte[] Load() => System.Text.Encoding.UTF8.GetBytes(Context.Exports.PlannedUri(state, archive) + "\n");

    protected override void OnOpen(FuseRequestContext ctx)
    {
        if (Context.IsPrivileged(ctx))
        {
            _ = Context.Exports.UriFor(state, archive);
        }
    }
}
