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

    public void Dispose() => dir.Dispose();
}
