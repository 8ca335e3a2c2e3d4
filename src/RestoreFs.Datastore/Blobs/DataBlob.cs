using System.Buffers;
using System.Buffers.Binary;
using System.IO.Hashing;
using System.Security.Cryptography;
using ZstdSharp;

namespace RestoreFs.Datastore;

/// <summary>The four kinds of DataBlob (spec 2.1).</summary>
public enum BlobKind
{
    Uncompressed,
    Compressed,
    Encrypted,
    EncryptedCompressed,
}

/// <summary>
/// DataBlob encoding and decoding (spec section 2): magic, CRC-32 of the payload, optional AES-256-GCM (16-byte IV),
/// optional zstd. Used for every chunk and every *.blob file.
/// </summary>
public static class DataBlob
{
    public static readonly byte[] MagicUncompressed = Magic("Proxmox Backup uncompressed blob v1.0");
    public static readonly byte[] MagicCompressed = Magic("Proxmox Backup zstd compressed blob v1.0");
    public static readonly byte[] MagicEncrypted = Magic("Proxmox Backup encrypted blob v1.0");
    public static readonly byte[] MagicEncryptedCompressed = Magic("Proxmox Backup zstd compressed encrypted blob v1.0");

    public const int PlainHeaderSize = 12;
    public const int EncryptedHeaderSize = 44;

    /// <summary>The largest plaintext a blob may hold (PBS's limit).</summary>
    public const int MaxBlobSize = 128 * 1024 * 1024;

    public static byte[] Magic(string text) => SHA256.HashData(System.Text.Encoding.ASCII.GetBytes(text))[..8];

    public static BlobKind? KindOf(ReadOnlySpan<byte> blob)
    {
        if (blob.Length < 8)
        {
            return null;
        }

        var magic = blob[..8];
        if (magic.SequenceEqual(MagicUncompressed))
        {
            return BlobKind.Uncompressed;
        }

        if (magic.SequenceEqual(MagicCompressed))
        {
            return BlobKind.Compressed;
        }

        if (magic.SequenceEqual(MagicEncrypted))
        {
            return BlobKind.Encrypted;
        }

        return magic.SequenceEqual(MagicEncryptedCompressed) ? BlobKind.EncryptedCompressed : null;
    }

    public static bool IsEncrypted(BlobKind kind) => kind is BlobKind.Encrypted or BlobKind.EncryptedCompressed;

    /// <summary>Checks magic, size and CRC; returns the kind.</summary>
    /// <param name="crc">The payload's CRC when it was summed already (<see cref="StreamedChunkDecoder"/>: the payload
    /// is plaintext by now); null to compute it here.</param>
    public static BlobKind Verify(ReadOnlySpan<byte> blob, string path, string? digest = null, long? offset = null, uint? crc = null)
    {
        var kind = VerifyHeader(blob, path, digest, offset);
        CheckCrc(blob, crc ?? Crc32.HashToUInt32(blob[(IsEncrypted(kind) ? EncryptedHeaderSize : PlainHeaderSize)..]), path, digest, offset);
        return kind;
    }

    /// <summary>Checks magic and size (<paramref name="blob"/> may be the header alone); returns the kind.</summary>
    internal static BlobKind VerifyHeader(ReadOnlySpan<byte> blob, string path, string? digest, long? offset)
    {
        if (blob.Length < PlainHeaderSize)
        {
            throw new ChunkCorruptException($"blob is truncated ({blob.Length} bytes, a blob has at least {PlainHeaderSize})", path, offset, digest);
        }

        var kind = KindOf(blob) ?? throw new ChunkCorruptException($"unknown blob magic {Convert.ToHexStringLower(blob[..8])}", path, offset, digest);
        var header = IsEncrypted(kind) ? EncryptedHeaderSize : PlainHeaderSize;
        if (blob.Length < header)
        {
            throw new ChunkCorruptException($"encrypted blob is truncated ({blob.Length} bytes, at least {EncryptedHeaderSize})", path, offset, digest);
        }

        return kind;
    }

    /// <summary>Compares the CRC stored in the header of <paramref name="blob"/> with <paramref name="actual"/>, the
    /// CRC of its payload.</summary>
    internal static void CheckCrc(ReadOnlySpan<byte> blob, uint actual, string path, string? digest, long? offset)
    {
        var stored = BinaryPrimitives.ReadUInt32LittleEndian(blob[8..12]);
        if (stored != actual)
        {
            throw new ChunkCorruptException($"CRC mismatch (stored {stored:x8}, computed {actual:x8})", path, offset, digest);
        }
    }

    /// <summary>Decodes a blob whose plaintext size is not known in advance (*.blob files).</summary>
    public static byte[] Decode(ReadOnlySpan<byte> blob, CryptConfig? key, string path, int maxPlaintext = MaxBlobSize)
    {
        var kind = Verify(blob, path);
        ReadOnlySpan<byte> payload;
        byte[]? decrypted = null;
        if (IsEncrypted(kind))
        {
            if (key is null)
            {
                throw new KeyRequiredException("the blob is encrypted and no key was given", path);
            }

            decrypted = new byte[blob.Length - EncryptedHeaderSize];
            if (!key.TryDecrypt(blob[12..28], blob[28..44], blob[44..], decrypted))
            {
                throw new WrongKeyException("decryption failed: wrong key or damaged blob", path);
            }

            payload = decrypted;
        }
        else
        {
            payload = blob[PlainHeaderSize..];
        }

        if (kind is BlobKind.Uncompressed or BlobKind.Encrypted)
        {
            return decrypted ?? payload.ToArray();
        }

        try
        {
            using var input = new MemoryStream(payload.ToArray(), writable: false);
            using var zstd = new DecompressionStream(input);
            using var output = new MemoryStream();
            var buffer = new byte[81920];
            int n;
            while ((n = zstd.Read(buffer)) > 0)
            {
                output.Write(buffer, 0, n);
                if (output.Length > maxPlaintext)
                {
                    throw new ChunkCorruptException($"blob decompresses to more than the limit of {maxPlaintext} bytes", path);
                }
            }

            return output.ToArray();
        }
        catch (ZstdException e)
        {
            throw new ChunkCorruptException($"zstd decompression failed: {e.Message}", path, inner: e);
        }
    }

    /// <summary>
    /// Decodes a chunk whose plaintext length is known (<paramref name="destination"/>.Length) and verifies its digest.
    /// Throws on any mismatch, naming the chunk.
    /// </summary>
    public static void DecodeChunk(ReadOnlySpan<byte> blob, CryptConfig? key, bool expectEncrypted, Span<byte> destination,
        ReadOnlySpan<byte> digest, string path, long offset, bool verifyDigest = true) =>
        Decode(blob, [], key, expectEncrypted, destination, digest, path, offset, verifyDigest);

    /// <summary>
    /// As <see cref="DecodeChunk"/>, for a blob in a scratch buffer the caller throws away afterwards: an encrypted
    /// compressed payload is decrypted where it lies (no second multi-MiB buffer to find, fill and fault in).
    /// </summary>
    public static void DecodeChunkInPlace(Span<byte> blob, CryptConfig? key, bool expectEncrypted, Span<byte> destination,
        ReadOnlySpan<byte> digest, string path, long offset, bool verifyDigest = true) =>
        Decode(blob, blob, key, expectEncrypted, destination, digest, path, offset, verifyDigest);

    private static void Decode(ReadOnlySpan<byte> blob, Span<byte> scratch, CryptConfig? key, bool expectEncrypted, Span<byte> destination,
        ReadOnlySpan<byte> digest, string path, long offset, bool verifyDigest)
    {
        var digestHex = Convert.ToHexStringLower(digest);
        var kind = Verify(blob, path, digestHex, offset);
        if (IsEncrypted(kind) != expectEncrypted)
        {
            throw new ChunkCorruptException(expectEncrypted ? "chunk is not encrypted but the archive is" : "chunk is encrypted but the archive is not",
                path, offset, digestHex);
        }

        byte[]? rented = null;
        try
        {
            ReadOnlySpan<byte> payload;
            if (IsEncrypted(kind))
            {
                if (key is null)
                {
                    throw new KeyRequiredException($"chunk {digestHex} is encrypted and no key was given", path);
                }

                var cipherLength = blob.Length - EncryptedHeaderSize;
                if (kind == BlobKind.Encrypted && cipherLength == destination.Length)
                {
                    // Straight into the caller's buffer: TryDecrypt clears it when the tag does not verify.
                    if (!key.TryDecrypt(blob[12..28], blob[28..44], blob[44..], destination))
                    {
                        throw new ChunkCorruptException("authentication failed: wrong key or damaged chunk", path, offset, digestHex);
                    }

                    VerifyKeyedDigest(destination, key, digest, verifyDigest, path, offset, digestHex);
                    return;
                }
                else
                {
                    Span<byte> plain;
                    if (!scratch.IsEmpty && key.DecryptsInPlace)
                    {
                        plain = scratch.Slice(EncryptedHeaderSize, cipherLength); // the same bytes as blob[44..]
                    }
                    else
                    {
                        rented = BlobBuffers.Pool.Rent(Math.Max(1, cipherLength));
                        plain = rented.AsSpan(0, cipherLength);
                    }

                    if (!key.TryDecrypt(blob[12..28], blob[28..44], blob[44..], plain))
                    {
                        throw new ChunkCorruptException("authentication failed: wrong key or damaged chunk", path, offset, digestHex);
                    }

                    payload = plain;
                }
            }
            else
            {
                payload = blob[PlainHeaderSize..];
            }

            if (kind is BlobKind.Uncompressed or BlobKind.Encrypted)
            {
                if (payload.Length != destination.Length)
                {
                    throw new ChunkCorruptException($"chunk holds {payload.Length} bytes, the index expects {destination.Length}", path, offset, digestHex);
                }

                payload.CopyTo(destination);
            }
            else if (verifyDigest && NativeZstd.Available && destination.Length >= HashPipeline.MinimumLength)
            {
                // Decompress and hash at once (the cold-read path: one chunk per random read).
                Span<byte> pipelined = stackalloc byte[32];
                int written;
                try
                {
                    written = HashPipeline.DecompressAndHash(payload, destination, expectEncrypted ? key!.IdKey : [], pipelined);
                }
                catch (InvalidDataException e)
                {
                    throw new ChunkCorruptException($"zstd decompression failed: {e.Message}", path, offset, digestHex, e);
                }

                if (written != destination.Length)
                {
                    throw new ChunkCorruptException($"chunk decompresses to {written} bytes, the index expects {destination.Length}", path, offset, digestHex);
                }

                if (!pipelined.SequenceEqual(digest))
                {
                    throw new ChunkCorruptException($"digest mismatch (content hashes to {Convert.ToHexStringLower(pipelined)})", path, offset, digestHex);
                }

                return;
            }
            else
            {
                Decompress(payload, destination, path, offset, digestHex);
            }
        }
        finally
        {
            if (rented is not null)
            {
                BlobBuffers.Pool.Return(rented);
            }
        }

        if (verifyDigest)
        {
            Span<byte> actual = stackalloc byte[32];
            if (expectEncrypted)
            {
                key!.KeyedDigest(destination).CopyTo(actual);
            }
            else
            {
                SHA256.HashData(destination, actual);
            }

            if (!actual.SequenceEqual(digest))
            {
                throw new ChunkCorruptException($"digest mismatch (content hashes to {Convert.ToHexStringLower(actual)})", path, offset, digestHex);
            }
        }
    }

    private static void VerifyKeyedDigest(Span<byte> content, CryptConfig key, ReadOnlySpan<byte> digest, bool verifyDigest, string path, long offset, string digestHex)
    {
        if (!verifyDigest)
        {
            return;
        }

        var actual = key.KeyedDigest(content);
        if (!actual.AsSpan().SequenceEqual(digest))
        {
            content.Clear();
            throw new ChunkCorruptException($"digest mismatch (content hashes to {Convert.ToHexStringLower(actual)})", path, offset, digestHex);
        }
    }

    private static void Decompress(ReadOnlySpan<byte> frame, Span<byte> destination, string path, long offset, string digest)
    {
        int written;
        if (NativeZstd.Available)
        {
            try
            {
                written = NativeZstd.Decompress(frame, destination);
            }
            catch (InvalidDataException e)
            {
                throw new ChunkCorruptException($"zstd decompression failed: {e.Message}", path, offset, digest, e);
            }

            if (written != destination.Length)
            {
                throw new ChunkCorruptException($"chunk decompresses to {written} bytes, the index expects {destination.Length}", path, offset, digest);
            }

            return;
        }

        using var decompressor = new Decompressor();
        try
        {
            if (!decompressor.TryUnwrap(frame, destination, out written))
            {
                throw new ChunkCorruptException($"chunk decompresses to more than the {destination.Length} bytes the index expects", path, offset, digest);
            }
        }
        catch (ZstdException e)
        {
            throw new ChunkCorruptException($"zstd decompression failed: {e.Message}", path, offset, digest, e);
        }

        if (written != destination.Length)
        {
            throw new ChunkCorruptException($"chunk decompresses to {written} bytes, the index expects {destination.Length}", path, offset, digest);
        }
    }

    /// <summary>
    /// Encodes data as a blob: zstd level 1 kept only when strictly smaller (as PBS does), AES-256-GCM with a random
    /// 16-byte IV when keyed.
    /// </summary>
    public static byte[] Encode(ReadOnlySpan<byte> data, CryptConfig? key, bool compress)
    {
        var blob = new byte[MaxEncodedLength(data.Length)];
        var length = EncodeInto(data, key, compress, blob);
        return length == blob.Length ? blob : blob[..length];
    }

    /// <summary>The most bytes <see cref="EncodeInto"/> writes for <paramref name="dataLength"/> bytes of data.</summary>
    public static int MaxEncodedLength(int dataLength) => EncryptedHeaderSize + dataLength;

    [ThreadStatic]
    private static byte[]? compressScratch;

    /// <summary>
    /// <see cref="Encode"/> into <paramref name="destination"/> (at least <see cref="MaxEncodedLength"/> bytes); returns
    /// the blob's length. With libzstd an unencrypted chunk is compressed straight behind its header, with room for one
    /// byte less than the data, so an incompressible chunk costs no copy of a frame that is thrown away.
    /// </summary>
    public static int EncodeInto(ReadOnlySpan<byte> data, CryptConfig? key, bool compress, Span<byte> destination)
    {
        var header = key is null ? PlainHeaderSize : EncryptedHeaderSize;
        if (destination.Length < header + data.Length)
        {
            throw new ArgumentException($"a blob of {data.Length} bytes needs {header + data.Length} bytes of room", nameof(destination));
        }

        // The payload: a zstd frame strictly smaller than the data, or the data. Unkeyed, it is built in place.
        ReadOnlySpan<byte> payload = data;
        var compressed = false;
        if (compress && data.Length > 1)
        {
            var room = data.Length - 1;
            Span<byte> target;
            if (key is null)
            {
                target = destination.Slice(header, room);
            }
            else
            {
                if (compressScratch is null || compressScratch.Length < room)
                {
                    compressScratch = GC.AllocateUninitializedArray<byte>(Math.Max(room, 64 * 1024));
                }

                target = compressScratch.AsSpan(0, room);
            }

            var written = CompressFrame(data, target);
            if (written > 0)
            {
                payload = target[..written];
                compressed = true;
            }
        }

        if (key is null)
        {
            (compressed ? MagicCompressed : MagicUncompressed).CopyTo(destination);
            if (!compressed)
            {
                data.CopyTo(destination[header..]);
            }

            BinaryPrimitives.WriteUInt32LittleEndian(destination[8..], Crc32.HashToUInt32(destination.Slice(header, payload.Length)));
            return header + payload.Length;
        }

        (compressed ? MagicEncryptedCompressed : MagicEncrypted).CopyTo(destination);
        RandomNumberGenerator.Fill(destination.Slice(12, 16));
        key.Encrypt(destination.Slice(12, 16), payload, destination.Slice(header, payload.Length), destination.Slice(28, 16));
        BinaryPrimitives.WriteUInt32LittleEndian(destination[8..], Crc32.HashToUInt32(destination.Slice(header, payload.Length)));
        return header + payload.Length;
    }

    /// <summary>zstd level 1 into <paramref name="target"/>; the frame's length, or -1 when it does not fit.</summary>
    private static int CompressFrame(ReadOnlySpan<byte> data, Span<byte> target)
    {
        if (NativeZstd.Available)
        {
            return NativeZstd.Compress(data, target, 1);
        }

        using var compressor = new Compressor(1);
        var frame = compressor.Wrap(data);
        if (frame.Length > target.Length)
        {
            return -1;
        }

        frame.CopyTo(target);
        return frame.Length;
    }

    /// <summary>Encodes with a given IV (test vectors only).</summary>
    public static byte[] EncodeEncryptedWithIv(ReadOnlySpan<byte> data, CryptConfig key, ReadOnlySpan<byte> iv)
    {
        var blob = new byte[EncryptedHeaderSize + data.Length];
        MagicEncrypted.CopyTo(blob, 0);
        iv.CopyTo(blob.AsSpan(12, 16));
        key.Encrypt(iv, data, blob.AsSpan(EncryptedHeaderSize), blob.AsSpan(28, 16));
        BinaryPrimitives.WriteUInt32LittleEndian(blob.AsSpan(8), Crc32.HashToUInt32(blob.AsSpan(EncryptedHeaderSize)));
        return blob;
    }
}

