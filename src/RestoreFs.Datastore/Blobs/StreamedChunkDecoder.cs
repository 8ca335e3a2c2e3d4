using System.IO.Hashing;
using System.Runtime.InteropServices;

namespace RestoreFs.Datastore;

/// <summary>
/// Decodes a chunk while its file is still being read (the pieces of <see cref="ChunkStore.ReadPieces"/>, or the
/// progress of <see cref="ChunkStore.ReadRented"/> where a step cannot run piecewise): each new
/// piece is summed (CRC), decrypted in place (encrypted chunks, OpenSSL), decompressed straight into the destination
/// (libzstd) or copied there, and hashed by a helper thread as it lands. A cold read then costs about what the disk
/// takes, not the disk's time plus the cipher's, the decoder's and the hash's one after the other.
/// <para>Nothing is trusted before <see cref="Finish"/> has checked, in this order, the CRC, the tag, the frame, the
/// size and the digest — the same checks and messages as decoding the whole blob. On any failure the destination
/// is cleared. Where a step cannot run piecewise (managed cipher, no libzstd, an unexpected kind of blob) the decoder
/// stays out of the way from the first piece on and <see cref="Covers"/> is false: decode the blob as a whole then.</para>
/// </summary>
public sealed unsafe class StreamedChunkDecoder : IDisposable
{
    private readonly CryptConfig? key;
    private readonly bool expectEncrypted;
    private readonly bool verifyDigest;
    private readonly byte[]? destination;
    private readonly byte* native;
    private readonly int length;
    private readonly System.IO.Hashing.Crc32 crc = new();
    private readonly byte[] header = new byte[DataBlob.EncryptedHeaderSize];
    private GCHandle pin;
    private GcmDecryption? gcm;
    private NativeZstd.Decoder? zstd;
    private HashPipeline.Job? hash;
    private InvalidDataException? frameError;
    private long copied;
    private int done;
    private bool started;
    private bool off;

    /// <summary>Encrypted blob in pieces: its CRC is computed only if the tag fails (see <see cref="Finish"/>).</summary>
    private bool crcDeferred;

    /// <summary>Fed through <see cref="Progress"/>: the blob stays in one array, decrypted in place as it arrives, so
    /// its CRC must be summed on the way (the ciphertext is gone afterwards).</summary>
    private bool prefix;

    /// <param name="destination">Receives the chunk's <paramref name="length"/> bytes.</param>
    public StreamedChunkDecoder(CryptConfig? key, bool expectEncrypted, byte[] destination, int length, bool verifyDigest = true)
        : this(key, expectEncrypted, destination, null, destination.Length, length, verifyDigest)
    {
    }

    /// <param name="destination">Receives the chunk's <paramref name="length"/> bytes (memory its owner keeps in place
    /// until this decoder is done).</param>
    public StreamedChunkDecoder(CryptConfig? key, bool expectEncrypted, NativeChunkBuffer destination, int length, bool verifyDigest = true)
        : this(key, expectEncrypted, null, destination.Pointer, destination.Length, length, verifyDigest)
    {
    }

    private StreamedChunkDecoder(CryptConfig? key, bool expectEncrypted, byte[]? array, byte* native, int capacity, int length, bool verifyDigest)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, capacity);
        this.key = key;
        this.expectEncrypted = expectEncrypted;
        destination = array;
        this.native = native;
        this.length = length;
        this.verifyDigest = verifyDigest;
    }

    /// <summary>The destination's bytes from <paramref name="start"/> on, <paramref name="count"/> of them.</summary>
    private Span<byte> Output(long start, int count) =>
        destination is not null ? destination.AsSpan((int)start, count) : new Span<byte>(native + start, count);

    /// <summary>
    /// Reads a chunk file from <paramref name="chunks"/> and decodes it into <paramref name="destination"/> while it
    /// arrives, through a small buffer when every step can run piecewise (OpenSSL's cipher, libzstd); otherwise the
    /// file is read into an array and, where the streamed decode cannot cover the blob, the whole blob is decoded
    /// afterwards (in place: the array is scratch). Such an array goes to <paramref name="release"/> once done with,
    /// also on failure.
    /// </summary>
    public static void ReadAndDecode(ChunkStore chunks, ReadOnlySpan<byte> digest, long offset, CryptConfig? key, bool encrypted,
        NativeChunkBuffer destination, int length, bool verifyDigest, Action<byte[]> release)
    {
        if (NativeZstd.Available && (!encrypted || key is { DecryptsInPlace: true }))
        {
            // Every step can run piecewise: the file goes through one small buffer, no chunk-sized array is held.
            using var pieces = new StreamedChunkDecoder(key, encrypted, destination, length, verifyDigest);
            var total = chunks.ReadPieces(digest, offset, pieces.Piece);
            if (pieces.Covers(total))
            {
                var copy = digest.ToArray();
                pieces.FinishPieces(total, digest, chunks.PathOf(digest), offset, recountCrc: () => RecountCrc(chunks, copy, offset));
                return;
            }

            // The decoder stepped aside (a blob of an unexpected kind, or too short to hold a header): read it whole
            // below, where the whole-blob decode says what is wrong with it.
        }

        using var streamed = new StreamedChunkDecoder(key, encrypted, destination, length, verifyDigest);
        var blob = chunks.ReadRented(digest, offset, out var blobLength, streamed.Progress);
        try
        {
            var path = chunks.PathOf(digest);
            if (streamed.Covers(blobLength))
            {
                streamed.Finish(blob.AsSpan(0, blobLength), digest, path, offset);
            }
            else
            {
                DataBlob.DecodeChunkInPlace(blob.AsSpan(0, blobLength), key, encrypted, destination.Slice(0, length), digest, path, offset,
                    verifyDigest);
            }
        }
        finally
        {
            release(blob);
        }
    }

    /// <summary>The CRC of an encrypted chunk file's payload, read again; null when it cannot be read (or is too short
    /// to have one): the tag's failure is then reported as it is.</summary>
    private static uint? RecountCrc(ChunkStore chunks, byte[] digest, long offset)
    {
        try
        {
            var blob = chunks.Read(digest, offset);
            return blob.Length >= DataBlob.EncryptedHeaderSize ? Crc32.HashToUInt32(blob.AsSpan(DataBlob.EncryptedHeaderSize)) : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or DatastoreException)
        {
            return null;
        }
    }

    /// <summary>The first <paramref name="received"/>.Length bytes of the blob are in (a growing prefix of one buffer).</summary>
    public void Progress(Span<byte> received)
    {
        if (off || (!started && received.Length < DataBlob.EncryptedHeaderSize))
        {
            return; // stepped aside, or not yet a header's worth (a blob this small is decoded whole)
        }

        if (received.Length < done)
        {
            throw new InvalidOperationException("the streamed chunk went back: progress must report a growing prefix");
        }

        prefix = true;
        Piece(received[done..]);
    }

    /// <summary>
    /// The next piece of the blob (see <see cref="ChunkStore.ReadPieces"/>): pieces arrive in order and each is seen
    /// once, so only the header is kept (for <see cref="FinishPieces"/>). A first piece shorter than an encrypted
    /// header makes the decoder step aside.
    /// </summary>
    public void Piece(Span<byte> piece)
    {
        if (off)
        {
            return;
        }

        if (!started)
        {
            if (piece.Length < DataBlob.EncryptedHeaderSize)
            {
                off = true;
                return;
            }

            Start(piece);
            if (off)
            {
                return;
            }

            piece[..DataBlob.EncryptedHeaderSize].CopyTo(header);
            var skip = done; // the header of this kind of blob
            done = piece.Length;
            Consume(piece[skip..]);
            return;
        }

        done += piece.Length;
        Consume(piece);
    }

    /// <summary><see cref="Finish"/> for a blob of <paramref name="blobLength"/> bytes that came in pieces.</summary>
    /// <param name="recountCrc">The CRC of the blob's payload from the file read again: asked only when an encrypted
    /// blob's tag fails, so that a damaged file is reported as a CRC mismatch (the pieces are gone by then).</param>
    public void FinishPieces(int blobLength, ReadOnlySpan<byte> digest, string path, long offset, Func<uint?>? recountCrc = null) =>
        Finish(header, blobLength, digest, path, offset, recountCrc);

    private void Consume(Span<byte> fresh)
    {
        if (!crcDeferred)
        {
            crc.Append(fresh);
        }

        if (gcm is not null && zstd is null)
        {
            // Encrypted, not compressed (incompressible data): decrypt straight into the destination instead of in
            // place and then copying — the copy sat on a cold read's critical path next to the digest helper. Bytes
            // past the chunk's length (a damaged blob, refused by Finish) still go through the cipher for the tag.
            var room = (int)Math.Clamp(length - copied, 0, fresh.Length);
            gcm.Update(fresh[..room], Output(Math.Min(copied, length), room));
            if (room < fresh.Length)
            {
                gcm.Update(fresh[room..], fresh[room..]);
            }

            copied += fresh.Length;
            hash?.Written((int)Math.Min(copied, length));
            return;
        }

        gcm?.Update(fresh, fresh);
        if (frameError is not null)
        {
            return;
        }

        if (zstd is not null)
        {
            try
            {
                zstd.Feed(fresh);
            }
            catch (InvalidDataException e)
            {
                frameError = e; // reported by Finish, after the CRC and the tag (which may explain it)
            }

            hash?.Written(zstd.Written);
        }
        else
        {
            var room = (int)Math.Clamp(length - copied, 0, fresh.Length);
            fresh[..room].CopyTo(Output(Math.Min(copied, length), room));
            copied += fresh.Length;
            hash?.Written((int)Math.Min(copied, length));
        }
    }

    /// <summary>Whether the whole blob of <paramref name="blobLength"/> bytes went through this decoder.</summary>
    public bool Covers(int blobLength) => started && !off && done == blobLength;

    /// <summary>
    /// Checks everything (see the class) for the blob the progress reported; afterwards the destination holds the
    /// verified chunk. Throws <see cref="ChunkCorruptException"/> naming the chunk otherwise.
    /// </summary>
    public void Finish(ReadOnlySpan<byte> blob, ReadOnlySpan<byte> digest, string path, long offset) => Finish(blob, blob.Length, digest, path, offset, null);

    /// <param name="head">The blob, or at least its header (the magic, the stored CRC, IV and tag).</param>
    private void Finish(ReadOnlySpan<byte> head, int blobLength, ReadOnlySpan<byte> digest, string path, long offset, Func<uint?>? recountCrc)
    {
        var digestHex = Convert.ToHexStringLower(digest);
        var ok = false;
        try
        {
            if (!Covers(blobLength))
            {
                throw new InvalidOperationException("the streamed decode did not see the whole blob; decode it whole");
            }

            DataBlob.VerifyHeader(head, path, digestHex, offset);
            if (!crcDeferred)
            {
                DataBlob.CheckCrc(head, crc.GetCurrentHashAsUInt32(), path, digestHex, offset);
            }

            if (gcm is not null)
            {
                var tagOk = gcm.Finish(head[28..44]);
                gcm = null;
                if (!tagOk)
                {
                    // The tag covers every byte the CRC does (the ciphertext) and more, so the CRC is only summed now, to
                    // tell a damaged file (CRC mismatch, as it is reported for every other blob) from a wrong key.
                    if (crcDeferred && recountCrc?.Invoke() is { } actual)
                    {
                        DataBlob.CheckCrc(head, actual, path, digestHex, offset);
                    }

                    throw new ChunkCorruptException("authentication failed: wrong key or damaged chunk", path, offset, digestHex);
                }
            }

            if (zstd is not null)
            {
                if (frameError is not null)
                {
                    throw new ChunkCorruptException($"zstd decompression failed: {frameError.Message}", path, offset, digestHex, frameError);
                }

                if (!zstd.Ended)
                {
                    throw new ChunkCorruptException("zstd decompression failed: truncated zstd frame", path, offset, digestHex);
                }

                if (zstd.Written != length)
                {
                    throw new ChunkCorruptException($"chunk decompresses to {zstd.Written} bytes, the index expects {length}", path, offset, digestHex);
                }
            }
            else if (copied != length)
            {
                throw new ChunkCorruptException($"chunk holds {copied} bytes, the index expects {length}", path, offset, digestHex);
            }

            if (verifyDigest)
            {
                Span<byte> actual = stackalloc byte[32];
                if (hash is not null)
                {
                    hash.Complete(length, expectEncrypted ? key!.IdKey : [], actual);
                    hash = null;
                }
                else
                {
                    var content = Output(0, length);
                    CryptConfig.ChunkDigest(expectEncrypted ? key : null, content).CopyTo(actual);
                }

                if (!actual.SequenceEqual(digest))
                {
                    throw new ChunkCorruptException($"digest mismatch (content hashes to {Convert.ToHexStringLower(actual)})", path, offset, digestHex);
                }
            }

            ok = true;
        }
        finally
        {
            Dispose();
            if (!ok)
            {
                Output(0, length).Clear();
            }
        }
    }

    public void Dispose()
    {
        hash?.Abandon();
        hash = null;
        zstd?.Dispose();
        zstd = null;
        gcm = null;
        if (pin.IsAllocated)
        {
            pin.Free();
        }
    }

    private void Start(ReadOnlySpan<byte> received)
    {
        var kind = DataBlob.KindOf(received);
        var encrypted = kind is BlobKind.Encrypted or BlobKind.EncryptedCompressed;
        var compressed = kind is BlobKind.Compressed or BlobKind.EncryptedCompressed;
        if (kind is null || encrypted != expectEncrypted || (compressed && !NativeZstd.Available) || (encrypted && key is null))
        {
            off = true; // the whole-blob decode reports what is wrong
            return;
        }

        if (encrypted && (gcm = key!.BeginDecrypt(received[12..28])) is null)
        {
            off = true; // no piecewise decryption on this path
            return;
        }

        // An encrypted blob's tag authenticates its whole payload: a CRC summed beside it would cost a pass over every
        // byte (about 4 % of an encrypted read's CPU) to learn nothing the tag does not say. In pieces, it is summed from
        // the file read again if the tag fails.
        crcDeferred = encrypted && !prefix;

        byte* output;
        if (destination is not null)
        {
            pin = GCHandle.Alloc(destination, GCHandleType.Pinned);
            output = (byte*)pin.AddrOfPinnedObject();
        }
        else
        {
            output = native;
        }

        if (compressed)
        {
            zstd = new NativeZstd.Decoder(output, length);
        }

        if (verifyDigest && length >= HashPipeline.MinimumLength)
        {
            hash = HashPipeline.Start(output, length);
        }

        done = encrypted ? DataBlob.EncryptedHeaderSize : DataBlob.PlainHeaderSize;
        started = true;
    }
}

/// <summary>
/// The first chunk decode of a process loads libzstd and binds its functions, starts the hashing threads and maps a
/// buffer — about a millisecond on top of the decode itself, which fell on a fresh mount's first read. <see cref="Prepare"/>
/// decodes one small made-up chunk through the same path, so a mount can pay this on a spare core while it starts.
/// </summary>
public static class ChunkDecoding
{
    /// <summary>Decodes and verifies a 1 MiB chunk of zeros made here (no store is read). Failures are thrown.</summary>
    public static void Prepare()
    {
        var chunk = new byte[HashPipeline.MinimumLength];
        var blob = DataBlob.Encode(chunk, null, compress: true);
        var digest = CryptConfig.ChunkDigest(null, chunk);
        using var buffer = new NativeChunkBuffer(chunk.Length);
        using var decoder = new StreamedChunkDecoder(null, false, buffer, chunk.Length);
        decoder.Piece(blob);
        decoder.FinishPieces(blob.Length, digest, "(start-up check)", 0);
        if (!buffer.Span.SequenceEqual(chunk))
        {
            throw new InvalidOperationException("the start-up chunk decoded to other bytes");
        }
    }
}
