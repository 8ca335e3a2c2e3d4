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
/// all chunks, without a lock across readers). Free chunk buffers are kept for reuse up to a few, not per reader.
/// <see cref="DynamicImageReader"/>s (pxar archives, catalogs) take part in the same budget; their variable-length
/// buffers are pooled by <see cref="DynamicChunkBuffers"/>, not here.
/// </summary>
public sealed class ChunkMemory
{
    private readonly object gate = new();
    private readonly HashSet<IChunkCache> readers = [];
    private readonly Stack<byte[]> spare = new();
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

    internal byte[] Rent(int size)
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
            }
        }

        return GC.AllocateUninitializedArray<byte>(size);
    }

    internal void Return(byte[] data)
    {
        lock (gate)
        {
            if (spare.Count < spareLimit)
            {
                spare.Push(data);
            }
        }
    }

    /// <summary>Drops the spare buffers (after a large release, so the collector can give the memory back).</summary>
    public void DropSpares()
    {
        lock (gate)
        {
            spare.Clear();
        }
    }

    /// <summary>Brings the readers back within the budget: the least recently used reader evicts its oldest chunk,
    /// until the total fits. Called by a reader after it cached a chunk, outside its own lock.</summary>
    internal void Trim()
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
