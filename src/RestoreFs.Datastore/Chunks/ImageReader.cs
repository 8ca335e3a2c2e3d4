namespace RestoreFs.Datastore;

/// <summary>Tuning of an <see cref="ImageReader"/>.</summary>
/// <param name="Memory">A budget shared with other readers (a mount's); null: this reader's own, bounded by
/// <paramref name="CacheBytes"/> alone.</param>
public sealed record ImageReaderOptions(long CacheBytes = 256L * 1024 * 1024, int ReadAheadChunks = 4, bool VerifyDigests = true, ChunkMemory? Memory = null);

/// <summary>Counters of an <see cref="ImageReader"/>.</summary>
public sealed record ImageReaderStats(long Hits, long Misses, long DecodedBytes, long ZeroChunkReads, long ReadAheads);

/// <summary>
/// Random-access reads over a fixed index (spec section 7). Thread-safe. Decoded chunks live in a bounded LRU cache;
/// two readers of the same uncached chunk decode it once; every chunk's digest is checked before its bytes are served;
/// all-zero chunks are served without touching the store; sequential access starts read-ahead of the next chunks on
/// the thread pool. A damaged or missing chunk fails only the reads that touch it (failures are not cached).
/// </summary>
public sealed class ImageReader : IDisposable, IChunkCache
{
    private readonly FixedIndex index;
    private readonly ChunkStore chunks;
    private readonly IAsyncChunkFiles? remote;
    private readonly CryptConfig? key;
    private readonly bool encrypted;
    private readonly ImageReaderOptions options;
    private readonly byte[] zeroDigestFull;
    private readonly byte[] zeroDigestLast;
    private readonly object gate = new();
    private readonly Dictionary<int, LinkedListNode<ChunkBuffer>> cache = new();
    private readonly LinkedList<ChunkBuffer> lru = new();
    private readonly Dictionary<int, Task<ChunkBuffer>> inflight = new();
    private readonly ChunkMemory memory;
    private long cachedBytes;
    private long lastUse;
    private int lastChunk = -2;
    private long hits;
    private long misses;
    private long decodedBytes;
    private long zeroReads;
    private long readAheads;
    private volatile bool disposed;

    internal ImageReader(FixedIndex index, ChunkStore chunks, CryptConfig? key, bool encrypted, ImageReaderOptions? options)
    {
        this.index = index;
        this.chunks = chunks;
        remote = chunks.Remote;
        this.key = key;
        this.encrypted = encrypted;
        this.options = options ?? new ImageReaderOptions();
        zeroDigestFull = ZeroDigest(index.ChunkSize);
        zeroDigestLast = ZeroDigest(index.ChunkLength(index.ChunkCount - 1));
        memory = this.options.Memory ?? new ChunkMemory(long.MaxValue / 2, spareBuffers: this.options.ReadAheadChunks + 8);
        memory.Register(this);
    }

    /// <summary>Decoded bytes this reader holds in its cache.</summary>
    public long CachedBytes => Interlocked.Read(ref cachedBytes);

    /// <summary>When the reader was last asked for a chunk (for the shared budget's choice of whom to trim).</summary>
    long IChunkCache.LastUse => Interlocked.Read(ref lastUse);

    public long Size => index.Size;

    public int ChunkSize => index.ChunkSize;

    public int ChunkCount => index.ChunkCount;

    public string IndexPath => index.Path;

    public ImageReaderStats Stats => new(Interlocked.Read(ref hits), Interlocked.Read(ref misses), Interlocked.Read(ref decodedBytes),
        Interlocked.Read(ref zeroReads), Interlocked.Read(ref readAheads));

    public string ChunkDigestHex(int chunk) => index.DigestHex(chunk);

    /// <summary>Whether the chunk's digest is the one of an all-zero chunk of its length.</summary>
    public bool IsZeroChunk(int chunk) =>
        index.Digest(chunk).SequenceEqual(chunk == index.ChunkCount - 1 ? zeroDigestLast : zeroDigestFull);

    private byte[] ZeroDigest(int length) => CryptConfig.ZeroChunkDigest(encrypted ? key : null, length);

    /// <summary>Reads min(destination.Length, Size − offset) bytes at <paramref name="offset"/>; 0 at or past the end.</summary>
    public int Read(long offset, Span<byte> destination)
    {
        var length = Clamp(offset, destination.Length);
        var done = 0;
        while (done < length)
        {
            var position = offset + done;
            var chunk = (int)(position / index.ChunkSize);
            var inChunk = (int)(position - (long)chunk * index.ChunkSize);
            var n = Math.Min(length - done, index.ChunkLength(chunk) - inChunk);
            if (IsZeroChunk(chunk))
            {
                Interlocked.Increment(ref zeroReads);
                destination.Slice(done, n).Clear();
            }
            else
            {
                var buffer = AcquireAsync(chunk).AsTask().GetAwaiter().GetResult();
                buffer.Data.Slice(inChunk, n).CopyTo(destination[done..]);
                Release(buffer);
            }

            done += n;
        }

        return length;
    }

    /// <summary>The asynchronous form of <see cref="Read"/>.</summary>
    public async ValueTask<int> ReadAsync(long offset, Memory<byte> destination, CancellationToken ct = default)
    {
        var length = Clamp(offset, destination.Length);
        var done = 0;
        while (done < length)
        {
            ct.ThrowIfCancellationRequested();
            var position = offset + done;
            var chunk = (int)(position / index.ChunkSize);
            var inChunk = (int)(position - (long)chunk * index.ChunkSize);
            var n = Math.Min(length - done, index.ChunkLength(chunk) - inChunk);
            if (IsZeroChunk(chunk))
            {
                Interlocked.Increment(ref zeroReads);
                destination.Span.Slice(done, n).Clear();
            }
            else
            {
                var buffer = await AcquireAsync(chunk).ConfigureAwait(false);
                buffer.Data.Slice(inChunk, n).CopyTo(destination.Span[done..]);
                Release(buffer);
            }

            done += n;
        }

        return length;
    }

    private int Clamp(long offset, int length)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (offset < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), offset, "negative offset");
        }

        return offset >= index.Size ? 0 : (int)Math.Min(length, index.Size - offset);
    }

    /// <summary>
    /// The decoded chunk with one reference held for the caller (give it back with <see cref="Release"/>): from the
    /// cache, from a decode already under way, or decoded now on this thread.
    /// </summary>
    private async ValueTask<ChunkBuffer> AcquireAsync(int chunk)
    {
        while (true)
        {
            Task<ChunkBuffer> running;
            TaskCompletionSource<ChunkBuffer>? mine = null;
            lock (gate)
            {
                lastUse = System.Diagnostics.Stopwatch.GetTimestamp();
                NoteAccess(chunk);
                if (cache.TryGetValue(chunk, out var node))
                {
                    lru.Remove(node);
                    lru.AddFirst(node);
                    hits++;
                    node.Value.Refs++;
                    return node.Value;
                }

                if (!inflight.TryGetValue(chunk, out running!))
                {
                    misses++;
                    mine = new TaskCompletionSource<ChunkBuffer>(TaskCreationOptions.RunContinuationsAsynchronously);
                    inflight[chunk] = mine.Task;
                }
                else
                {
                    hits++;
                }
            }

            if (mine is not null)
            {
                return (remote is not null ? await LoadRemoteAsync(remote, chunk, mine, forCaller: true).ConfigureAwait(false) : Load(chunk, mine, forCaller: true))
                    ?? await mine.Task.ConfigureAwait(false);
            }

            var buffer = await running.ConfigureAwait(false);
            lock (gate)
            {
                // Still alive (cached or held by someone): take a reference. Recycled meanwhile: look again.
                if (buffer.Refs > 0 && buffer.Chunk == chunk)
                {
                    buffer.Refs++;
                    return buffer;
                }
            }
        }
    }

    /// <summary>Gives back a reference; the buffer returns to the pool when nobody holds it.</summary>
    private void Release(ChunkBuffer buffer)
    {
        lock (gate)
        {
            if (--buffer.Refs == 0)
            {
                buffer.Chunk = -1;
                memory.Return(buffer.Data);
            }
        }
    }

    /// <summary>Decodes a chunk into a pooled buffer and caches it. Returns the buffer with a caller reference when asked.</summary>
    private ChunkBuffer? Load(int chunk, TaskCompletionSource<ChunkBuffer> completion, bool forCaller)
    {
        var buffer = RentBuffer();
        try
        {
            Decode(chunk, buffer.Data, index.ChunkLength(chunk));
        }
        catch (Exception e)
        {
            Fail(chunk, buffer, completion, e);
            if (forCaller)
            {
                throw;
            }

            return null;
        }

        return Finish(chunk, buffer, completion, forCaller);
    }

    /// <summary>
    /// <see cref="Load"/> for a store in object storage: the fetch holds no thread while it waits, the bytes are
    /// decoded (and verified) where they arrived.
    /// </summary>
    private async Task<ChunkBuffer?> LoadRemoteAsync(IAsyncChunkFiles remote, int chunk, TaskCompletionSource<ChunkBuffer> completion, bool forCaller)
    {
        var buffer = RentBuffer();
        try
        {
            var offset = (long)chunk * index.ChunkSize;
            var digest = index.Digest(chunk).ToArray();
            var length = index.ChunkLength(chunk);
            var path = chunks.PathOf(digest);
            await chunks.DecodeRemoteAsync(remote, digest, offset,
                blob => DataBlob.DecodeChunk(blob, key, encrypted, buffer.Data.Slice(0, length), digest, path, offset, options.VerifyDigests)).ConfigureAwait(false);
            Interlocked.Add(ref decodedBytes, length);
        }
        catch (Exception e)
        {
            Fail(chunk, buffer, completion, e);
            if (forCaller)
            {
                throw;
            }

            return null;
        }

        return Finish(chunk, buffer, completion, forCaller);
    }

    private void Decode(int chunk, NativeChunkBuffer destination, int length)
    {
        var offset = (long)chunk * index.ChunkSize;
        var digest = index.Digest(chunk);
        // Decrypt, decompress and hash while the chunk file is still arriving: a cold random read then waits for the
        // disk, not for the disk and then each step in turn.
        StreamedChunkDecoder.ReadAndDecode(chunks, digest, offset, key, encrypted, destination, length, options.VerifyDigests, b => BlobBuffers.Pool.Return(b));

        Interlocked.Add(ref decodedBytes, length);
    }

    /// <summary>
    /// A buffer for one decode, counted in the shared budget from now on: a decode under way (read-ahead runs several)
    /// holds a chunk's memory as a cached chunk does, so the oldest cached chunks give way first and the budget bounds
    /// both. <see cref="Finish"/> hands the charge over to the cache, <see cref="Fail"/> gives it back.
    /// </summary>
    private ChunkBuffer RentBuffer()
    {
        memory.Charge(index.ChunkSize);
        memory.Trim();
        return new(memory.Rent(index.ChunkSize));
    }

    private void Fail(int chunk, ChunkBuffer buffer, TaskCompletionSource<ChunkBuffer> completion, Exception e)
    {
        lock (gate)
        {
            inflight.Remove(chunk);
        }

        memory.Charge(-index.ChunkSize);
        memory.Return(buffer.Data);
        completion.SetException(e);
    }

    private ChunkBuffer? Finish(int chunk, ChunkBuffer buffer, TaskCompletionSource<ChunkBuffer> completion, bool forCaller)
    {
        lock (gate)
        {
            inflight.Remove(chunk);
            buffer.Chunk = chunk;
            buffer.Refs = forCaller ? 1 : 0;
            memory.Charge(-index.ChunkSize); // the decode's charge: the cache charges the buffer again if it keeps it
            Insert(chunk, buffer);
            if (buffer.Refs == 0)
            {
                buffer.Chunk = -1;
                memory.Return(buffer.Data);
            }
        }

        memory.Trim();
        completion.SetResult(buffer);
        return forCaller ? buffer : null;
    }

    /// <summary>Under the lock: caches a freshly decoded buffer (the cache holds one reference) and evicts the oldest.</summary>
    private void Insert(int chunk, ChunkBuffer buffer)
    {
        if (disposed || cache.ContainsKey(chunk))
        {
            return;
        }

        buffer.Refs++;
        cache[chunk] = lru.AddFirst(buffer);
        cachedBytes += index.ChunkSize;
        memory.Charge(index.ChunkSize);
        while (cachedBytes > Math.Max(options.CacheBytes, index.ChunkSize) && lru.Last is not null)
        {
            EvictLast();
        }
    }

    /// <summary>Under the lock: drops the least recently used cached chunk.</summary>
    private void EvictLast()
    {
        var last = lru.Last!;
        lru.RemoveLast();
        cache.Remove(last.Value.Chunk);
        cachedBytes -= index.ChunkSize;
        memory.Charge(-index.ChunkSize);
        if (--last.Value.Refs == 0)
        {
            last.Value.Chunk = -1;
            memory.Return(last.Value.Data);
        }
    }

    /// <summary>Drops every cached chunk (nobody is expected to read this image soon); buffers in use stay theirs.</summary>
    public void DropCache()
    {
        lock (gate)
        {
            while (lru.Last is not null)
            {
                EvictLast();
            }
        }
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

    /// <summary>Under the lock: on sequential access, decode the next chunks ahead of the reader on the thread pool.</summary>
    private void NoteAccess(int chunk)
    {
        var sequential = chunk == lastChunk || chunk == lastChunk + 1;
        var advanced = chunk != lastChunk;
        lastChunk = chunk;
        if (!sequential || !advanced || options.ReadAheadChunks <= 0)
        {
            return;
        }

        // At most half of what may be cached: this reader's bound, and the budget it shares with the mount's other
        // readers (decodes under way count in it). Chunks fetched further ahead would push each other out before the
        // reader gets there, and each would be fetched again (an S3 store's 8 GETs in flight under --cache-mb 16).
        var room = Math.Min(options.CacheBytes, memory.Capacity);
        var budget = (int)Math.Min(options.ReadAheadChunks, Math.Max(1, room / index.ChunkSize / 2));
        for (var next = chunk + 1; next <= chunk + budget && next < index.ChunkCount; next++)
        {
            if (cache.ContainsKey(next) || inflight.ContainsKey(next) || IsZeroChunk(next))
            {
                continue;
            }

            var completion = new TaskCompletionSource<ChunkBuffer>(TaskCreationOptions.RunContinuationsAsynchronously);
            inflight[next] = completion.Task;
            readAheads++;
            var target = next;
            ThreadPool.UnsafeQueueUserWorkItem(_ =>
            {
                if (remote is not null)
                {
                    // Starts the GET and gives this thread back; decoding runs where the answer arrives.
                    _ = LoadRemoteAsync(remote, target, completion, forCaller: false);
                    _ = completion.Task.ContinueWith(t => _ = t.Exception, CancellationToken.None,
                        TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
                }
                else
                {
                    Load(target, completion, forCaller: false);
                    _ = completion.Task.Exception; // a failed read-ahead is reported to the reader that asks for the chunk
                }
            }, null);
        }
    }

    /// <summary>A decoded chunk in a reusable buffer; <see cref="Refs"/> counts the cache and the readers copying from it
    /// (the buffer goes back to the pool, where it may be unmapped, only when that is 0).</summary>
    private sealed class ChunkBuffer(NativeChunkBuffer data)
    {
        public NativeChunkBuffer Data { get; } = data;

        public int Chunk { get; set; } = -1;

        public int Refs { get; set; }
    }

    public void Dispose()
    {
        disposed = true;
        lock (gate)
        {
            // Through EvictLast: its buffers go back to the pool (or are unmapped), except those a reader still copies
            // from, which go back when it is done.
            while (lru.Last is not null)
            {
                EvictLast();
            }

            memory.Unregister(this, 0);
        }

        if (options.Memory is null)
        {
            memory.DropSpares(); // this reader's own pool: nobody else will rent from it
        }
    }
}
