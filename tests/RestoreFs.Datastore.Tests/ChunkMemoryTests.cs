using RestoreFs.Datastore;
using RestoreFs.TestSupport;

namespace RestoreFs.Datastore.Tests;

/// <summary>A mount's readers share one decoded-chunk budget: however many images are read, the chunks cached by all of
/// them stay within it, the least recently used reader gives up its chunks first, and bytes stay exact.</summary>
public sealed class ChunkMemoryTests : IDisposable
{
    private const int Chunk = BackupWriter.DefaultChunkSize;
    private static readonly DateTimeOffset T0 = DateTimeOffset.Parse("2026-01-02T03:04:05Z");
    private readonly TempDirectory dir = new("restorefs-chunkmem");

    [Fact]
    public void Readers_of_many_images_stay_within_one_shared_budget()
    {
        var store = dir.Combine("store");
        var images = new List<(SnapshotInfo Snap, byte[] Data)>();
        for (var i = 0; i < 4; i++)
        {
            var data = DatastoreBuilder.Data(3 * Chunk + 17, 40 + i, 2);
            images.Add((DatastoreBuilder.Write(store, $"vm/{100 + i}", T0, new Dictionary<string, byte[]> { ["d"] = data }), data));
        }

        var memory = new ChunkMemory(2L * Chunk);
        var reader = DatastoreReader.Open(store);
        var opened = images.Select(x => reader.OpenImage(x.Snap, "d", null, new ImageReaderOptions(CacheBytes: 2L * Chunk, ReadAheadChunks: 0, Memory: memory))).ToList();
        try
        {
            for (var round = 0; round < 2; round++)
            {
                for (var i = 0; i < opened.Count; i++)
                {
                    var buffer = new byte[images[i].Data.Length];
                    Assert.Equal(buffer.Length, opened[i].Read(0, buffer));
                    Assert.True(buffer.AsSpan().SequenceEqual(images[i].Data), $"image {i} round {round}");
                    Assert.True(memory.Used <= memory.Capacity, $"{memory.Used} bytes cached after image {i}");
                    Assert.Equal(memory.Used, opened.Sum(r => r.CachedBytes));
                }
            }

            // The last image read keeps its chunks; the earlier ones gave theirs up.
            Assert.Equal(2L * Chunk, opened[^1].CachedBytes);
            Assert.Equal(0, opened[0].CachedBytes);
            Assert.True(memory.SpareBuffers <= 2);
        }
        finally
        {
            opened.ForEach(r => r.Dispose());
        }

        Assert.Equal(0, memory.Used);
    }

    [Fact]
    public void Read_ahead_stays_within_a_small_shared_budget_so_no_chunk_is_decoded_twice()
    {
        // Read-ahead asked for more chunks than the mount's budget holds (an S3 store keeps 8 GETs in flight; a user
        // may run with --cache-mb 16): the chunks read ahead must not push each other out before the reader gets there.
        var store = dir.Combine("store");
        var data = DatastoreBuilder.Data(24 * Chunk, 77, 2);
        var snap = DatastoreBuilder.Write(store, "vm/200", T0, new Dictionary<string, byte[]> { ["d"] = data });
        var reader = DatastoreReader.Open(store);
        long Decoded(long budgetChunks)
        {
            var memory = new ChunkMemory(budgetChunks * Chunk);
            using var image = reader.OpenImage(snap, "d", null, new ImageReaderOptions(CacheBytes: 64L * Chunk, ReadAheadChunks: 8, Memory: memory));
            var buffer = new byte[256 * 1024];
            for (long offset = 0; offset < data.Length; offset += buffer.Length)
            {
                var n = image.Read(offset, buffer);
                Assert.True(buffer.AsSpan(0, n).SequenceEqual(data.AsSpan((int)offset, n)), $"bytes at {offset}");
            }

            return image.Stats.DecodedBytes;
        }

        // With room for everything each chunk holding data is decoded once; with room for four it must be the same.
        var once = Decoded(64);
        Assert.True(once >= data.Length / 2, $"{once} bytes decoded");
        Assert.Equal(once, Decoded(4));
    }

    [Fact]
    public void Two_readers_that_both_see_the_budget_exceeded_by_one_chunk_evict_one_chunk_between_them()
    {
        // Two decodes finishing at once (or a read-ahead starting while another ends) both find the budget one chunk
        // over and trim. Each evicting a chunk of its own would drop one that is still needed: under load that was a
        // chunk read ahead and not yet read, decoded a second time when the reader got to it.
        var memory = new ChunkMemory(4L * Chunk);
        var cache = new BlockingCache(memory, cachedChunks: 5);
        memory.Register(cache);
        memory.Charge(5L * Chunk);
        var trims = Enumerable.Range(0, 2).Select(_ => Task.Factory.StartNew(memory.Trim, TaskCreationOptions.LongRunning)).ToArray();
        Assert.True(Task.WaitAll(trims, TimeSpan.FromSeconds(30)));
        Assert.Equal(1, cache.Evictions);
        Assert.Equal(4L * Chunk, memory.Used);
    }

    /// <summary>A reader's cache whose eviction lingers until a second trimmer arrives (or half a second passes), as a
    /// preempted thread would: concurrent trims show up as concurrent evictions.</summary>
    private sealed class BlockingCache(ChunkMemory memory, int cachedChunks) : IChunkCache
    {
        private readonly CountdownEvent inside = new(2);
        private int cached = cachedChunks;
        private int evictions;

        public int Evictions => Volatile.Read(ref evictions);

        public long CachedBytes => (long)Volatile.Read(ref cached) * Chunk;

        public long LastUse => 0;

        public bool EvictOldest()
        {
            inside.Signal();
            inside.Wait(TimeSpan.FromMilliseconds(500));
            if (Interlocked.Decrement(ref cached) < 0)
            {
                return false;
            }

            Interlocked.Increment(ref evictions);
            memory.Charge(-Chunk);
            return true;
        }
    }

    public void Dispose() => dir.Dispose();
}
