using System.Buffers.Binary;
using System.IO.Hashing;
using System.Security.Cryptography;
using RestoreFs.Datastore;

namespace RestoreFs.Datastore.Tests;

/// <summary>Compressed chunks are decompressed and hashed at once; every way a frame can be wrong still fails.</summary>
public sealed class PipelineTests
{
    private const int Chunk = BackupWriter.DefaultChunkSize;

    private static byte[] Compressible(int length, int seed)
    {
        var random = new Random(seed);
        var data = new byte[length];
        for (var i = 0; i < length; i += 64)
        {
            var word = (byte)random.Next(32, 96);
            data.AsSpan(i, Math.Min(64, length - i)).Fill(word);
        }

        data[length / 2] ^= 0x5a;
        return data;
    }

    /// <summary>A zstd blob with <paramref name="payload"/> as its frame and a correct CRC.</summary>
    private static byte[] Blob(ReadOnlySpan<byte> payload)
    {
        var blob = new byte[12 + payload.Length];
        DataBlob.MagicCompressed.CopyTo(blob, 0);
        BinaryPrimitives.WriteUInt32LittleEndian(blob.AsSpan(8), Crc32.HashToUInt32(payload));
        payload.CopyTo(blob.AsSpan(12));
        return blob;
    }

    [Theory]
    [InlineData(Chunk)]
    [InlineData(Chunk - 12345)]
    [InlineData(1 << 20)]
    public void Compressed_chunks_decode_with_their_digest(int length)
    {
        var data = Compressible(length, length);
        var blob = DataBlob.Encode(data, null, compress: true);
        Assert.Equal(DataBlob.MagicCompressed, blob[..8]);
        var output = new byte[length];
        DataBlob.DecodeChunk(blob, null, false, output, SHA256.HashData(data), "c", 0);
        Assert.Equal(data, output);
    }

    [Fact]
    public void Encrypted_compressed_chunks_use_the_keyed_digest()
    {
        var key = CryptConfig.FromRawKey(Enumerable.Repeat((byte)3, 32).ToArray());
        var data = Compressible(Chunk, 1);
        var blob = DataBlob.Encode(data, key, compress: true);
        var output = new byte[Chunk];
        DataBlob.DecodeChunk(blob, key, true, output, key.KeyedDigest(data), "c", 0);
        Assert.Equal(data, output);
        var plainDigest = SHA256.HashData(data);
        var e = Assert.Throws<ChunkCorruptException>(() => DataBlob.DecodeChunk(blob, key, true, new byte[Chunk], plainDigest, "c", 0));
        Assert.Contains("digest mismatch", e.Message);
    }

    [Fact]
    public void Wrong_digest_truncated_frame_oversized_frame_and_trailing_bytes_fail()
    {
        var data = Compressible(Chunk, 2);
        var blob = DataBlob.Encode(data, null, compress: true);
        var frame = blob.AsSpan(12).ToArray();
        var digest = SHA256.HashData(data);

        var wrong = (byte[])digest.Clone();
        wrong[0] ^= 1;
        Assert.Contains("digest mismatch", Assert.Throws<ChunkCorruptException>(
            () => DataBlob.DecodeChunk(blob, null, false, new byte[Chunk], wrong, "c", 7)).Message);

        var truncated = Blob(frame.AsSpan(0, frame.Length - 10));
        Assert.Contains("zstd", Assert.Throws<ChunkCorruptException>(
            () => DataBlob.DecodeChunk(truncated, null, false, new byte[Chunk], digest, "c", 7)).Message);

        // The index says the chunk is shorter than what the frame holds.
        Assert.Contains("more than", Assert.Throws<ChunkCorruptException>(
            () => DataBlob.DecodeChunk(blob, null, false, new byte[Chunk - 4096], digest, "c", 7)).Message);

        // ...or longer.
        Assert.Contains("decompresses to", Assert.Throws<ChunkCorruptException>(
            () => DataBlob.DecodeChunk(blob, null, false, new byte[Chunk + 4096], digest, "c", 7)).Message);

        var trailing = Blob([.. frame, 1, 2, 3]);
        Assert.Throws<ChunkCorruptException>(() => DataBlob.DecodeChunk(trailing, null, false, new byte[Chunk], digest, "c", 7));
    }

    [Fact]
    public void Many_threads_decode_at_once()
    {
        var inputs = Enumerable.Range(0, 16).Select(i => Compressible(Chunk, 100 + i)).ToArray();
        var blobs = inputs.Select(d => DataBlob.Encode(d, null, compress: true)).ToArray();
        Parallel.For(0, 200, new ParallelOptions { MaxDegreeOfParallelism = 8 }, i =>
        {
            var n = i % inputs.Length;
            var output = new byte[Chunk];
            DataBlob.DecodeChunk(blobs[n], null, false, output, SHA256.HashData(inputs[n]), "c", 0);
            Assert.True(output.AsSpan().SequenceEqual(inputs[n]));
        });
    }
}
