using System.Buffers.Binary;
using System.Security.Cryptography;

namespace RestoreFs.Datastore;

/// <summary>
/// A fixed index (<c>.fidx</c>, spec section 3): a 4096-byte header and one 32-byte digest per chunk of a block image.
/// </summary>
public sealed class FixedIndex
{
    public const int HeaderSize = 4096;
    public static readonly byte[] Magic = DataBlob.Magic("Proxmox Backup fixed sized chunk index v1.0");

    private readonly byte[] digests;

    private FixedIndex(string path, Guid uuid, long ctime, byte[] checksum, long size, int chunkSize, byte[] digests)
    {
        Path = path;
        Uuid = uuid;
        CTime = ctime;
        Checksum = checksum;
        Size = size;
        ChunkSize = chunkSize;
        this.digests = digests;
    }

    public string Path { get; }

    public Guid Uuid { get; }

    public long CTime { get; }

    /// <summary>SHA-256 of the digest table (= the manifest's csum for this archive).</summary>
    public byte[] Checksum { get; }

    public long Size { get; }

    public int ChunkSize { get; }

    public int ChunkCount => digests.Length / 32;

    public ReadOnlySpan<byte> Digest(int index) => digests.AsSpan(index * 32, 32);

    public string DigestHex(int index) => Convert.ToHexStringLower(Digest(index));

    /// <summary>Plaintext length of chunk <paramref name="index"/> (the last one may be short).</summary>
    public int ChunkLength(int index) =>
        (int)Math.Min(ChunkSize, Size - (long)index * ChunkSize);

    /// <summary>Opens an index file by path (its directory is the root it may not leave).</summary>
    public static FixedIndex Open(string path)
    {
        var full = System.IO.Path.GetFullPath(path);
        return Open(new LocalStoreFiles(System.IO.Path.GetDirectoryName(full)!), System.IO.Path.GetFileName(full));
    }

    /// <summary>
    /// Opens an index of the store: the header first, then its size checked against header + 32 × count before the
    /// digest table is read.
    /// </summary>
    internal static FixedIndex Open(IStoreFiles files, string relativePath)
    {
        var path = files.Describe(relativePath);
        using var file = files.TryOpen(relativePath) ?? throw new ArchiveNotFoundException("index file is missing", path);
        if (file.Length < HeaderSize)
        {
            throw new IndexCorruptException($"fixed index is truncated ({file.Length} bytes, the header alone has {HeaderSize})", path);
        }

        if (file.Length > StoreLimits.MaxIndexFile)
        {
            throw new StoreLimitException($"fixed index has {file.Length} bytes, more than the limit of {StoreLimits.MaxIndexFile}", path);
        }

        var header = new byte[HeaderSize];
        file.ReadExactlyAt(header, 0, path);
        var (_, _, expected) = CheckHeader(header, path);
        if (file.Length != expected)
        {
            throw new IndexCorruptException($"fixed index has {file.Length} bytes, {expected} expected from its header", path);
        }

        var bytes = new byte[file.Length];
        header.CopyTo(bytes, 0);
        file.ReadExactlyAt(bytes.AsSpan(HeaderSize), HeaderSize, path);
        return Parse(bytes, path);
    }

    /// <summary>Image size, chunk size and the file size they imply (overflow-safe: a hostile size cannot wrap).</summary>
    private static (long Size, long ChunkSize, long Expected) CheckHeader(ReadOnlySpan<byte> bytes, string path)
    {
        if (!bytes[..8].SequenceEqual(Magic))
        {
            throw new IndexCorruptException($"not a fixed index (magic {Convert.ToHexStringLower(bytes[..8])})", path);
        }

        var size = BinaryPrimitives.ReadInt64LittleEndian(bytes[64..]);
        var chunkSize = BinaryPrimitives.ReadInt64LittleEndian(bytes[72..]);
        if (size <= 0)
        {
            throw new IndexCorruptException($"fixed index has image size {size}", path);
        }

        if (chunkSize <= 0 || chunkSize > StoreLimits.MaxChunkPlaintext || (chunkSize & (chunkSize - 1)) != 0)
        {
            throw new IndexCorruptException($"fixed index has chunk size {chunkSize} (must be a power of two up to {StoreLimits.MaxChunkPlaintext})", path);
        }

        var count = size / chunkSize + (size % chunkSize != 0 ? 1 : 0);
        long expected;
        try
        {
            expected = checked(HeaderSize + 32 * count);
        }
        catch (OverflowException)
        {
            throw new IndexCorruptException($"fixed index claims {count} chunks of a {size}-byte image, more than any file can hold", path);
        }

        if (expected > StoreLimits.MaxIndexFile)
        {
            throw new StoreLimitException(
                $"fixed index claims {count} chunks of a {size}-byte image ({expected} bytes), more than the limit of {StoreLimits.MaxIndexFile}", path);
        }

        return (size, chunkSize, expected);
    }

    public static FixedIndex Parse(ReadOnlySpan<byte> bytes, string path)
    {
        if (bytes.Length < HeaderSize)
        {
            throw new IndexCorruptException($"fixed index is truncated ({bytes.Length} bytes, the header alone has {HeaderSize})", path);
        }

        var (size, chunkSize, expected) = CheckHeader(bytes, path);
        if (bytes.Length != expected)
        {
            throw new IndexCorruptException($"fixed index has {bytes.Length} bytes, {expected} expected for a {size}-byte image in {chunkSize}-byte chunks", path);
        }

        var table = bytes[HeaderSize..].ToArray();
        var checksum = SHA256.HashData(table);
        if (!checksum.AsSpan().SequenceEqual(bytes[32..64]))
        {
            throw new IndexCorruptException(
                $"index checksum mismatch (header {Convert.ToHexStringLower(bytes[32..64])}, digest table hashes to {Convert.ToHexStringLower(checksum)})", path);
        }

        return new FixedIndex(path, new Guid(bytes[8..24]), BinaryPrimitives.ReadInt64LittleEndian(bytes[24..]), checksum, size, (int)chunkSize, table);
    }

    /// <summary>Serialises an index (writer side).</summary>
    public static byte[] Build(long size, int chunkSize, IReadOnlyList<byte[]> chunkDigests, DateTimeOffset ctime)
    {
        var bytes = new byte[HeaderSize + 32 * chunkDigests.Count];
        Magic.CopyTo(bytes, 0);
        Guid.NewGuid().TryWriteBytes(bytes.AsSpan(8, 16));
        BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan(24), ctime.ToUnixTimeSeconds());
        BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan(64), size);
        BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan(72), chunkSize);
        for (var i = 0; i < chunkDigests.Count; i++)
        {
            chunkDigests[i].CopyTo(bytes, HeaderSize + 32 * i);
        }

        SHA256.HashData(bytes.AsSpan(HeaderSize), bytes.AsSpan(32, 32));
        return bytes;
    }
}
