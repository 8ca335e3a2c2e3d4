using RestoreFs.Datastore;
using RestoreFs.Nbd;

namespace RestoreFs.Tree;

/// <summary>An NBD export of a backed-up image: reads go to its <see cref="ImageReader"/>; all-zero chunks are holes.</summary>
public sealed class ImageBlockSource(ImageReader reader) : IBlockSource
{
    public long Size => reader.Size;

    public async ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct)
    {
        var done = 0;
        while (done < destination.Length)
        {
            var n = await reader.ReadAsync(offset + done, destination[done..], ct).ConfigureAwait(false);
            if (n <= 0)
            {
                throw new IOException($"read past the end of the image at offset {offset + done}");
            }

            done += n;
        }
    }

    public IEnumerable<BlockExtent> GetExtents(long offset, long length)
    {
        var end = Math.Min(Size, offset + length);
        var chunkSize = (long)reader.ChunkSize;
        var position = offset;
        while (position < end)
        {
            var chunk = (int)(position / chunkSize);
            var zero = reader.IsZeroChunk(chunk);
            var runEnd = Math.Min(end, (chunk + 1) * chunkSize);
            while (runEnd < end && reader.IsZeroChunk((int)(runEnd / chunkSize)) == zero)
            {
                runEnd = Math.Min(end, runEnd + chunkSize);
            }

            yield return new BlockExtent(position, runEnd - position, zero);
            position = runEnd;
        }
    }
}
