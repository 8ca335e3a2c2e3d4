using System.Buffers.Binary;
using System.Security.Cryptography;

namespace RestoreFs.Datastore;

/// <summary>Builds a dynamic index file (<c>.didx</c>, spec section 4) from chunk end offsets and digests.</summary>
public static class DynamicIndexWriter
{
    public static byte[] Build(IReadOnlyList<(long End, byte[] Digest)> chunks, DateTimeOffset ctime)
    {
        var bytes = new byte[DynamicIndex.HeaderSize + 40 * chunks.Count];
        DynamicIndex.Magic.CopyTo(bytes, 0);
        Guid.NewGuid().TryWriteBytes(bytes.AsSpan(8, 16));
        BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan(24), ctime.ToUnixTimeSeconds());
        long previous = 0;
        for (var i = 0; i < chunks.Count; i++)
        {
            if (chunks[i].End <= previous || chunks[i].Digest.Length != 32)
            {
                throw new ArgumentException($"chunk {i}: ends must increase and digests be 32 bytes", nameof(chunks));
            }

            previous = chunks[i].End;
            var entry = bytes.AsSpan(DynamicIndex.HeaderSize + 40 * i, 40);
            BinaryPrimitives.WriteUInt64LittleEndian(entry, (ulong)chunks[i].End);
            chunks[i].Digest.CopyTo(entry[8..]);
        }

        SHA256.HashData(bytes.AsSpan(DynamicIndex.HeaderSize), bytes.AsSpan(32, 32));
        return bytes;
    }
}

/// <summary>
/// A write-only stream that becomes one dynamic-index archive of a snapshot: cut into content-defined chunks
/// (<see cref="ContentChunker"/>), each stored (deduplicated, compressed, encrypted when keyed) as it completes, and
/// the <c>.didx</c> written by <see cref="Finish"/>. Memory: one chunk (at most 4 × the average).
/// </summary>
/// <summary>Stores one chunk (read during the call, not kept); returns its digest and whether it was new.</summary>
internal delegate (byte[] Digest, bool IsNew) ChunkSink(ReadOnlySpan<byte> data);

public sealed class DynamicArchiveStream : Stream
{
    private readonly ChunkSink store;
    private readonly Func<DynamicArchiveStream, ManifestFile> finish;
    private readonly ContentChunker chunker;
    private readonly List<(long End, byte[] Digest)> chunks = [];
    private byte[] buffer;
    private int filled;
    private long total;
    private ManifestFile? result;

    internal DynamicArchiveStream(string fileName, int averageChunkSize, ChunkSink store,
        Func<DynamicArchiveStream, ManifestFile> finish)
    {
        FileName = fileName;
        this.store = store;
        this.finish = finish;
        chunker = new ContentChunker(averageChunkSize);
        buffer = new byte[Math.Min(chunker.MaxSize, 1024 * 1024)];
    }

    public string FileName { get; }

    public long NewChunks { get; private set; }

    public long ReusedChunks { get; private set; }

    internal IReadOnlyList<(long End, byte[] Digest)> Chunks => chunks;

    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => result is null;

    public override long Length => total;

    public override long Position
    {
        get => total;
        set => throw new NotSupportedException();
    }

    public override void Write(byte[] data, int offset, int count) => Write(data.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> data)
    {
        if (result is not null)
        {
            throw new InvalidOperationException($"{FileName} is finished");
        }

        while (data.Length > 0)
        {
            var cut = chunker.Scan(data);
            var take = cut < 0 ? data.Length : cut;
            Append(data[..take]);
            data = data[take..];
            if (cut >= 0)
            {
                Cut();
            }
        }
    }

    private void Append(ReadOnlySpan<byte> data)
    {
        if (filled + data.Length > buffer.Length)
        {
            Array.Resize(ref buffer, Math.Min(chunker.MaxSize, Math.Max(buffer.Length * 2, filled + data.Length)));
        }

        data.CopyTo(buffer.AsSpan(filled));
        filled += data.Length;
        total += data.Length;
    }

    private void Cut()
    {
        if (filled == 0)
        {
            return;
        }

        var (digest, isNew) = store(buffer.AsSpan(0, filled));
        chunks.Add((total, digest));
        if (isNew)
        {
            NewChunks++;
        }
        else
        {
            ReusedChunks++;
        }

        filled = 0;
    }

    /// <summary>Stores the last chunk, writes the index into the snapshot and lists it in the manifest.</summary>
    public ManifestFile Finish()
    {
        if (result is null)
        {
            Cut();
            chunker.Reset();
            result = finish(this);
        }

        return result;
    }

    public override void Flush()
    {
    }

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();
}
