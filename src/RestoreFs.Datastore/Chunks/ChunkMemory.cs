namespace RestoreFs.Datastore;

/// <summary>A reader's cache of decoded chunks, as <see cref="ChunkMemory"/> sees it.</summary>
internal interface IChunkCache
{
    long CachedBytes { get; }

    /// <summary>When the cache was last read (a <see cref="System.Diagnostics.Stopwatch"/> timestamp).</summary>
    long LastUse { get; }

    /// <summary>Drops the least recently used chunk; false when none is cached.</summary>
    bool EvictOldest();
}

/// <summary>
/// One budget of decoded chunk bytes shared by many <see cref="ImageReader"/>s — a mount's readers of every snapshot
/// browsed — so memory stays within the budget however many images are opened. When the readers together hold more
/// than <see cref="Capacity"/>, the reader used least recently gives up its oldest chunks first (close to one LRU over
/// all chunks, without a lock across readers). Free chunk buffers are kept for reuse up to a few, not per reader; the
/// buffers are mapped pages outside the managed heap (<see cref="NativeChunkBuffer"/>), unmapped when not kept.
/// <see cref="DynamicImageReader"/>s (pxar archives, catalogs) take part in the same budget; their variable-length
/// buffers are pooled by <see cref="DynamicChunkBuffers"/>, not here.
/// </summary>
public sealed class ChunkMemory
{
    private readonly object gate = new();
    private readonly object trimming = new();
    private readonly HashSet<IChunkCache> readers = [];
    private readonly Stack<NativeChunkBuffer> spare = new();
    private readonly int spareLimit;
    private long used;

    public ChunkMemory(long capacity, int spareBuffers = 2)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        Capacity = capacity;
        spareLimit = spareBuffers;
    }

    public long Capacity { get; }

    /// <summary>Decoded chunk bytes the readers hold in their caches now, and fixed-index decodes under way.</summary>
    public long Used => Interlocked.Read(ref used);

    /// <summary>Free buffers kept for reuse.</summary>
    public int SpareBuffers
    {
        get
        {
            lock (gate)
            {
                return spare.Count;
            }
        }
    }

    internal void Register(IChunkCache reader)
    {
        lock (gate)
        {
            readers.Add(reader);
        }
    }

    internal void Unregister(IChunkCache reader, long held)
    {
        lock (gate)
        {
            readers.Remove(reader);
        }

        Interlocked.Add(ref used, -held);
    }

    internal void Charge(long bytes) => Interlocked.Add(ref used, bytes);

    /// <summary>A buffer of <paramref name="size"/> bytes: a spare one, the one prepared at start-up, or freshly mapped.</summary>
    internal NativeChunkBuffer Rent(int size)
    {
        List<NativeChunkBuffer>? other = null;
        try
        {
            lock (gate)
            {
                while (spare.Count > 0)
                {
                    var data = spare.Pop();
                    if (data.Length == size)
                    {
                        return data;
                    }

                    (other ??= []).Add(data);
                }
            }

            return NativeChunkBuffer.TakePrepared(size) ?? new NativeChunkBuffer(size);
        }
        finally
        {
            other?.ForEach(b => b.Dispose());
        }
    }

    /// <summary>Takes a buffer nobody reads any more: kept as a spare, or unmapped at once.</summary>
    internal void Return(NativeChunkBuffer data)
    {
        lock (gate)
        {
            if (spare.Count < spareLimit)
            {
                spare.Push(data);
                return;
            }
        }

        data.Dispose();
    }

    /// <summary>Unmaps the spare buffers (after a large release: their memory goes back to the system).</summary>
    public void DropSpares()
    {
        NativeChunkBuffer[] dropped;
        lock (gate)
        {
            dropped = [.. spare];
            spare.Clear();
        }

        foreach (var d in dropped)
        {
            d.Dispose();
        }
    }

    /// <summary>Brings the readers back within the budget: the least recently used reader evicts its oldest chunk,
    /// until the total fits. Called by a reader after it cached a chunk or charged a decode, outside its own lock.
    /// One trim at a time: two readers that both saw the budget exceeded by one chunk would each evict one, and the
    /// second eviction could take a chunk read ahead that nobody has read yet (decoded again when its reader gets there).</summary>
    internal void Trim()
    {
        if (Interlocked.Read(ref used) <= Capacity)
        {
            return;
        }

        lock (trimming)
        {
            while (Interlocked.Read(ref used) > Capacity)
            {
                IChunkCache? victim = null;
                lock (gate)
                {
                    foreach (var reader in readers)
                    {
                        if (reader.CachedBytes > 0 && (victim is null || reader.LastUse < victim.LastUse))
                        {
                            victim = reader;
                        }
                    }
                }

                if (victim is null || !victim.EvictOldest())
                {
                    return; // nothing left to evict (all in use by readers right now)
                }
            }
        }
    }
}
