using System.Diagnostics;
using RestoreFs.Datastore;
using RestoreFs.TestSupport;

namespace RestoreFs.Datastore.Tests;

/// <summary>Writer → reader round trips over sizes, encodings and snapshots.</summary>
public sealed class RoundTripTests : IDisposable
{
    private const int Chunk = BackupWriter.DefaultChunkSize;
    private static readonly DateTimeOffset T0 = DateTimeOffset.Parse("2026-01-02T03:04:05Z");
    private readonly TempDirectory dir = new("restorefs-ds");

    private string Store => dir.Combine("store");

    private static CryptConfig TestKey => CryptConfig.FromRawKey(Enumerable.Range(0, 32).Select(i => (byte)(i * 7)).ToArray());

    public static TheoryData<int, bool> Sizes => new()
    {
        { 1, false }, { Chunk, false }, { Chunk + 1, false }, { 3 * Chunk + 12345, false }, { 1, true }, { Chunk + 1, true }, { 2 * Chunk + 7, true },
    };

    [Theory]
    [MemberData(nameof(Sizes))]
    public void Image_reads_back_byte_exact(int size, bool encrypted)
    {
        var key = encrypted ? TestKey : null;
        var data = DatastoreBuilder.Data(size, size);
        var snap = DatastoreBuilder.Write(Store, "vm/100", T0, new Dictionary<string, byte[]> { ["drive-scsi0"] = data }, key);
        var reader = DatastoreReader.Open(Store);
        using var image = reader.OpenImage(snap, "drive-scsi0.img", key);
        Assert.Equal(size, image.Size);
        var copy = new byte[size];
        Assert.Equal(size, image.Read(0, copy));
        Assert.Equal(data, copy);
        Assert.Equal(0, image.Read(size, new byte[10]));
        var tail = new byte[100];
        Assert.Equal(Math.Min(100, size), image.Read(Math.Max(0, size - 100), tail));
    }

    [Fact]
    public void Compressible_zero_and_random_chunks_use_the_right_blob_kinds()
    {
        var data = new byte[3 * Chunk];
        new Random(1).NextBytes(data.AsSpan(0, Chunk));
        for (var i = Chunk; i < 2 * Chunk; i++)
        {
            data[i] = (byte)(i % 7 == 0 ? 'a' : 'b');
        }

        var snap = DatastoreBuilder.Write(Store, "vm/1", T0, new Dictionary<string, byte[]> { ["d"] = data });
        var reader = DatastoreReader.Open(Store);
        using var image = reader.OpenImage(snap, "d.img.fidx", null);
        Assert.False(image.IsZeroChunk(0));
        Assert.True(image.IsZeroChunk(2));
        Assert.Equal(BlobKind.Uncompressed, DataBlob.KindOf(File.ReadAllBytes(reader.Chunks.PathOf(Convert.FromHexString(image.ChunkDigestHex(0))))));
        Assert.Equal(BlobKind.Compressed, DataBlob.KindOf(File.ReadAllBytes(reader.Chunks.PathOf(Convert.FromHexString(image.ChunkDigestHex(1))))));
        var copy = new byte[data.Length];
        image.Read(0, copy);
        Assert.Equal(data, copy);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Zero_chunks_get_the_digest_hashing_gives_and_read_back(bool encrypted)
    {
        // A whole zero chunk, a chunk with one byte set, and a short zero tail: the writer's zero shortcut must give
        // the digests PBS computes (plain SHA-256, or the keyed digest), so its chunks are shared with PBS's.
        var key = encrypted ? TestKey : null;
        var data = new byte[2 * Chunk + 5000];
        data[Chunk + 3] = 1;
        var snap = DatastoreBuilder.Write(Store, "vm/2", T0, new Dictionary<string, byte[]> { ["d"] = data }, key);
        var reader = DatastoreReader.Open(Store);
        using var image = reader.OpenImage(snap, "d.img.fidx", key);
        // Computed here, not through the writer's helper: SHA-256 of the content, with id_key appended when keyed.
        byte[] Digest(byte[] bytes) => key is null ? System.Security.Cryptography.SHA256.HashData(bytes) : key.KeyedDigest(bytes);
        Assert.Equal(Convert.ToHexStringLower(Digest(new byte[Chunk])), image.ChunkDigestHex(0));
        Assert.Equal(Convert.ToHexStringLower(Digest(data[Chunk..(2 * Chunk)])), image.ChunkDigestHex(1));
        Assert.Equal(Convert.ToHexStringLower(Digest(new byte[5000])), image.ChunkDigestHex(2));
        var zeroBlob = File.ReadAllBytes(reader.Chunks.PathOf(Convert.FromHexString(image.ChunkDigestHex(0))));
        Assert.Equal(encrypted ? BlobKind.EncryptedCompressed : BlobKind.Compressed, DataBlob.KindOf(zeroBlob));
        Assert.True(zeroBlob.Length < 4096, $"a zero chunk takes {zeroBlob.Length} bytes");
        var copy = new byte[data.Length];
        Assert.Equal(data.Length, image.Read(0, copy));
        Assert.Equal(data, copy);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void The_shared_zero_chunk_digest_is_the_digest_of_zeros(bool encrypted)
    {
        // Plain 4 MiB is a constant in the code; the rest is hashed in 64 KiB pieces: both must equal hashing the zeros.
        var key = encrypted ? TestKey : null;
        foreach (var length in new[] { 0, 1, 65535, 65536, 65537, 1_000_000, Chunk - 1, Chunk, Chunk + 1 })
        {
            Assert.Equal(CryptConfig.ChunkDigest(key, new byte[length]), CryptConfig.ZeroChunkDigest(key, length));
        }

        Assert.NotEqual(CryptConfig.ZeroChunkDigest(null, Chunk), CryptConfig.ZeroChunkDigest(TestKey, Chunk));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void EncodeInto_keeps_a_frame_only_when_strictly_smaller(bool encrypted)
    {
        var key = encrypted ? TestKey : null;
        var random = new byte[100_000];
        new Random(7).NextBytes(random);
        var text = System.Text.Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("restorefs ", 10_000)));
        foreach (var (data, compressible) in new[] { (random, false), (text, true), (new byte[] { 42 }, false) })
        {
            var blob = new byte[DataBlob.MaxEncodedLength(data.Length)];
            var length = DataBlob.EncodeInto(data, key, compress: true, blob);
            var kind = DataBlob.KindOf(blob.AsSpan(0, length));
            Assert.Equal(compressible, kind is BlobKind.Compressed or BlobKind.EncryptedCompressed);
            Assert.Equal(encrypted, kind is BlobKind.Encrypted or BlobKind.EncryptedCompressed);
            if (!compressible)
            {
                Assert.Equal((encrypted ? DataBlob.EncryptedHeaderSize : DataBlob.PlainHeaderSize) + data.Length, length);
            }

            Assert.Equal(data, DataBlob.Decode(blob.AsSpan(0, length), key, "test blob"));
        }
    }

    [Fact]
    public void Second_snapshot_reuses_chunks_and_does_not_rewrite_them()
    {
        var data = DatastoreBuilder.Data(3 * Chunk, 5);
        DatastoreBuilder.Write(Store, "vm/100", T0, new Dictionary<string, byte[]> { ["d"] = data });
        var chunkFiles = Directory.GetFiles(Path.Combine(Store, ".chunks"), "*", SearchOption.AllDirectories)
            .ToDictionary(f => f, f => File.GetLastWriteTimeUtc(f));
        data[Chunk + 10] ^= 1;
        var second = DatastoreBuilder.Write(Store, "vm/100", T0.AddDays(1), new Dictionary<string, byte[]> { ["d"] = data });
        var after = Directory.GetFiles(Path.Combine(Store, ".chunks"), "*", SearchOption.AllDirectories);
        Assert.Equal(chunkFiles.Count + 1, after.Length);
        foreach (var (file, mtime) in chunkFiles)
        {
            Assert.Equal(mtime, File.GetLastWriteTimeUtc(file));
        }

        var reader = DatastoreReader.Open(Store);
        Assert.Equal(2, reader.ListSnapshots(second.Group).Count);
        using var image = reader.OpenImage(second, "d", null);
        var copy = new byte[data.Length];
        image.Read(0, copy);
        Assert.Equal(data, copy);
    }

    [Fact]
    public void Blobs_namespaces_and_listing()
    {
        var conf = "memory: 512\n"u8.ToArray();
        DatastoreBuilder.Write(Store, "vm/100", T0, new Dictionary<string, byte[]> { ["d"] = [1, 2, 3] }, ns: "a/b",
            blobs: new Dictionary<string, byte[]> { ["qemu-server.conf"] = conf });
        DatastoreBuilder.Write(Store, "ct/7", T0, new Dictionary<string, byte[]> { ["d"] = [4] });
        var reader = DatastoreReader.Open(Store);
        Assert.Equal(["", "a", "a/b"], reader.ListNamespaces().Select(n => n.Path));
        Assert.Single(reader.ListGroups(BackupNamespace.Root));
        var snap = reader.GetSnapshot(BackupNamespace.Parse("a/b"), "vm/100/2026-01-02T03:04:05Z");
        Assert.Equal(conf, reader.ReadBlob(snap, "qemu-server.conf.blob", null));
        Assert.Throws<SnapshotNotFoundException>(() => reader.GetSnapshot(BackupNamespace.Root, "vm/100/2026-01-02T03:04:05Z"));
    }

    [Fact]
    public void A_new_store_gets_all_65536_chunk_directories_as_PBS_makes_them()
    {
        using (var writer = BackupWriter.Create(Store, BackupGroup.Parse(BackupNamespace.Root, "vm/5"), T0, null))
        {
            var data = DatastoreBuilder.Data(1000, 5);
            using var stream = new MemoryStream(data);
            writer.AddImage("d", stream, data.Length);
            writer.Finish();
        }

        var dirs = Directory.GetDirectories(Path.Combine(Store, ".chunks")).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(65536, dirs.Count);
        Assert.Equal("0000", dirs[0]);
        Assert.Equal("ffff", dirs[^1]);
        Assert.True(File.Exists(Path.Combine(Store, ".lock")));
        var chunkFiles = Directory.EnumerateFiles(Path.Combine(Store, ".chunks"), "*", SearchOption.AllDirectories).ToList();
        var chunk = Assert.Single(chunkFiles);
        Assert.Equal(Path.GetFileName(chunk)[..4], Path.GetFileName(Path.GetDirectoryName(chunk)));
    }

    [Fact]
    public void Listing_ten_thousand_snapshots_takes_well_under_a_second()
    {
        BackupWriter.EnsureStore(Store);
        var group = Path.Combine(Store, "vm", "100");
        var blob = DataBlob.Encode("{}"u8, null, compress: false);
        for (var i = 0; i < 10_000; i++)
        {
            var snap = Path.Combine(group, Names.FormatTime(T0.AddMinutes(i)));
            Directory.CreateDirectory(snap);
            File.WriteAllBytes(Path.Combine(snap, "index.json.blob"), blob);
        }

        var reader = DatastoreReader.Open(Store);
        // CPU time of this thread: the test projects run in parallel on two cores, so wall time measures the others.
        var watch = Stopwatch.StartNew();
        var cpu = ThreadCpu.Now();
        var list = reader.ListGroups(BackupNamespace.Root).SelectMany(reader.ListSnapshots).ToList();
        cpu = ThreadCpu.Now() - cpu;
        watch.Stop();
        Assert.Equal(10_000, list.Count);
        Assert.True(cpu < TimeSpan.FromSeconds(1), $"listing took {cpu.TotalMilliseconds:F0} ms of CPU ({watch.Elapsed} wall)");
        Assert.True(list.Zip(list.Skip(1)).All(p => p.First.Time < p.Second.Time));
    }

    [Fact]
    public void Concurrent_random_reads_are_byte_exact()
    {
        var data = DatastoreBuilder.Data(5 * Chunk + 999, 9, 2);
        var snap = DatastoreBuilder.Write(Store, "vm/100", T0, new Dictionary<string, byte[]> { ["d"] = data });
        using var image = DatastoreReader.Open(Store).OpenImage(snap, "d", null, new ImageReaderOptions(CacheBytes: 2L * Chunk));
        var bad = 0;
        Parallel.For(0, 8, t =>
        {
            var random = new Random(t);
            for (var i = 0; i < 200; i++)
            {
                var offset = random.NextInt64(data.Length);
                var buffer = new byte[random.Next(1, 2 * Chunk)];
                var n = image.Read(offset, buffer);
                if (n != Math.Min(buffer.Length, data.Length - offset) || !buffer.AsSpan(0, n).SequenceEqual(data.AsSpan((int)offset, n)))
                {
                    Interlocked.Increment(ref bad);
                }
            }
        });
        Assert.Equal(0, bad);
    }

    public void Dispose() => dir.Dispose();
}
