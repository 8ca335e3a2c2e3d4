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
    /// <param name="crc">The payload's CRC when it was summed already (<see cref="StreamedDecryption"/>: the payload
    /// is plaintext by now); null to compute it here.</param>
    public static BlobKind Verify(ReadOnlySpan<byte> blob, string path, string? digest = null, long? offset = null, uint? crc = null)
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

        var stored = BinaryPrimitives.ReadUInt32LittleEndian(blob[8..12]);
        var actual = crc ?? Crc32.HashToUInt32(blob[header..]);
        if (stored != actual)
        {
            throw new ChunkCorruptException($"CRC mismatch (stored {stored:x8}, computed {actual:x8})", path, offset, digest);
        }

        return kind;
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
    /// <param name="streamed">The decryption that ran while the blob was read (<see cref="StreamedDecryption"/>); when
    /// it covered the whole blob, its CRC and tag are checked instead of decrypting again.</param>
    public static void DecodeChunkInPlace(Span<byte> blob, CryptConfig? key, bool expectEncrypted, Span<byte> destination,
        ReadOnlySpan<byte> digest, string path, long offset, bool verifyDigest = true, StreamedDecryption? streamed = null) =>
        Decode(blob, blob, key, expectEncrypted, destination, digest, path, offset, verifyDigest,
            streamed is not null && streamed.Covers(blob.Length) ? streamed : null);

    private static void Decode(ReadOnlySpan<byte> blob, Span<byte> scratch, CryptConfig? key, bool expectEncrypted, Span<byte> destination,
        ReadOnlySpan<byte> digest, string path, long offset, bool verifyDigest, StreamedDecryption? streamed = null)
    {
        var digestHex = Convert.ToHexStringLower(digest);
        var kind = Verify(blob, path, digestHex, offset, streamed?.Crc);
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
                if (streamed is not null)
                {
                    // Decrypted in place while the file was read; usable only once the tag verifies.
                    var plain = scratch.Slice(EncryptedHeaderSize, cipherLength);
                    if (!streamed.Finish(blob[28..44]))
                    {
                        plain.Clear();
                        throw new ChunkCorruptException("authentication failed: wrong key or damaged chunk", path, offset, digestHex);
                    }

                    payload = plain;
                }
                else if (kind == BlobKind.Encrypted && cipherLength == destination.Length)
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
        byte[]? compressed = null;
        if (compress && data.Length > 0)
        {
            using var compressor = new Compressor(1);
            var frame = compressor.Wrap(data);
            if (frame.Length < data.Length)
            {
                compressed = frame.ToArray();
            }
        }

        ReadOnlySpan<byte> payload = compressed ?? data;
        byte[] blob;
        if (key is null)
        {
            blob = new byte[PlainHeaderSize + payload.Length];
            (compressed is null ? MagicUncompressed : MagicCompressed).CopyTo(blob, 0);
            payload.CopyTo(blob.AsSpan(PlainHeaderSize));
            BinaryPrimitives.WriteUInt32LittleEndian(blob.AsSpan(8), Crc32.HashToUInt32(blob.AsSpan(PlainHeaderSize)));
            return blob;
        }

        blob = new byte[EncryptedHeaderSize + payload.Length];
        (compressed is null ? MagicEncrypted : MagicEncryptedCompressed).CopyTo(blob, 0);
        RandomNumberGenerator.Fill(blob.AsSpan(12, 16));
        key.Encrypt(blob.AsSpan(12, 16), payload, blob.AsSpan(EncryptedHeaderSize), blob.AsSpan(28, 16));
        BinaryPrimitives.WriteUInt32LittleEndian(blob.AsSpan(8), Crc32.HashToUInt32(blob.AsSpan(EncryptedHeaderSize)));
        return blob;
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

/// <summary>
/// Decrypts an encrypted chunk blob piece by piece while its file is still being read (<see cref="Progress"/> after
/// each piece), so that the cipher runs during the disk's wait instead of after it; the CRC is summed on the way.
/// Nothing decrypted is used before <see cref="DataBlob.DecodeChunkInPlace"/> has checked the CRC and the tag. Where
/// the key's cipher cannot decrypt piecewise, or the blob is not an encrypted one, it does nothing (and the blob is
/// decoded as usual). One thread: the one reading the file.
/// </summary>
public sealed class StreamedDecryption(CryptConfig key)
{
    private readonly System.IO.Hashing.Crc32 crc = new();
    private GcmDecryption? gcm;
    private int done;
    private bool off;

    /// <summary>The first <paramref name="received"/>.Length bytes of the blob are in: decrypt what is new, in place.</summary>
    public void Progress(Span<byte> received)
    {
        if (off)
        {
            return;
        }

        if (gcm is null)
        {
            if (received.Length < DataBlob.EncryptedHeaderSize)
            {
                return;
            }

            if (DataBlob.KindOf(received) is not (BlobKind.Encrypted or BlobKind.EncryptedCompressed) || key.BeginDecrypt(received[12..28]) is not { } begun)
            {
                off = true;
                return;
            }

            gcm = begun;
            done = DataBlob.EncryptedHeaderSize;
        }

        if (received.Length < done)
        {
            off = true; // the caller went back: not a growing prefix
            return;
        }

        var fresh = received[done..];
        crc.Append(fresh);
        gcm.Update(fresh, fresh);
        done = received.Length;
    }

    /// <summary>Whether the whole blob of <paramref name="length"/> bytes went through the decryption.</summary>
    internal bool Covers(int length) => !off && gcm is not null && done == length;

    /// <summary>The CRC of the payload as it was read (before decryption).</summary>
    internal uint Crc => crc.GetCurrentHashAsUInt32();

    internal bool Finish(ReadOnlySpan<byte> tag)
    {
        var ok = gcm!.Finish(tag);
        gcm = null;
        off = true;
        return ok;
    }
}
