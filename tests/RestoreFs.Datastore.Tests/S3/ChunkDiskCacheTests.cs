using System.Security.Cryptography;
using RestoreFs.Datastore.S3;
using RestoreFs.TestSupport;

namespace RestoreFs.Datastore.Tests.S3;

/// <summary>The on-disk chunk cache: bound, LRU, verification on reuse, and two instances (as two mounts) on one directory.</summary>
public sealed class ChunkDiskCacheTests
{
    [Fact]
    public void StaysWithinItsBoundAndEvictsTheLeastRecentlyUsed()
    {
        using var dir = new TempDirectory("restorefs-chunkcache");
        using var cache = new ChunkDiskCache(dir.Path, 1024 * 1024);
        var entries = Enumerable.Range(0, 30).Select(i => Entry(i, 100 * 1024)).ToList();
        for (var i = 0; i < entries.Count; i++)
        {
            cache.Put(entries[i].Digest, entries[i].Data);
            if (i >= 1)
            {
                // Entry 0 is used all the time: it must survive every eviction.
                Assert.Equal(entries[0].Data, cache.TryGet(entries[0].Digest, Verify(entries[0].Digest)));
            }

            Assert.InRange(DiskBytes(dir.Path), 0, cache.MaxBytes);
            Thread.Sleep(5); // access times one after another
        }

        Assert.Equal(DiskBytes(dir.Path), cache.UsedBytes);
        Assert.NotNull(cache.TryGet(entries[^1].Digest, Verify(entries[^1].Digest)));
        Assert.Null(cache.TryGet(entries[1].Digest, Verify(entries[1].Digest)));
        Assert.True(cache.Stats.Evicted > 0);
        Assert.Empty(Directory.GetFiles(Path.Combine(dir.Path, "tmp")));

        // Larger than the whole cache: not stored.
        var huge = Entry(99, 2 * 1024 * 1024);
        cache.Put(huge.Digest, huge.Data);
        Assert.Null(cache.TryGet(huge.Digest));
    }

    [Fact]
    public void EntriesOfAnyLengthComeBackExactlyThroughTheUnbufferedPath()
    {
        using var dir = new TempDirectory("restorefs-chunkcache");
        using var cache = new ChunkDiskCache(dir.Path, 64L * 1024 * 1024);
        // Lengths around page and chunk sizes: the direct write pads to whole pages and cuts the file back.
        foreach (var (length, seed) in new[] { (1, 1), (4095, 2), (4096, 3), (4097, 4), ((4 * 1024 * 1024) + 12, 5), (16 * 1024 * 1024 + 12, 6) })
        {
            var e = Entry(seed, length);
            cache.Put(e.Digest, e.Data);
            var file = Path.Combine(dir.Path, "chunks", e.Digest[..4], e.Digest);
            Assert.Equal(length, new FileInfo(file).Length);
            Assert.Equal(e.Data, File.ReadAllBytes(file));
            using var read = cache.TryRead(e.Digest, 16 * 1024 * 1024 + 12);
            Assert.NotNull(read);
            Assert.Equal(e.Data, read.Span.ToArray());
        }

        Assert.Null(cache.TryRead(new string('0', 64), 1024));

        // An entry larger than the caller allows is dropped, not returned.
        var big = Entry(7, 8192);
        cache.Put(big.Digest, big.Data);
        Assert.Null(cache.TryRead(big.Digest, 4096));
        Assert.False(File.Exists(Path.Combine(dir.Path, "chunks", big.Digest[..4], big.Digest)));
        Assert.Equal(cache.MeasureBytes(), cache.UsedBytes);
        Assert.Empty(Directory.GetFiles(Path.Combine(dir.Path, "tmp")));
    }

    [Fact]
    public void AnEntryThatFailsTheCallersCheckIsDropped()
    {
        using var dir = new TempDirectory("restorefs-chunkcache");
        using var cache = new ChunkDiskCache(dir.Path, 1024 * 1024);
        var e = Entry(1, 4096);
        cache.Put(e.Digest, e.Data);
        var file = Path.Combine(dir.Path, "chunks", e.Digest[..4], e.Digest);
        var bytes = File.ReadAllBytes(file);
        bytes[100] ^= 0x40;
        File.WriteAllBytes(file, bytes);

        Assert.Null(cache.TryGet(e.Digest, Verify(e.Digest)));
        Assert.False(File.Exists(file));
        Assert.Equal(1, cache.Stats.Rejected);
        Assert.Equal(0, cache.UsedBytes);
        cache.Put(e.Digest, e.Data);
        Assert.Equal(e.Data, cache.TryGet(e.Digest, Verify(e.Digest)));
    }

    [Fact]
    public async Task TwoCachesOnOneDirectoryStayWithinTheBoundTogether()
    {
        using var dir = new TempDirectory("restorefs-chunkcache");
        const long bound = 2 * 1024 * 1024;
        using var a = new ChunkDiskCache(dir.Path, bound);
        using var b = new ChunkDiskCache(dir.Path, bound);
        var entries = Enumerable.Range(0, 60).Select(i => Entry(i, 64 * 1024 + (i * 997))).ToList();
        var bad = 0;
        var overBound = 0;
        var workers = Enumerable.Range(0, 8).Select(w => Task.Run(() =>
        {
            var cache = w % 2 == 0 ? a : b;
            var random = new Random(w);
            for (var n = 0; n < 250; n++)
            {
                var e = entries[random.Next(entries.Count)];
                var got = cache.TryGet(e.Digest, Verify(e.Digest));
                if (got is null)
                {
                    cache.Put(e.Digest, e.Data);
                }
                else if (!got.AsSpan().SequenceEqual(e.Data))
                {
                    Interlocked.Increment(ref bad);
                }

                if (n % 50 == 0 && cache.MeasureBytes() > bound)
                {
                    Interlocked.Increment(ref overBound);
                }
            }
        })).ToArray();
        await Task.WhenAll(workers);

        Assert.Equal(0, bad);
        Assert.Equal(0, overBound);
        Assert.InRange(DiskBytes(dir.Path), 1, bound);
        Assert.Equal(DiskBytes(dir.Path), a.UsedBytes);
        Assert.Empty(Directory.GetFiles(Path.Combine(dir.Path, "tmp")));
        Assert.True(a.Stats.Hits + b.Stats.Hits > 0);
        Assert.True(a.Stats.Evicted + b.Stats.Evicted > 0);

        // A third instance (a later mount) starts from what is on disk.
        using var c = new ChunkDiskCache(dir.Path, bound);
        Assert.Equal(DiskBytes(dir.Path), c.UsedBytes);
    }

    /// <summary>The digest of test entries is the SHA-256 of their bytes, as for real chunks.</summary>
    private static Func<byte[], bool> Verify(string digest) => data => Convert.ToHexStringLower(SHA256.HashData(data)) == digest;

    private static (string Digest, byte[] Data) Entry(int seed, int size)
    {
        var data = new byte[size];
        new Random(seed).NextBytes(data);
        return (Convert.ToHexStringLower(SHA256.HashData(data)), data);
    }

    private static long DiskBytes(string dir)
        => new DirectoryInfo(Path.Combine(dir, "chunks")).EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length);
}
