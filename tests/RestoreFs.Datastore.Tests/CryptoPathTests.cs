using System.Security.Cryptography;
using RestoreFs.Datastore;
using RestoreFs.TestSupport;

namespace RestoreFs.Datastore.Tests;

/// <summary>
/// The two AES-256-GCM paths (OpenSSL libcrypto through P/Invoke, BouncyCastle in managed code) agree byte for byte,
/// pass the PBS vectors, and refuse tampered input. Each test picks its path per <see cref="CryptConfig"/>, so nothing
/// depends on the process environment.
/// </summary>
public sealed class CryptoPathTests : IDisposable
{
    private static readonly DateTimeOffset T0 = DateTimeOffset.Parse("2026-03-04T05:06:07Z");
    private static readonly byte[] Key0To31 = Enumerable.Range(0, 32).Select(i => (byte)i).ToArray();
    private static readonly byte[] Iv0To15 = Enumerable.Range(0, 16).Select(i => (byte)i).ToArray();
    private readonly TempDirectory dir = new("restorefs-crypto");

    public static TheoryData<GcmImplementation> Paths => new() { GcmImplementation.OpenSsl, GcmImplementation.Managed };

    public static TheoryData<int> Sizes => new() { 0, 1, 15, 16, 17, 4 * 1024 * 1024 };

    [Fact]
    public void OpenSsl_loads_passes_its_self_test_and_is_the_default_choice()
    {
        Assert.True(CryptConfig.OpenSslAvailable,
            $"libcrypto.so.3 is not usable ({GcmCiphers.Select(null).Reason}); install libssl3 (scripts/install-deps.sh)");
        Assert.Null(GcmCiphers.SelfTest(GcmCiphers.OpenSsl!));
        Assert.Null(GcmCiphers.SelfTest(ManagedGcm.Instance));
        Assert.Equal(GcmImplementation.OpenSsl, GcmCiphers.Select(null).Cipher.Implementation);
        Assert.Equal(GcmImplementation.OpenSsl, GcmCiphers.Select("").Cipher.Implementation);
    }

    [Fact]
    public void Environment_switch_forces_a_path_and_rejects_unknown_values()
    {
        Assert.Equal(GcmImplementation.OpenSsl, GcmCiphers.Select("openssl").Cipher.Implementation);
        Assert.Equal(GcmImplementation.OpenSsl, GcmCiphers.Select(" OpenSSL ").Cipher.Implementation);
        Assert.Equal(GcmImplementation.Managed, GcmCiphers.Select("managed").Cipher.Implementation);
        var e = Assert.Throws<DatastoreException>(() => GcmCiphers.Select("fast"));
        Assert.Contains("RESTOREFS_CRYPTO=fast", e.Message, StringComparison.Ordinal);
        Assert.Contains("openssl or managed", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Managed_path_uses_the_aes_ni_engine_on_this_cpu()
    {
        Assert.Equal(System.Runtime.Intrinsics.X86.Aes.IsSupported, ManagedGcm.UsesAesNi);
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void Pbs_blob_vector_is_byte_exact(GcmImplementation path)
    {
        var key = Key(Key0To31, path);
        Assert.Equal(path, key.CipherImplementation);
        var blob = DataBlob.EncodeEncryptedWithIv("hello"u8, key, Iv0To15);
        Assert.Equal("7b6785be222d4cf0784eea93000102030405060708090a0b0c0d0e0f0c84c431837297c0b19e77e5608162ea0f09cc1a56",
            Convert.ToHexStringLower(blob));
        Assert.Equal("hello"u8.ToArray(), DataBlob.Decode(blob, key, "vector"));
    }

    [Theory]
    [MemberData(nameof(Sizes))]
    public void Both_paths_give_identical_ciphertext_and_tag_and_decrypt_each_other(int size)
    {
        var raw = RandomNumberGenerator.GetBytes(32);
        var iv = RandomNumberGenerator.GetBytes(16);
        var data = RandomNumberGenerator.GetBytes(size);
        var fast = Key(raw, GcmImplementation.OpenSsl);
        var managed = Key(raw, GcmImplementation.Managed);
        var (c1, t1) = Encrypt(fast, iv, data);
        var (c2, t2) = Encrypt(managed, iv, data);
        Assert.Equal(c1, c2);
        Assert.Equal(t1, t2);
        if (size >= 15)
        {
            // Random data: a ciphertext of a byte or two equals its plaintext by chance (1 in 256 for one byte), so
            // only lengths where that cannot happen in practice (2^-120) are checked; the tag and the round trips
            // below hold for every length.
            Assert.NotEqual(data, c1);
        }

        var plain = new byte[size];
        Assert.True(managed.TryDecrypt(iv, t1, c1, plain));
        Assert.Equal(data, plain);
        Array.Clear(plain);
        Assert.True(fast.TryDecrypt(iv, t2, c2, plain));
        Assert.Equal(data, plain);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(16)]
    [InlineData(1000)]
    public void OpenSsl_fed_in_small_pieces_matches_one_piece(int piece)
    {
        var openSsl = GcmCiphers.OpenSsl;
        Assert.NotNull(openSsl);
        var cut = ((OpenSslGcm)openSsl).WithMaxPiece(piece);
        var raw = RandomNumberGenerator.GetBytes(32);
        var iv = RandomNumberGenerator.GetBytes(16);
        var data = RandomNumberGenerator.GetBytes(piece * 37 + 5);
        var (c1, t1) = (new byte[data.Length], new byte[16]);
        var (c2, t2) = (new byte[data.Length], new byte[16]);
        openSsl.Encrypt(raw, iv, data, c1, t1);
        cut.Encrypt(raw, iv, data, c2, t2);
        Assert.Equal(c1, c2);
        Assert.Equal(t1, t2);
        var plain = new byte[data.Length];
        Assert.True(cut.TryDecrypt(raw, iv, t1, c1, plain));
        Assert.Equal(data, plain);
    }

    [Theory]
    [InlineData(GcmImplementation.OpenSsl, "ciphertext")]
    [InlineData(GcmImplementation.OpenSsl, "tag")]
    [InlineData(GcmImplementation.OpenSsl, "iv")]
    [InlineData(GcmImplementation.OpenSsl, "key")]
    [InlineData(GcmImplementation.Managed, "ciphertext")]
    [InlineData(GcmImplementation.Managed, "tag")]
    [InlineData(GcmImplementation.Managed, "iv")]
    [InlineData(GcmImplementation.Managed, "key")]
    public void A_flipped_bit_or_wrong_key_fails_and_hands_out_no_plaintext(GcmImplementation path, string what)
    {
        var raw = RandomNumberGenerator.GetBytes(32);
        var iv = RandomNumberGenerator.GetBytes(16);
        var data = RandomNumberGenerator.GetBytes(100_003);
        var key = Key(raw, path);
        var (ciphertext, tag) = Encrypt(key, iv, data);
        var bit = RandomNumberGenerator.GetInt32(8);
        switch (what)
        {
            case "ciphertext":
                ciphertext[RandomNumberGenerator.GetInt32(ciphertext.Length)] ^= (byte)(1 << bit);
                break;
            case "tag":
                tag[RandomNumberGenerator.GetInt32(16)] ^= (byte)(1 << bit);
                break;
            case "iv":
                iv[RandomNumberGenerator.GetInt32(16)] ^= (byte)(1 << bit);
                break;
            default:
                raw[RandomNumberGenerator.GetInt32(32)] ^= (byte)(1 << bit);
                key = Key(raw, path);
                break;
        }

        var plain = Enumerable.Repeat((byte)0xaa, data.Length).ToArray();
        Assert.False(key.TryDecrypt(iv, tag, ciphertext, plain));
        Assert.True(plain.All(b => b == 0), "the output buffer must be cleared when the tag does not verify");
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void A_damaged_encrypted_chunk_is_refused_naming_the_chunk(GcmImplementation path)
    {
        var key = Key(RandomNumberGenerator.GetBytes(32), path);
        var data = RandomNumberGenerator.GetBytes(70_000);
        var blob = DataBlob.Encode(data, key, compress: false);
        var digest = key.KeyedDigest(data);
        var output = new byte[data.Length];
        DataBlob.DecodeChunk(blob, key, true, output, digest, "c", 0);
        Assert.Equal(data, output);

        blob[DataBlob.EncryptedHeaderSize + 5] ^= 0x10;
        var crc = System.IO.Hashing.Crc32.HashToUInt32(blob.AsSpan(DataBlob.EncryptedHeaderSize));
        BitConverter.TryWriteBytes(blob.AsSpan(8), crc); // the CRC matches: only the tag can catch it
        Array.Fill(output, (byte)0x55);
        var e = Assert.Throws<ChunkCorruptException>(() => DataBlob.DecodeChunk(blob, key, true, output, digest, "c", 0));
        Assert.Contains("authentication failed", e.Message, StringComparison.Ordinal);
        Assert.Contains(Convert.ToHexStringLower(digest), e.Message, StringComparison.Ordinal);
        Assert.True(output.All(b => b == 0));
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void In_place_decoding_of_a_compressed_encrypted_chunk_gives_the_same_bytes_and_refuses_the_same_damage(GcmImplementation path)
    {
        var key = Key(RandomNumberGenerator.GetBytes(32), path);
        var data = new byte[1 << 20];
        RandomNumberGenerator.Fill(data.AsSpan(0, 1 << 18)); // compressible, so the payload is zstd inside GCM
        var blob = DataBlob.Encode(data, key, compress: true);
        Assert.True(blob.Length < data.Length);
        var digest = key.KeyedDigest(data);
        var copied = new byte[data.Length];
        DataBlob.DecodeChunk(blob, key, true, copied, digest, "c", 0);
        var scratch = blob.ToArray();
        var inPlace = new byte[data.Length];
        DataBlob.DecodeChunkInPlace(scratch, key, true, inPlace, digest, "c", 0);
        Assert.Equal(data, copied);
        Assert.Equal(data, inPlace);
        Assert.Equal(path == GcmImplementation.OpenSsl, key.DecryptsInPlace);

        blob[DataBlob.EncryptedHeaderSize + 100] ^= 0x01;
        BitConverter.TryWriteBytes(blob.AsSpan(8), System.IO.Hashing.Crc32.HashToUInt32(blob.AsSpan(DataBlob.EncryptedHeaderSize)));
        var e = Assert.Throws<ChunkCorruptException>(() => DataBlob.DecodeChunkInPlace(blob.ToArray(), key, true, new byte[data.Length], digest, "c", 0));
        Assert.Contains("authentication failed", e.Message, StringComparison.Ordinal);
    }

    public static TheoryData<GcmImplementation?, bool> StreamedKinds => new()
    {
        { null, true }, { null, false },
        { GcmImplementation.OpenSsl, true }, { GcmImplementation.OpenSsl, false },
        { GcmImplementation.Managed, true }, { GcmImplementation.Managed, false },
    };

    /// <summary>
    /// A chunk decoded while its file arrives (every kind of blob: plain or encrypted, compressed or not) equals the
    /// whole-blob decode for any piece size, and refuses a bad CRC, tag, frame, size or digest with the same message.
    /// </summary>
    [Theory]
    [MemberData(nameof(StreamedKinds))]
    public void A_chunk_decoded_while_its_file_arrives_equals_the_whole_decode_and_refuses_damage(GcmImplementation? path, bool compress)
    {
        var key = path is { } p ? Key(RandomNumberGenerator.GetBytes(32), p) : null;
        var encrypted = key is not null;
        var data = new byte[(4 << 20) - 12345];
        RandomNumberGenerator.Fill(data.AsSpan(0, compress ? 1 << 18 : data.Length));
        var blob = DataBlob.Encode(data, key, compress);
        Assert.Equal((encrypted, compress) switch
        {
            (true, true) => BlobKind.EncryptedCompressed,
            (true, false) => BlobKind.Encrypted,
            (false, true) => BlobKind.Compressed,
            _ => BlobKind.Uncompressed,
        }, DataBlob.KindOf(blob));
        var digest = key?.KeyedDigest(data) ?? SHA256.HashData(data);
        // Streams wherever each step can run piecewise: the managed cipher cannot decrypt in pieces.
        var streams = path != GcmImplementation.Managed;

        // Both ways of feeding the decoder: a growing prefix of one array, and pieces through one small buffer that
        // is overwritten after each (what ChunkStore.ReadPieces does; a first piece shorter than a header steps aside).
        byte[] Decode(byte[] source, int piece, byte[]? expectDigest = null, int length = -1)
        {
            byte[]? viaPrefix = null;
            ChunkCorruptException? refused = null;
            try
            {
                viaPrefix = DecodeWith(source, piece, pieces: false, expectDigest, length);
            }
            catch (ChunkCorruptException e)
            {
                refused = e;
            }

            // Both ways refuse damage with the same message (the pieces way sums an encrypted blob's CRC afterwards).
            byte[] viaPieces;
            try
            {
                viaPieces = DecodeWith(source, piece, pieces: true, expectDigest, length);
            }
            catch (ChunkCorruptException e)
            {
                Assert.Equal(refused?.Message, e.Message);
                throw;
            }

            Assert.Null(refused);
            Assert.Equal(viaPrefix, viaPieces);
            return viaPieces;
        }

        byte[] DecodeWith(byte[] source, int piece, bool pieces, byte[]? expectDigest, int length)
        {
            var scratch = source.ToArray();
            var output = new byte[data.Length + 100];
            length = length < 0 ? data.Length : length;
            using var streamed = new StreamedChunkDecoder(key, encrypted, output, length);
            var small = new byte[piece];
            for (int at = 0, done = Math.Min(piece, scratch.Length); ; at = done, done = Math.Min(done + piece, scratch.Length))
            {
                if (pieces)
                {
                    source.AsSpan(at, done - at).CopyTo(small);
                    streamed.Piece(small.AsSpan(0, done - at));
                    small.AsSpan().Fill(0xEE); // the buffer is reused: nothing may be read from it later
                }
                else
                {
                    streamed.Progress(scratch.AsSpan(0, done));
                }

                if (done == scratch.Length)
                {
                    break;
                }
            }

            Assert.Equal(streams && !(pieces && piece < DataBlob.EncryptedHeaderSize), streamed.Covers(scratch.Length));
            if (streamed.Covers(scratch.Length))
            {
                try
                {
                    if (pieces)
                    {
                        // The pieces are gone by the end: an encrypted blob's CRC is summed from the "file" again,
                        // and only if its tag fails.
                        var recounts = 0;
                        try
                        {
                            streamed.FinishPieces(scratch.Length, expectDigest ?? digest, "c", 0, () =>
                            {
                                recounts++;
                                return System.IO.Hashing.Crc32.HashToUInt32(source.AsSpan(DataBlob.EncryptedHeaderSize));
                            });
                            Assert.Equal(0, recounts); // a chunk that decodes is never read twice
                        }
                        catch (ChunkCorruptException)
                        {
                            Assert.True(recounts <= (encrypted ? 1 : 0), $"CRC summed again {recounts} times");
                            throw;
                        }
                    }
                    else
                    {
                        streamed.Finish(scratch, expectDigest ?? digest, "c", 0);
                    }
                }
                catch (ChunkCorruptException)
                {
                    Assert.All(output, b => Assert.Equal(0, b)); // nothing unverified stays behind
                    throw;
                }
            }
            else
            {
                DataBlob.DecodeChunkInPlace(scratch, key, encrypted, output.AsSpan(0, length), expectDigest ?? digest, "c", 0);
            }

            return output.AsSpan(0, length).ToArray();
        }

        foreach (var piece in new[] { 7, 4096, ChunkStore.ProgressPiece, blob.Length })
        {
            Assert.Equal(data, Decode(blob, piece));
        }

        var header = encrypted ? DataBlob.EncryptedHeaderSize : DataBlob.PlainHeaderSize;
        var flipped = blob.ToArray();
        flipped[header + 1000] ^= 0x04;
        Assert.Contains("CRC mismatch", Assert.Throws<ChunkCorruptException>(() => Decode(flipped, 65536)).Message, StringComparison.Ordinal);
        BitConverter.TryWriteBytes(flipped.AsSpan(8), System.IO.Hashing.Crc32.HashToUInt32(flipped.AsSpan(header)));
        var damage = Assert.Throws<ChunkCorruptException>(() => Decode(flipped, 65536)).Message;
        // Byte 1000 of the payload lies in the random head (a raw block when compressed): only the digest can tell.
        Assert.Contains(encrypted ? "authentication failed" : "digest mismatch", damage, StringComparison.Ordinal);
        if (encrypted)
        {
            var badTag = blob.ToArray();
            badTag[30] ^= 0x80; // in the tag: outside the CRC
            Assert.Contains("authentication failed", Assert.Throws<ChunkCorruptException>(() => Decode(badTag, 65536)).Message, StringComparison.Ordinal);
        }

        var wrongDigest = digest.ToArray();
        wrongDigest[0] ^= 1;
        Assert.Contains("digest mismatch", Assert.Throws<ChunkCorruptException>(() => Decode(blob, 65536, wrongDigest)).Message, StringComparison.Ordinal);
        var sizeMessage = Assert.Throws<ChunkCorruptException>(() => Decode(blob, 65536, length: data.Length + 1)).Message;
        Assert.Contains(compress ? "decompresses to" : "the index expects", sizeMessage, StringComparison.Ordinal);
        // A chunk longer than the index says: the bytes past its length still go through the cipher (the tag holds),
        // and the size is what is refused.
        var longer = Assert.Throws<ChunkCorruptException>(() => Decode(blob, 65536, length: data.Length - 5000)).Message;
        Assert.Contains(compress ? "decompresses to" : "the index expects", longer, StringComparison.Ordinal);
        if (compress && !encrypted)
        {
            // A frame cut short (CRC made to match): the decoder says so rather than serving a partial chunk.
            var cut = blob.AsSpan(0, blob.Length - 100).ToArray();
            BitConverter.TryWriteBytes(cut.AsSpan(8), System.IO.Hashing.Crc32.HashToUInt32(cut.AsSpan(header)));
            Assert.Contains("zstd", Assert.Throws<ChunkCorruptException>(() => Decode(cut, 65536)).Message, StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData(GcmImplementation.OpenSsl, GcmImplementation.OpenSsl)]
    [InlineData(GcmImplementation.Managed, GcmImplementation.Managed)]
    [InlineData(GcmImplementation.OpenSsl, GcmImplementation.Managed)]
    [InlineData(GcmImplementation.Managed, GcmImplementation.OpenSsl)]
    public void Encrypted_backup_written_on_one_path_reads_back_on_the_other(GcmImplementation writer, GcmImplementation reader)
    {
        var raw = Enumerable.Range(0, 32).Select(i => (byte)(i * 11)).ToArray();
        var chunk = BackupWriter.DefaultChunkSize;
        var data = DatastoreBuilder.Data(3 * chunk + 4097, 17, 1);
        var text = System.Text.Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("compressible text ", chunk / 18)));
        text.CopyTo(data, 2 * chunk);
        var store = dir.Combine("store");
        var snap = DatastoreBuilder.Write(store, "vm/300", T0, new Dictionary<string, byte[]> { ["drive-scsi0"] = data }, Key(raw, writer),
            blobs: new Dictionary<string, byte[]> { ["qemu-server.conf"] = "memory: 512\n"u8.ToArray() });
        var key = Key(raw, reader);
        var datastore = DatastoreReader.Open(store);
        Assert.True(datastore.ReadManifest(snap, key).IsEncrypted);
        Assert.Equal("memory: 512\n"u8.ToArray(), datastore.ReadBlob(snap, "qemu-server.conf.blob", key));
        using var image = datastore.OpenImage(snap, "drive-scsi0.img", key);
        var copy = new byte[data.Length];
        Assert.Equal(data.Length, image.Read(0, copy));
        Assert.Equal(data, copy);
        Assert.True(image.IsZeroChunk(1));
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void Encrypted_backup_read_with_the_wrong_key_fails(GcmImplementation path)
    {
        var data = DatastoreBuilder.Data(100_000, 5);
        var store = dir.Combine("store");
        var snap = DatastoreBuilder.Write(store, "vm/301", T0, new Dictionary<string, byte[]> { ["d"] = data }, Key(RandomNumberGenerator.GetBytes(32), path));
        var wrong = Key(RandomNumberGenerator.GetBytes(32), path);
        var datastore = DatastoreReader.Open(store);
        Assert.ThrowsAny<DatastoreException>(() =>
        {
            using var image = datastore.OpenImage(snap, "d", wrong);
            image.Read(0, new byte[data.Length]);
        });
    }

    /// <summary>
    /// Through a real store and the image reader (the chunk file read in pieces, where an encrypted blob's CRC is only
    /// summed when its tag fails): a flipped ciphertext byte is a CRC mismatch naming the chunk; the same damage with
    /// the CRC made to match is the tag's failure; the chunks around it still read.
    /// </summary>
    [Theory]
    [MemberData(nameof(Paths))]
    public void A_damaged_encrypted_chunk_file_reads_as_a_crc_mismatch_or_a_failed_tag(GcmImplementation path)
    {
        var chunk = BackupWriter.DefaultChunkSize;
        var data = DatastoreBuilder.Data(3 * chunk, 23);
        var store = dir.Combine("store");
        var key = Key(RandomNumberGenerator.GetBytes(32), path);
        var snap = DatastoreBuilder.Write(store, "vm/302", T0, new Dictionary<string, byte[]> { ["d"] = data }, key);
        var datastore = DatastoreReader.Open(store);
        var (index, _) = datastore.OpenFixedIndex(snap, "d", key);
        var file = datastore.Chunks.PathOf(index.Digest(1));
        var original = File.ReadAllBytes(file);

        string Refusal()
        {
            using var image = datastore.OpenImage(snap, "d", key, new ImageReaderOptions(ReadAheadChunks: 0));
            var buffer = new byte[chunk];
            Assert.Equal(chunk, image.Read(0, buffer));
            Assert.Equal(data.AsSpan(0, chunk).ToArray(), buffer);
            Assert.Equal(chunk, image.Read(2L * chunk, buffer));
            return Assert.Throws<ChunkCorruptException>(() => image.Read(chunk + 4096, buffer.AsSpan(0, 4096))).Message;
        }

        var damaged = original.ToArray();
        damaged[DataBlob.EncryptedHeaderSize + 70_000] ^= 0x20;
        File.WriteAllBytes(file, damaged);
        var crc = Refusal();
        Assert.Contains("CRC mismatch", crc, StringComparison.Ordinal);
        Assert.Contains(index.DigestHex(1), crc, StringComparison.Ordinal);

        BitConverter.TryWriteBytes(damaged.AsSpan(8), System.IO.Hashing.Crc32.HashToUInt32(damaged.AsSpan(DataBlob.EncryptedHeaderSize)));
        File.WriteAllBytes(file, damaged);
        var tag = Refusal();
        Assert.Contains("authentication failed", tag, StringComparison.Ordinal);
        Assert.Contains(index.DigestHex(1), tag, StringComparison.Ordinal);
    }

    public void Dispose() => dir.Dispose();

    private static CryptConfig Key(byte[] raw, GcmImplementation path) => CryptConfig.FromRawKey(raw).WithCipher(path);

    private static (byte[] Ciphertext, byte[] Tag) Encrypt(CryptConfig key, byte[] iv, byte[] data)
    {
        var ciphertext = new byte[data.Length];
        var tag = new byte[16];
        key.Encrypt(iv, data, ciphertext, tag);
        return (ciphertext, tag);
    }
}
