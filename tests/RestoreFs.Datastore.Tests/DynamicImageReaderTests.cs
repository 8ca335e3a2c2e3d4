using RestoreFs.Datastore;
using RestoreFs.TestSupport;

namespace RestoreFs.Datastore.Tests;

/// <summary>The chunk buffers of dynamic-index readers are process-wide: nothing else may decode dynamic chunks meanwhile.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class DynamicBuffersCollection
{
    public const string Name = "dynamic chunk buffers";
}

/// <summary>
/// Reads over a dynamic index (variable-length chunks, as a pxar archive has): bytes exact from any offset and from
/// several threads with fetches ahead, the cache within its bound, a damaged chunk failing only its reads, and every
/// decoded chunk's memory (mapped outside the managed heap) given back when the reader is disposed.
/// </summary>
[Collection(DynamicBuffersCollection.Name)]
public sealed class DynamicImageReaderTests : IDisposable
{
    private const int Average = 256 * 1024; // chunks of 64 KiB … 1 MiB: many of them, of many lengths
    private static readonly DateTimeOffset T0 = DateTimeOffset.Parse("2026-01-02T03:04:05Z");
    private readonly TempDirectory dir = new("restorefs-dynreader");

    /// <summary>What the spare buffers may hold after a reader is gone: a few of the largest chunks' buffers.</summary>
    private static long MostSpare => DynamicChunkBuffers.SpareLimit * (long)DynamicChunkBuffers.Rounded(4 * Average);

    public void Dispose() => dir.Dispose();

    private (DatastoreReader Reader, SnapshotInfo Snapshot, byte[] Data) Archive(int length)
    {
        var store = dir.Combine("store");
        var data = DatastoreBuilder.Data(length, 7);
        // Some runs of zeros and repeats, as archives have (dedup, well-compressed chunks next to incompressible ones).
        Array.Clear(data, length / 5, length / 10);
        data.AsSpan(0, length / 8).CopyTo(data.AsSpan(length / 2));
        using var writer = BackupWriter.Create(store, BackupGroup.Parse(BackupNamespace.Parse(null), "ct/300"), T0, null,
            precreateChunkDirectories: false);
        var archive = writer.BeginDynamicArchive("root.pxar", Average);
        archive.Write(data);
        archive.Finish();
        return (DatastoreReader.Open(store), writer.Finish(), data);
    }

    /// <summary>
    /// A reader evicts a chunk to make room for its next decode, which takes the evicted buffer: that buffer is kept even
    /// when it is larger than the spare limit (the only spare), and a smaller chunk takes it whole, without shrinking it
    /// and growing it again for the next large chunk. Each fresh page is a page fault: dropping or shrinking buffers made
    /// a v1 walk fault in a new buffer for nearly every decode.
    /// </summary>
    [Fact]
    public void A_lone_large_spare_is_kept_and_a_smaller_chunk_takes_it_whole()
    {
        var held = new List<NativeChunkBuffer>();
        while (DynamicChunkBuffers.SpareCount > 0)
        {
            held.Add(DynamicChunkBuffers.Rent(1));
        }

        // Given back last, it makes the large spare go (a lone spare stays only while it is alone): later tests start
        // with the spares they would have had.
        NativeChunkBuffer? small64K = DynamicChunkBuffers.Rent(64 * 1024);
        try
        {
            const int Large = 12 * 1024 * 1024;
            Assert.True(Large > DynamicChunkBuffers.SpareBytesLimit);
            var big = DynamicChunkBuffers.Rent(Large);
            big.Span[^1] = 7;
            DynamicChunkBuffers.Return(big);
            Assert.Equal(1, DynamicChunkBuffers.SpareCount);
            var mapped = DynamicChunkBuffers.MappedBytes;

            var small = DynamicChunkBuffers.Rent(3 * 1024 * 1024);
            Assert.Same(big, small);
            Assert.Equal(Large, small.Length);
            Assert.Equal(7, small.Span[^1]); // the same pages, not a fresh mapping
            Assert.Equal(mapped, DynamicChunkBuffers.MappedBytes);
            DynamicChunkBuffers.Return(small);
            Assert.Equal(mapped, DynamicChunkBuffers.MappedBytes);

            DynamicChunkBuffers.Return(small64K);
            small64K = null;
            Assert.Equal(1, DynamicChunkBuffers.SpareCount);
            Assert.Equal(mapped - Large, DynamicChunkBuffers.MappedBytes); // the large spare is unmapped
        }
        finally
        {
            if (small64K is not null)
            {
                DynamicChunkBuffers.Return(small64K);
            }

            foreach (var b in held)
            {
                DynamicChunkBuffers.Return(b);
            }
        }
    }

    [Fact]
    public void Reads_from_many_threads_with_fetches_ahead_are_exact_and_the_cache_keeps_its_bound()
    {
        var (reader, snapshot, data) = Archive(24 * 1024 * 1024 + 12345);
        var mappedBefore = DynamicChunkBuffers.MappedBytes;
        const long bound = 2L * 1024 * 1024;
        using (var source = DynamicImageReader.Open(reader, snapshot, "root.pxar", null, new DynamicImageReaderOptions(CacheBytes: bound)))
        {
            Assert.True(source.ChunkCount > 30, $"{source.ChunkCount} chunks");
            Assert.Equal(data.Length, source.Size);
            var errors = new List<string>();
            var threads = Enumerable.Range(0, 4).Select(t => new Thread(() =>
            {
                var random = new Random(100 + t);
                var buffer = new byte[300_000];
                for (var i = 0; i < 150; i++)
                {
                    var offset = t == 0 ? (long)i * 160_000 % data.Length : random.NextInt64(data.Length + 1000);
                    var want = random.Next(1, buffer.Length);
                    source.Prefetch(offset + want + random.Next(2_000_000));
                    var n = source.Read(offset, buffer.AsSpan(0, want));
                    var expected = (int)Math.Clamp(data.Length - offset, 0, want);
                    if (n != expected || !buffer.AsSpan(0, n).SequenceEqual(data.AsSpan((int)Math.Min(offset, data.Length), n)))
                    {
                        lock (errors)
                        {
                            errors.Add($"thread {t}: {want} bytes at {offset}: got {n}, expected {expected}, or other bytes");
                        }
                    }

                    // At most the bound at every moment, or the one chunk read last when that alone is bigger (not the case here).
                    var cached = source.CachedBytes; // read while the other threads decode and insert
                    if (cached > bound)
                    {
                        lock (errors)
                        {
                            errors.Add($"thread {t}: {cached} bytes cached, bound {bound}");
                        }
                    }
                }
            })).ToList();
            threads.ForEach(x => x.Start());
            threads.ForEach(x => x.Join());
            Assert.Empty(errors);
            Assert.True(source.Stats.Misses > source.ChunkCount / 2, $"{source.Stats.Misses} misses: the small cache must have been exercised");
        }

        // Every buffer is back: unmapped, or kept as one of the few spares for the next decode.
        Assert.True(DynamicChunkBuffers.MappedBytes - mappedBefore <= MostSpare,
            $"{DynamicChunkBuffers.MappedBytes - mappedBefore} bytes still mapped after the reader was disposed");
        Assert.True(DynamicChunkBuffers.SpareCount <= DynamicChunkBuffers.SpareLimit);
    }

    /// <summary>A fetch ahead still decoding when the reader is disposed: Dispose waits for it, so the reader leaves
    /// nothing mapped but spare buffers (it used to give that chunk's buffer back a moment after Dispose returned).</summary>
    [Fact]
    public void Dispose_waits_for_a_fetch_ahead_under_way_and_leaves_only_spares_mapped()
    {
        var (reader, snapshot, _) = Archive(8 * 1024 * 1024);
        for (var round = 0; round < 20; round++)
        {
            var inUse = DynamicChunkBuffers.MappedBytes - DynamicChunkBuffers.SpareBytes;
            long prefetches;
            using (var source = DynamicImageReader.Open(reader, snapshot, "root.pxar", null))
            {
                source.Prefetch(round * 350_000L);
                prefetches = source.Prefetches;
                // Until the decode has taken its buffer (then it runs for a millisecond or so).
                var started = System.Diagnostics.Stopwatch.StartNew();
                while (DynamicChunkBuffers.MappedBytes - DynamicChunkBuffers.SpareBytes == inUse && started.Elapsed < TimeSpan.FromSeconds(5))
                {
                    Thread.SpinWait(20);
                }
            }

            Assert.Equal(1, prefetches);
            Assert.Equal(inUse, DynamicChunkBuffers.MappedBytes - DynamicChunkBuffers.SpareBytes);
        }
    }

    [Fact]
    public void A_damaged_chunk_fails_only_the_reads_that_touch_it_and_its_buffer_is_given_back()
    {
        var (reader, snapshot, data) = Archive(6 * 1024 * 1024);
        var index = DynamicIndex.Open(Path.Combine(snapshot.DirectoryPath, "root.pxar.didx"));
        var damaged = index.ChunkCount / 2;
        var path = reader.Chunks.PathOf(index.Digest(damaged));
        var bytes = File.ReadAllBytes(path);
        bytes[^5] ^= 0x40;
        File.WriteAllBytes(path, bytes);

        var mappedBefore = DynamicChunkBuffers.MappedBytes;
        using (var source = DynamicImageReader.Open(reader, snapshot, "root.pxar", null))
        {
            var buffer = new byte[1000];
            for (var round = 0; round < 20; round++)
            {
                var inside = index.ChunkStart(damaged) + 10;
                var error = Assert.ThrowsAny<DatastoreException>(() => source.Read(inside, buffer));
                Assert.Contains(Convert.ToHexStringLower(index.Digest(damaged)), error.Message);
                var before = index.ChunkStart(damaged) - buffer.Length;
                Assert.Equal(buffer.Length, source.Read(before, buffer));
                Assert.True(buffer.AsSpan().SequenceEqual(data.AsSpan((int)before, buffer.Length)));
            }
        }

        // Twenty failed decodes leaked no buffer.
        Assert.True(DynamicChunkBuffers.MappedBytes - mappedBefore <= MostSpare,
            $"{DynamicChunkBuffers.MappedBytes - mappedBefore} bytes still mapped");
    }

    [Fact]
    public void A_native_chunk_buffer_holds_its_bytes_until_disposed_and_refuses_use_after()
    {
        var buffer = new NativeChunkBuffer(3 * 4096 + 5);
        buffer.Span.Fill(0xA5);
        buffer.Slice(4096, 3).Clear();
        Assert.Equal(0xA5, buffer.Span[^1]);
        Assert.Equal(0, buffer.Span[4097]);
        Assert.Throws<ArgumentOutOfRangeException>(() => buffer.Slice(buffer.Length - 2, 3));
        buffer.Dispose();
        buffer.Dispose();
        Assert.Throws<ObjectDisposedException>(() => buffer.Span.Length);
    }
}

/// <summary>What a mount prepares at start-up so that its first read does not pay for first uses.</summary>
[Collection(DynamicBuffersCollection.Name)]
public sealed class ChunkDecodingPreparationTests
{
    [Fact]
    public void The_start_up_decode_runs_the_real_path_and_a_prepared_buffer_is_taken_once_at_the_length_asked()
    {
        ChunkDecoding.Prepare(); // decodes and verifies a made-up chunk; throws on any failure

        NativeChunkBuffer.Prepare(4096 * 3);
        using (var taken = NativeChunkBuffer.TakePrepared(4096 * 3))
        {
            Assert.NotNull(taken);
            taken!.Span.Fill(7); // mapped and writable
            Assert.Null(NativeChunkBuffer.TakePrepared(4096 * 3));
        }

        // Taken for another length (a mount of archives only: dynamic chunks), it is resized.
        NativeChunkBuffer.Prepare(4096 * 3);
        using var other = NativeChunkBuffer.TakePrepared(4096 * 5);
        Assert.Equal(4096 * 5, other!.Length);
        other.Span.Fill(9);
    }

    [Fact]
    public void A_resized_buffer_keeps_its_bytes_up_to_the_shorter_length()
    {
        using var buffer = new NativeChunkBuffer(1 << 20);
        buffer.Span.Fill(0x3C);
        buffer.Resize(3 << 20);
        Assert.Equal(3 << 20, buffer.Length);
        Assert.True(buffer.Slice(0, 1 << 20).IndexOfAnyExcept((byte)0x3C) < 0);
        buffer.Slice(2 << 20, 1 << 20).Fill(1);
        buffer.Resize(4096);
        Assert.Equal(4096, buffer.Length);
        Assert.True(buffer.Span.IndexOfAnyExcept((byte)0x3C) < 0);
    }
}
