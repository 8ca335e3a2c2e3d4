using RestoreFs.Datastore;
using RestoreFs.Fuse;

namespace RestoreFs.Tree;

/// <summary><c>&lt;disk&gt;.img</c>: the disk image, read through the fixed-index reader.</summary>
public sealed class ImageFile : FuseNode, IFuseFile
{
    private static readonly TimeSpan Long = TimeSpan.FromHours(1);
    private readonly TreeContext context;
    private readonly SnapshotState state;
    private readonly string archive;
    private readonly long size;
    private readonly ulong ino;

    public ImageFile(TreeContext context, SnapshotState state, string archive, long size)
    {
        this.context = context;
        this.state = state;
        this.archive = archive;
        this.size = size;
        ino = context.Inodes.Next();
    }

    public override TimeSpan EntryTimeout => Long;

    public override TimeSpan AttrTimeout => Long;

    public override FuseAttributes GetAttributes() =>
        new(ino, (ulong)size, Modes.RegularFile, context.Options.Uid, context.Options.Gid, state.Time,
            Blocks: (ulong)((size + 511) / 512), BlockSize: 1024 * 1024);

    public ValueTask<IFuseFileHandle> OpenAsync(FuseOpenFlags flags, FuseRequestContext ctx, CancellationToken ct)
    {
        var reader = state.OpenImage(archive);
        return ValueTask.FromResult<IFuseFileHandle>(new Handle(reader, state, archive));
    }

    private sealed class Handle(ImageReader reader, SnapshotState state, string archive) : IFuseFileHandle
    {
        public bool KeepCache => true;

        public bool DirectIo => false;

        public async ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct)
        {
            try
            {
                return await reader.ReadAsync(offset, buffer, ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                throw new FuseException(Errors.EINTR, "interrupted");
            }
            catch (Exception e)
            {
                throw state.Translate(e, archive);
            }
        }

        public ValueTask<long> SeekDataOrHoleAsync(long offset, bool data, CancellationToken ct)
        {
            if (offset >= reader.Size)
            {
                throw new FuseException(Errors.ENXIO, "offset at or past end of image"); // ENXIO
            }

            var chunk = (int)(offset / reader.ChunkSize);
            for (var i = chunk; i < reader.ChunkCount; i++)
            {
                if (reader.IsZeroChunk(i) != data)
                {
                    return ValueTask.FromResult(Math.Max(offset, (long)i * reader.ChunkSize));
                }
            }

            if (data)
            {
                throw new FuseException(Errors.ENXIO, "no data after offset");
            }

            return ValueTask.FromResult(reader.Size);
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
