namespace RestoreFs.Datastore;

/// <summary>Tuning of a <see cref="DynamicImageReader"/>.</summary>
public sealed record DynamicImageReaderOptions(long CacheBytes = 64L * 1024 * 1024, bool VerifyDigests = true);

/// <summary>
/// Random-access reads over a dynamic index (<c>.didx</c>, spec section 4): the stream its chunks reassemble, e.g. a
/// pxar archive or a catalog. Thread-safe. Chunks are found by binary search over their end offsets, decoded,
/// digest-checked and kept in a bounded LRU cache; a damaged or missing chunk fails only the reads that touch it
/// (failures are not cached).
/// </summary>
public sealed class DynamicImageReader : IDisposable
{
    /// <summary>PBS's dynamic chunks are at most 16 MiB (4 × the 4 MiB average); anything bigger is a corrupt index.</summary>
    public const int MaxChunkLength = 16 * 1024 * 1024;

    private readonly DynamicIndex index;
    private readonly ChunkStore chunks;
    private readonly CryptConfig? key;
    private readonly bool encrypted;
    private readonly DynamicImageReaderOptions options;
    private readonly object gate = new();
    private readonly Dictionary<int, LinkedListNode<(int Chunk, byte[] Data)>> cache = new();
    private readonly LinkedList<(int Chunk, byte[] Data)> lru = new();
    private long cachedBytes;
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
    }

    /// <summary>Opens <paramref name="archive"/> (a <c>.didx</c> name, with or without the suffix) of a snapshot, checked against its manifest.</summary>
    public static DynamicImageReader Open(DatastoreReader store, SnapshotInfo snapshot, string archive, CryptConfig? key,
        DynamicImageReaderOptions? options = null)
    {
        var name = archive.EndsWith(".didx", StringComparison.Ordinal) ? archive : archive + ".didx";
        var (index, file) = store.OpenDynamicIndex(snapshot, name, key);
        return new DynamicImageReader(index, store.Chunks, key, file.CryptMode == CryptMode.Encrypt, options);
    }

    public long Size => index.Size;

    public int ChunkCount => index.ChunkCount;

    public string IndexPath => index.Path;

    public (long Hits, long Misses) Stats => (Interlocked.Read(ref hits), Interlocked.Read(ref misses));

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

        var length = (int)Math.Min(destination.Length, index.Size - offset);
        var done = 0;
        var chunk = index.ChunkAt(offset);
        while (done < length)
        {
            var start = index.ChunkStart(chunk);
            var data = Chunk(chunk);
            var inChunk = (int)(offset + done - start);
            var n = Math.Min(length - done, data.Length - inChunk);
            data.AsSpan(inChunk, n).CopyTo(destination[done..]);
            done += n;
            chunk++;
        }

        return length;
    }

    private byte[] Chunk(int chunk)
    {
        lock (gate)
        {
            if (cache.TryGetValue(chunk, out var node))
            {
                lru.Remove(node);
                lru.AddFirst(node);
                hits++;
                return node.Value.Data;
            }

            misses++;
        }

        var start = index.ChunkStart(chunk);
        var data = new byte[index.ChunkEnd(chunk) - start];
        var digest = index.Digest(chunk);
        var blob = chunks.ReadRented(digest, start, out var blobLength);
        try
        {
            DataBlob.DecodeChunk(blob.AsSpan(0, blobLength), key, encrypted, data, digest, chunks.PathOf(digest), start, options.VerifyDigests);
        }
        finally
        {
            BlobBuffers.Pool.Return(blob);
        }

        lock (gate)
        {
            if (!disposed && !cache.ContainsKey(chunk))
            {
                cache[chunk] = lru.AddFirst((chunk, data));
                cachedBytes += data.Length;
                while (cachedBytes > options.CacheBytes && lru.Last is { } last && last != lru.First)
                {
                    lru.RemoveLast();
                    cache.Remove(last.Value.Chunk);
                    cachedBytes -= last.Value.Data.Length;
                }
            }
        }

        return data;
    }

    public void Dispose()
    {
        disposed = true;
        lock (gate)
        {
            cache.Clear();
            lru.Clear();
            cachedBytes = 0;
        }
    }
}
