namespace RestoreFs.Datastore;

/// <summary>
/// Tuning of a <see cref="DynamicImageReader"/>. <paramref name="CacheBytes"/> bounds this reader's cache (it keeps at
/// least the chunk it decoded last); with <paramref name="Memory"/> the cached chunks also count against that shared
/// budget (a mount's <c>--cache-mb</c>, shared with the VM images' readers), which trims the least recently used reader.
/// </summary>
public sealed record DynamicImageReaderOptions(long CacheBytes = 64L * 1024 * 1024, bool VerifyDigests = true, ChunkMemory? Memory = null);

/// <summary>
/// Random-access reads over a dynamic index (<c>.didx</c>, spec section 4): the stream its chunks reassemble, e.g. a
/// pxar archive or a catalog. Thread-safe. Chunks are found by binary search over their end offsets, decoded,
/// digest-checked and kept in a bounded LRU cache; a damaged or missing chunk fails only the reads that touch it
/// (failures are not cached). Decoded chunks live outside the managed heap (<see cref="DynamicChunkBuffers"/>): browsing a
/// large archive decodes hundreds of chunks of a few MiB, which as arrays would pile up on the large-object heap until
/// the collector's next full collection. Bytes are copied out under the reader's lock, so an evicted buffer can be
/// reused or unmapped at once.
/// </summary>
public sealed class DynamicImageReader : IDisposable, IChunkCache
{
    /// <summary>PBS's dynamic chunks are at most 16 MiB (4 × the 4 MiB average); anything bigger is a corrupt index.</summary>
    public const int MaxChunkLength = 16 * 1024 * 1024;

    private readonly DynamicIndex index;
    private readonly ChunkStore chunks;
    private readonly CryptConfig? key;
    private readonly bool encrypted;
    private readonly DynamicImageReaderOptions options;
    private readonly ChunkMemory? memory;
    private readonly object gate = new();
    private readonly Dictionary<int, LinkedListNode<(int Chunk, NativeChunkBuffer Data)>> cache = new();
    private readonly LinkedList<(int Chunk, NativeChunkBuffer Data)> lru = new();
    private readonly Dictionary<int, ManualResetEventSlim> inflight = new();

    // One decode at a time per reader: the kernel reads a file with several requests in parallel, which cross into the
    // next chunk while this one is decoded; each decode holds the chunk file and the decoded chunk (up to 16 MiB each),
    // and reads of one archive are sequential enough that a second decoder mostly adds memory, not speed.
    private readonly SemaphoreSlim decoder = new(1, 1);
    private long cachedBytes;
    private long decodingBytes; // chunks being decoded for this cache (see MakeRoom)
    private long lastUse;
    private bool prefetching;
    private long prefetches;
    private long hits;
    private long misses;
    private volatile bool disposed;

    public DynamicImageReader(DynamicIndex index, ChunkStore chunks, CryptConfig? key, bool encrypted, DynamicImageReaderOptions? options = null)
    {
        this.index = index;
        this.chunks = chunks;
        this.key = key;
        this.encrypted = encrypted;
        this.options = options ?? new DynamicImageReaderOptions();
        for (var i = 0; i < index.ChunkCount; i++)
        {
            var length = index.ChunkEnd(i) - index.ChunkStart(i);
            if (length > MaxChunkLength)
            {
                throw new IndexCorruptException($"chunk {i} is {length} bytes long, more than a dynamic chunk may be", index.Path);
            }
        }

        memory = this.options.Memory;
        memory?.Register(this);
    }
    /// <summary>Opens <paramref name="archive"/> (a <c>.didx</c> name, with or without the suffix) of a snapshot, checked against its
    /// manifest (<paramref name="manifest"/> when the caller holds it, read with the same key; else read here).</summary>
    public static DynamicImageReader Open(DatastoreReader store, SnapshotInfo snapshot, string archive, CryptConfig? key,
        DynamicImageReaderOptions? options = null, Manifest? manifest = null)
    {
        var name = archive.EndsWith(".didx", StringComparison.Ordinal) ? archive : archive + ".didx";
        var (index, file) = store.OpenDynamicIndex(snapshot, name, key, manifest);
        return new DynamicImageReader(index, store.Chunks, key, file.CryptMode == CryptMode.Encrypt, options);
    }

    public long Size => index.Size;

    public int ChunkCount => index.ChunkCount;

    public string IndexPath => index.Path;

    public (long Hits, long Misses) Stats => (Interlocked.Read(ref hits), Interlocked.Read(ref misses));

    /// <summary>Bytes of the buffers this reader holds in its cache.</summary>
    public long CachedBytes => Interlocked.Read(ref cachedBytes);

    /// <summary>When the reader was last read (for the shared budget's choice of whom to trim).</summary>
    long IChunkCache.LastUse => Interlocked.Read(ref lastUse);

    public string ChunkDigestHex(int chunk) => Convert.ToHexStringLower(index.Digest(chunk));

    /// <summary>Reads min(destination.Length, Size − offset) bytes at <paramref name="offset"/>; 0 at or past the end.</summary>
    public int Read(long offset, Span<byte> destination)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        if (offset >= index.Size)
        {
            return 0;
        }

        Volatile.Write(ref lastUse, System.Diagnostics.Stopwatch.GetTimestamp());
        var length = (int)Math.Min(destination.Length, index.Size - offset);
        var done = 0;
        var chunk = index.ChunkAt(offset);
        while (done < length)
        {
            var inChunk = (int)(offset + done - index.ChunkStart(chunk));
            var want = destination[done..length];
            var n = CopyCached(chunk, inChunk, want, out var decoding);
            if (decoding is not null)
            {
                decoding.Wait(); // another reader decodes this chunk: use its result (or, if it failed, try again)
                continue;
            }

            if (n < 0)
            {
                var chunkLength = (int)(index.ChunkEnd(chunk) - index.ChunkStart(chunk));
                decoder.Wait();
                try
                {
                    var data = Decode(chunk, chunkLength);
                    n = Math.Min(want.Length, chunkLength - inChunk);
                    data.Slice(inChunk, n).CopyTo(want);
                    Insert(chunk, data);
                }
                finally
                {
                    decoder.Release();
                    EndDecode(chunk, prefetched: false);
                }

                memory?.Trim();
            }

            done += n;
            chunk++;
        }

        return length;
    }

    /// <summary>
    /// Starts decoding the chunk that holds <paramref name="offset"/> in the background, for a read the caller knows is
    /// coming (an archive reader that has just found where a directory's goodbye table lies). One such decode at a
    /// time, beside the reader's own: memory grows by one chunk at most, and a hint that comes while one runs is
    /// dropped. A failure is left for the read that needs the chunk, which decodes it again and reports it.
    /// </summary>
    public void Prefetch(long offset)
    {
        if (disposed || offset < 0 || offset >= index.Size)
        {
            return;
        }

        var chunk = index.ChunkAt(offset);
        lock (gate)
        {
            if (prefetching || cache.ContainsKey(chunk) || inflight.ContainsKey(chunk))
            {
                return;
            }

            prefetching = true;
            inflight[chunk] = new ManualResetEventSlim();
            misses++;
            prefetches++;
        }

        ThreadPool.UnsafeQueueUserWorkItem(static s => s.Reader.RunPrefetch(s.Chunk), (Reader: this, Chunk: chunk), preferLocal: false);
    }

    /// <summary>Chunks decoded on a hint (<see cref="Prefetch"/>).</summary>
    public long Prefetches => Interlocked.Read(ref prefetches);

    private void RunPrefetch(int chunk)
    {
        try
        {
            if (!disposed)
            {
                Insert(chunk, Decode(chunk, (int)(index.ChunkEnd(chunk) - index.ChunkStart(chunk))));
            }
        }
        catch (Exception)
        {
            // See Prefetch: the reader that needs this chunk decodes it itself and reports what is wrong, naming it.
        }
        finally
        {
            EndDecode(chunk, prefetched: true);
            memory?.Trim();
        }
    }

    /// <summary>A decode is over (cached, or failed): wakes the readers waiting for it; a fetch ahead frees its slot.</summary>
    private void EndDecode(int chunk, bool prefetched)
    {
        lock (gate)
        {
            if (prefetched)
            {
                prefetching = false;
            }

            if (inflight.Remove(chunk, out var finished))
            {
                finished.Set();
            }
        }
    }

    /// <summary>
    /// Copies from a cached chunk under the lock. When the chunk is not cached: −1 and either the decode another reader
    /// has under way (<paramref name="decoding"/>: wait for it, then ask again) or null, and the caller now decodes it —
    /// concurrent reads of one chunk (the kernel's parallel read-ahead of a file) decode it once.
    /// </summary>
    private int CopyCached(int chunk, int inChunk, Span<byte> destination, out ManualResetEventSlim? decoding)
    {
        decoding = null;
        lock (gate)
        {
            if (!cache.TryGetValue(chunk, out var node))
            {
                if (inflight.TryGetValue(chunk, out decoding))
                {
                    return -1;
                }

                inflight[chunk] = new ManualResetEventSlim();
                misses++;
                return -1;
            }

            lru.Remove(node);
            lru.AddFirst(node);
            hits++;
            var chunkLength = (int)(index.ChunkEnd(chunk) - index.ChunkStart(chunk));
            var n = Math.Min(destination.Length, chunkLength - inChunk);
            node.Value.Data.Slice(inChunk, n).CopyTo(destination);
            return n;
        }
    }

    /// <summary>Reads, verifies and decodes a chunk into a pooled buffer (at least <paramref name="length"/> bytes long).</summary>
    private NativeChunkBuffer Decode(int chunk, int length)
    {
        var reserved = DynamicChunkBuffers.Rounded(length);
        MakeRoom(reserved);
        try
        {
            var data = DynamicChunkBuffers.Rent(length);
            try
            {
                // As the fixed-index reader does: CRC, decryption and decompression while the chunk file arrives, the
                // digest on a helper thread (a walk of a unified archive is one decode after another: this halves each
                // one's wait). Where a step cannot run piecewise the chunk file is read into an array: the shared pool
                // keeps it only up to a fixed chunk's size (it keeps several, and dynamic chunks reach 16 MiB).
                StreamedChunkDecoder.ReadAndDecode(chunks, index.Digest(chunk), index.ChunkStart(chunk), key, encrypted, data, length,
                    options.VerifyDigests, ReturnBlob);
            }
            catch
            {
                DynamicChunkBuffers.Return(data);
                throw;
            }

            return data;
        }
        catch
        {
            lock (gate)
            {
                decodingBytes -= reserved;
            }

            throw;
        }
    }

    private static void ReturnBlob(byte[] blob)
    {
        if (blob.Length <= BackupWriter.DefaultChunkSize + 64 * 1024) // the pool rounds to 64 KiB
        {
            BlobBuffers.Pool.Return(blob);
        }
    }

    /// <summary>
    /// Before a decode: the cache gives up its least recently used chunks until they and the chunks being decoded for
    /// it fit its bound (the newest stays). The bound then holds for everything the reader has mapped, not only for what
    /// it caches — decoding into fresh memory first and evicting afterwards kept up to two chunks more (a decode and a
    /// fetch ahead) — and an evicted buffer is at hand for the decode that needs one.
    /// </summary>
    private void MakeRoom(int reserved)
    {
        lock (gate)
        {
            decodingBytes += reserved;
            TrimToBound();
        }
    }

    /// <summary>Under the lock: evicts down to the bound with <paramref name="incoming"/> bytes about to be cached (that
    /// chunk is then the newest); with none, the newest cached chunk stays.</summary>
    private void TrimToBound(long incoming = 0)
    {
        while (cachedBytes + decodingBytes + incoming > options.CacheBytes && lru.Last is { } last && (incoming > 0 || last != lru.First))
        {
            EvictLast();
        }
    }

    /// <summary>Caches a decoded chunk (or gives its buffer back when another reader was quicker) and keeps the bound.</summary>
    private void Insert(int chunk, NativeChunkBuffer data)
    {
        lock (gate)
        {
            decodingBytes -= DynamicChunkBuffers.Rounded((int)(index.ChunkEnd(chunk) - index.ChunkStart(chunk))); // as Decode reserved
            if (disposed || cache.ContainsKey(chunk))
            {
                DynamicChunkBuffers.Return(data);
                return;
            }

            // Room first, then the chunk: what the cache holds never exceeds its bound, not even for a moment (a lone
            // chunk longer than the bound excepted).
            TrimToBound(data.Length);
            cache[chunk] = lru.AddFirst((chunk, data));
            cachedBytes += data.Length;
            memory?.Charge(data.Length);
        }
    }

    /// <summary>Under the lock: drops the least recently used chunk and gives its buffer back for reuse.</summary>
    private void EvictLast()
    {
        var last = lru.Last!;
        lru.RemoveLast();
        cache.Remove(last.Value.Chunk);
        cachedBytes -= last.Value.Data.Length;
        memory?.Charge(-last.Value.Data.Length);
        DynamicChunkBuffers.Return(last.Value.Data);
    }

    /// <summary>Drops this reader's least recently used chunk for the shared budget; false when it caches none.</summary>
    bool IChunkCache.EvictOldest()
    {
        lock (gate)
        {
            if (lru.Last is null)
            {
                return false;
            }

            EvictLast();
            return true;
        }
    }

    /// <summary>How long <see cref="Dispose"/> waits for decodes under way (a fetch ahead on a pool thread, or a read on
    /// another thread) to give their buffers back.</summary>
    private static readonly TimeSpan DisposeWait = TimeSpan.FromSeconds(10);

    public void Dispose()
    {
        disposed = true;

        // A decode under way ends by giving its buffer back (Insert sees the reader disposed): wait for it, so that when
        // Dispose returns the reader holds no memory (a fetch ahead that outlived it kept a chunk mapped a moment longer).
        // Bounded: a decode stuck on a slow store gives its buffer back when it ends.
        ManualResetEventSlim[] running;
        lock (gate)
        {
            running = [.. inflight.Values];
        }

        var waited = System.Diagnostics.Stopwatch.StartNew();
        foreach (var decode in running)
        {
            var left = DisposeWait - waited.Elapsed;
            if (left <= TimeSpan.Zero || !decode.Wait(left))
            {
                break;
            }
        }

        lock (gate)
        {
            while (lru.Last is not null)
            {
                EvictLast();
            }

            memory?.Unregister(this, 0);
        }
    }
}

/// <summary>
/// Buffers for decoded dynamic chunks, whose lengths vary (PBS: 1…16 MiB around a 4 MiB average): mapped pages outside
/// the managed heap (<see cref="NativeChunkBuffer"/>), unmapped as soon as they are not kept. A buffer is rounded up to
/// a granule (64 KiB below 1 MiB, 1 MiB above) and reused whole for any chunk it fits (the smallest spare that fits);
/// at most <see cref="SpareLimit"/> free buffers of together <see cref="SpareBytesLimit"/> are kept, or a single one of
/// any size, the rest is given back to the system at once. As managed arrays these buffers piled up between full collections (the
/// large-object heap is swept only then): a walk of a v1 archive held 20–45 MiB of dropped buffers and holes on top of
/// its cache, and forcing a collection every 32 MiB of new buffers cost time and still left a sawtooth that high.
/// </summary>
public static class DynamicChunkBuffers
{
    /// <summary>Free buffers kept for reuse (process-wide).</summary>
    public const int SpareLimit = 3;

    /// <summary>Most bytes of free buffers kept, except that one buffer of any size is kept when it is the only one: a reader
    /// evicts a chunk to make room for the next decode, which then takes the evicted buffer with its pages (a fresh one
    /// costs a page fault per 4 KiB: dropping buffers over this limit made a v1 walk fault in 1.6 GB, twice its time on a
    /// virtual machine whose page faults are slow).</summary>
    public const long SpareBytesLimit = 8L * 1024 * 1024;

    private static readonly List<NativeChunkBuffer> Spare = [];
    private static long spareBytes;
    private static long mapped;

    /// <summary>Free buffers kept now.</summary>
    public static int SpareCount
    {
        get
        {
            lock (Spare)
            {
                return Spare.Count;
            }
        }
    }

    /// <summary>Bytes of the free buffers kept now.</summary>
    public static long SpareBytes
    {
        get
        {
            lock (Spare)
            {
                return spareBytes;
            }
        }
    }

    /// <summary>Bytes of all chunk buffers mapped now: the spares, and those in readers' caches or being decoded.</summary>
    public static long MappedBytes => Interlocked.Read(ref mapped);

    public static NativeChunkBuffer Rent(int length)
    {
        var rounded = Rounded(length);
        NativeChunkBuffer? resized = null;
        lock (Spare)
        {
            var best = -1;
            for (var i = 0; i < Spare.Count; i++)
            {
                var l = Spare[i].Length;
                // The smallest that fits, however much larger: its pages are already there (shrinking it to the chunk and
                // growing it again for the next large one faulted the difference in each time).
                if (l >= length && (best < 0 || l < Spare[best].Length))
                {
                    best = i;
                }
            }

            if (best >= 0)
            {
                var found = Spare[best];
                Spare.RemoveAt(best);
                spareBytes -= found.Length;
                return found;
            }

            if (Spare.Count > 0)
            {
                // None fits: the newest spare is resized (its pages stay; only the difference is mapped or unmapped).
                resized = Spare[^1];
                Spare.RemoveAt(Spare.Count - 1);
                spareBytes -= resized.Length;
            }
        }

        if (resized is not null)
        {
            var before = resized.Length;
            try
            {
                resized.Resize(rounded);
                Interlocked.Add(ref mapped, rounded - before);
                return resized;
            }
            catch (OutOfMemoryException)
            {
                Interlocked.Add(ref mapped, -before);
                resized.Dispose();
            }
        }

        var buffer = NativeChunkBuffer.TakePrepared(rounded) ?? new NativeChunkBuffer(rounded);
        Interlocked.Add(ref mapped, rounded);
        return buffer;
    }

    public static void Return(NativeChunkBuffer buffer)
    {
        List<NativeChunkBuffer>? dropped = null;
        lock (Spare)
        {
            // Full: drop the oldest spare buffers first (the newest fit what is being read now).
            while (Spare.Count > 0 && (Spare.Count >= SpareLimit || spareBytes + buffer.Length > SpareBytesLimit))
            {
                spareBytes -= Spare[0].Length;
                (dropped ??= []).Add(Spare[0]);
                Spare.RemoveAt(0);
            }

            if (buffer.Length <= SpareBytesLimit || Spare.Count == 0)
            {
                Spare.Add(buffer);
                spareBytes += buffer.Length;
            }
            else
            {
                (dropped ??= []).Add(buffer);
            }
        }

        foreach (var d in dropped ?? [])
        {
            Interlocked.Add(ref mapped, -d.Length);
            d.Dispose();
        }
    }

    /// <summary>The length of the buffer <see cref="Rent"/> gives for a chunk of <paramref name="length"/> bytes.</summary>
    public static int Rounded(int length)
    {
        var granule = length < 1024 * 1024 ? 64 * 1024 : 1024 * 1024;
        return (int)Math.Min(Array.MaxLength, ((long)Math.Max(length, 1) + granule - 1) / granule * granule);
    }
}
