using System.Buffers.Binary;
using System.Security.Cryptography;

namespace RestoreFs.Datastore;

/// <summary>A dynamic index (<c>.didx</c>, spec section 4): chunks of a stream cut at content-defined boundaries.</summary>
public sealed class DynamicIndex
{
    public const int HeaderSize = 4096;
    public static readonly byte[] Magic = DataBlob.Magic("Proxmox Backup dynamic sized chunk index v1.0");

    private readonly long[] ends;
    private readonly byte[] digests;

    private DynamicIndex(string path, byte[] checksum, long[] ends, byte[] digests)
    {
        Path = path;
        Checksum = checksum;
        this.ends = ends;
        this.digests = digests;
    }

    public string Path { get; }

    public byte[] Checksum { get; }

    public int ChunkCount => ends.Length;

    public long Size => ends.Length == 0 ? 0 : ends[^1];

    public long ChunkStart(int index) => index == 0 ? 0 : ends[index - 1];

    public long ChunkEnd(int index) => ends[index];

    public ReadOnlySpan<byte> Digest(int index) => digests.AsSpan(index * 32, 32);

    /// <summary>The chunk holding <paramref name="offset"/> (binary search over the end offsets).</summary>
    public int ChunkAt(long offset)
    {
        var i = Array.BinarySearch(ends, offset);
        return i >= 0 ? i + 1 : ~i;
    }

    /// <summary>Opens an index file by path (its directory is the root it may not leave).</summary>
    public static DynamicIndex Open(string path)
    {
        var full = System.IO.Path.GetFullPath(path);
        return Open(new LocalStoreFiles(System.IO.Path.GetDirectoryName(full)!), System.IO.Path.GetFileName(full));
    }

    /// <summary>Opens an index of the store; its size (header + 40 × count) is checked before it is read.</summary>
    internal static DynamicIndex Open(IStoreFiles files, string relativePath)
    {
        var path = files.Describe(relativePath);
        byte[] bytes;
        using (var file = files.TryOpen(relativePath) ?? throw new ArchiveNotFoundException("index file is missing", path))
        {
            if (file.Length > StoreLimits.MaxIndexFile)
            {
                throw new StoreLimitException($"dynamic index has {file.Length} bytes, more than the limit of {StoreLimits.MaxIndexFile}", path);
            }

            if (file.Length >= HeaderSize && (file.Length - HeaderSize) % 40 != 0)
            {
                throw new IndexCorruptException($"dynamic index body of {file.Length - HeaderSize} bytes is not a multiple of 40", path);
            }

            bytes = new byte[file.Length];
            file.ReadExactlyAt(bytes, 0, path);
        }

        if (bytes.Length < HeaderSize)
        {
            throw new IndexCorruptException($"dynamic index is truncated ({bytes.Length} bytes)", path);
        }

        if (!bytes.AsSpan(0, 8).SequenceEqual(Magic))
        {
            throw new IndexCorruptException($"not a dynamic index (magic {Convert.ToHexStringLower(bytes.AsSpan(0, 8))})", path);
        }

        var body = bytes.AsSpan(HeaderSize);
        if (body.Length % 40 != 0)
        {
            throw new IndexCorruptException($"dynamic index body of {body.Length} bytes is not a multiple of 40", path);
        }

        var checksum = SHA256.HashData(body);
        if (!checksum.AsSpan().SequenceEqual(bytes.AsSpan(32, 32)))
        {
            throw new IndexCorruptException("index checksum mismatch", path);
        }

        var count = body.Length / 40;
        var ends = new long[count];
        var digests = new byte[count * 32];
        for (var i = 0; i < count; i++)
        {
            ends[i] = BinaryPrimitives.ReadInt64LittleEndian(body[(i * 40)..]);
            if (ends[i] <= (i == 0 ? 0 : ends[i - 1]))
            {
                throw new IndexCorruptException($"chunk end offsets are not increasing at entry {i}", path);
            }

            if (ends[i] - (i == 0 ? 0 : ends[i - 1]) > StoreLimits.MaxChunkPlaintext)
            {
                throw new IndexCorruptException($"chunk {i} is {ends[i] - (i == 0 ? 0 : ends[i - 1])} bytes long, more than the limit of {StoreLimits.MaxChunkPlaintext}", path);
            }

            body.Slice(i * 40 + 8, 32).CopyTo(digests.AsSpan(i * 32));
        }

        return new DynamicIndex(path, checksum, ends, digests);
    }
}
