using System.Buffers;
using System.Collections.Concurrent;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using RestoreFs.Datastore.S3;

namespace RestoreFs.Datastore;

/// <summary>
/// The store seam over an S3 datastore (<c>s3://BUCKET/STORE</c>): content files are GETs of
/// <c>STORE/.cnt/&lt;path&gt;</c>, directories and kinds come from the cached, refreshing listing, chunks are GETs of
/// <c>STORE/.chunks/&lt;4 hex&gt;/&lt;digest&gt;</c> through the local chunk cache. Reads only. The seam is synchronous:
/// each call waits for its request with a bounded timeout and gives up with a typed error naming the object. Requests
/// for a chunk already on its way share that one GET, so a chunk costs at most one GET per cache lifetime.
/// The image reader's path (<see cref="IAsyncChunkFiles"/>) is asynchronous end to end: a GET holds no thread, its
/// body lands in a pooled buffer, the reader's decoder verifies it where it arrived, and the local cache is written
/// afterwards by a background writer, off the read's path.
/// </summary>
internal sealed class S3StoreFiles : IStoreFiles, IAsyncChunkFiles, IDisposable
{
    /// <summary>Cache writes waiting for the writer; beyond this the fetching thread writes itself (back-pressure).</summary>
    private const int CacheWriteQueue = 8;

    private readonly TimeSpan timeout;
    private readonly ConcurrentDictionary<string, Lazy<Task<byte[]?>>> inflight = new(StringComparer.Ordinal);
    private readonly ArrayPool<byte> blobPool = new GranularArrayPool(24);
    private readonly Dictionary<string, PendingFetch> fetching = new(StringComparer.Ordinal);
    private readonly Lock fetchGate = new();
    private readonly Channel<(string Digest, SharedBlob Blob)>? cacheWrites;
    private readonly Task? cacheWriter;
    private readonly ILogger log;

    public S3StoreFiles(S3StoreSource source, TimeSpan timeout, ILoggerFactory? logs = null)
    {
        Source = source;
        this.timeout = timeout;
        log = (ILogger?)logs?.CreateLogger<S3StoreFiles>() ?? NullLogger.Instance;
        if (source.Cache is not null)
        {
            cacheWrites = Channel.CreateBounded<(string, SharedBlob)>(new BoundedChannelOptions(CacheWriteQueue) { SingleReader = true });
            cacheWriter = Task.Run(WriteCacheAsync);
        }
    }

    public S3StoreSource Source { get; }

    public string Describe(string relativePath) => relativePath.StartsWith(".chunks/", StringComparison.Ordinal)
        ? S3Client.Describe(Source.Location.Bucket, $"{Source.Location.Store}/{relativePath}")
        : Source.Describe(relativePath);

    private T Wait<T>(Func<CancellationToken, Task<T>> operation, string describe)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            return Task.Run(() => operation(cts.Token), cts.Token).GetAwaiter().GetResult();
        }
        catch (OperationCanceledException e) when (cts.IsCancellationRequested)
        {
            throw new S3EndpointException($"no answer from {Source.Client.Endpoint} within {timeout.TotalSeconds:0} s", describe, e);
        }
    }

    public IStoreFile? TryOpen(string relativePath)
    {
        StorePath.Check(relativePath, Describe(relativePath));
        var describe = Describe(relativePath);
        var tree = Wait(ct => Source.Listing.GetAsync(ct), describe);
        if (tree.Kind(relativePath) == S3TreeEntryKind.Directory)
        {
            throw new StoreEntryRefusedException("a directory (key prefix) where a file belongs", describe);
        }

        // Refuse what no datastore file may be before fetching it (the largest file is an index).
        if (tree.File(relativePath) is { } info && info.Size > StoreLimits.MaxIndexFile)
        {
            throw new StoreLimitException($"object has {info.Size} bytes, more than any datastore file may ({StoreLimits.MaxIndexFile})", describe);
        }

        var data = Wait(ct => Source.TryGetFileAsync(relativePath, ct), describe);
        return data is null ? null : new MemoryStoreFile(relativePath, data);
    }

    public IStoreFile? TryOpenChunk(string digestHex)
    {
        var path = StorePath.ChunkPath(digestHex);
        var describe = Describe(path);
        var lazy = inflight.GetOrAdd(digestHex, d => new Lazy<Task<byte[]?>>(() => Fetch(d)));
        try
        {
            var data = Wait(ct => lazy.Value.WaitAsync(ct), describe);
            return data is null ? null : new MemoryStoreFile(path, data);
        }
        finally
        {
            if (lazy.IsValueCreated && lazy.Value.IsCompleted)
            {
                inflight.TryRemove(new KeyValuePair<string, Lazy<Task<byte[]?>>>(digestHex, lazy));
            }
        }
    }

    public async ValueTask<bool> ReadChunkAsync(string digestHex, ChunkBlobDecoder decode, CancellationToken ct = default)
    {
        var describe = Describe(StorePath.ChunkPath(digestHex));
        if (Source.Cache is { } cache && cache.TryRead(digestHex, (int)StoreLimits.MaxChunkFile) is { } entry)
        {
            using (entry)
            {
                try
                {
                    decode(entry.Span);
                    cache.Touch(digestHex);
                    return true;
                }
                catch (ChunkCorruptException e)
                {
                    // A damaged cache entry: drop it and fetch the chunk again.
                    log.LogWarning("Cached chunk {Digest} is damaged ({Reason}); fetching it again", digestHex, e.Message);
                    cache.Reject(digestHex);
                }
            }
        }

        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(timeout);
        SharedBlob? blob;
        try
        {
            blob = await FetchSharedAsync(digestHex, cts.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException e) when (cts.IsCancellationRequested && !ct.IsCancellationRequested)
        {
            throw new S3EndpointException($"no answer from {Source.Client.Endpoint} within {timeout.TotalSeconds:0} s", describe, e);
        }
        catch (S3ObjectTooLargeException e)
        {
            throw new ChunkCorruptException($"chunk object is too large: {e.Message}", describe, null, digestHex, e);
        }

        if (blob is null)
        {
            return false;
        }

        try
        {
            decode(blob.Span);
            QueueCacheWrite(digestHex, blob);
        }
        finally
        {
            blob.Release();
        }

        return true;
    }

    /// <summary>
    /// One GET per digest at a time: callers asking for a chunk already on its way wait for that GET and share its
    /// buffer (each holds a reference; the last one returns it to the pool).
    /// </summary>
    private async Task<SharedBlob?> FetchSharedAsync(string digestHex, CancellationToken ct)
    {
        PendingFetch pending;
        bool owner;
        lock (fetchGate)
        {
            owner = !fetching.TryGetValue(digestHex, out var running);
            if (owner)
            {
                pending = new PendingFetch();
                fetching[digestHex] = pending;
            }
            else
            {
                pending = running!;
                pending.Joiners++;
            }
        }

        if (!owner)
        {
            // A joiner that gives up early leaves its reference unreleased: the buffer then goes to the GC, not the pool.
            return await pending.Done.Task.WaitAsync(ct).ConfigureAwait(false);
        }

        try
        {
            var got = await Source.GetChunkPooledAsync(digestHex, blobPool, (int)StoreLimits.MaxChunkFile, ct).ConfigureAwait(false);
            SharedBlob? blob = null;
            lock (fetchGate)
            {
                fetching.Remove(digestHex);
                if (got is { } g)
                {
                    blob = new SharedBlob(blobPool, g.Buffer, g.Length, 1 + pending.Joiners);
                }
            }

            pending.Done.SetResult(blob);
            return blob;
        }
        catch (Exception e)
        {
            lock (fetchGate)
            {
                fetching.Remove(digestHex);
            }

            pending.Done.SetException(e);
            throw;
        }
    }

    /// <summary>Hands verified bytes to the cache writer (once per fetch); writes here when the writer is behind.</summary>
    private void QueueCacheWrite(string digestHex, SharedBlob blob)
    {
        if (cacheWrites is null || Interlocked.Exchange(ref blob.CacheQueued, 1) != 0)
        {
            return;
        }

        blob.AddRef();
        if (!cacheWrites.Writer.TryWrite((digestHex, blob)))
        {
            try
            {
                PutInCache(digestHex, blob);
            }
            finally
            {
                blob.Release();
            }
        }
    }

    private async Task WriteCacheAsync()
    {
        await foreach (var (digest, blob) in cacheWrites!.Reader.ReadAllAsync().ConfigureAwait(false))
        {
            try
            {
                PutInCache(digest, blob);
            }
            finally
            {
                blob.Release();
            }
        }
    }

    private void PutInCache(string digestHex, SharedBlob blob)
    {
        try
        {
            Source.Cache!.Put(digestHex, blob.Span);
        }
        catch (DatastoreException e)
        {
            // The read succeeded; only the local copy is missing (a full or read-only disk): say so, once per chunk.
            log.LogWarning("Chunk {Digest} not kept in the local cache: {Reason}", digestHex, e.Message);
        }
    }

    private sealed class PendingFetch
    {
        public TaskCompletionSource<SharedBlob?> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        /// <summary>Callers waiting for this GET (under the fetch lock).</summary>
        public int Joiners { get; set; }
    }

    /// <summary>A fetched chunk in a pooled buffer, shared by reference count.</summary>
    private sealed class SharedBlob(ArrayPool<byte> pool, byte[] buffer, int length, int references)
    {
        private int references = references;

        public int CacheQueued;

        public ReadOnlySpan<byte> Span => buffer.AsSpan(0, length);

        public void AddRef() => Interlocked.Increment(ref references);

        public void Release()
        {
            if (Interlocked.Decrement(ref references) == 0)
            {
                pool.Return(buffer);
            }
        }
    }

    /// <summary>One GET (or cache hit) per chunk; the cache keeps only bytes whose blob header and CRC are sound.</summary>
    private async Task<byte[]?> Fetch(string digestHex)
    {
        using var cts = new CancellationTokenSource(timeout);
        return await Source.TryGetChunkAsync(digestHex, BlobLooksSound, cts.Token).ConfigureAwait(false);
    }

    private static bool BlobLooksSound(byte[] blob)
    {
        try
        {
            DataBlob.Verify(blob, string.Empty);
            return blob.Length <= StoreLimits.MaxChunkFile;
        }
        catch (DatastoreException)
        {
            return false;
        }
    }

    public IReadOnlyList<StoreEntry>? ListDirectory(string relativePath)
    {
        StorePath.Check(relativePath, Describe(relativePath));
        var tree = Wait(ct => Source.Listing.GetAsync(ct), Describe(relativePath));
        return tree.ListDirectory(relativePath)?
            .Select(e => new StoreEntry(e.Name, e.Kind == S3TreeEntryKind.Directory ? StoreEntryKind.Directory : StoreEntryKind.File))
            .ToList();
    }

    public StoreEntryKind? Kind(string relativePath)
    {
        if (relativePath == ".chunks")
        {
            // The chunk store is a key prefix of its own, outside the listed content.
            return StoreEntryKind.Directory;
        }

        StorePath.Check(relativePath, Describe(relativePath));
        var tree = Wait(ct => Source.Listing.GetAsync(ct), Describe(relativePath));
        return tree.Kind(relativePath) switch
        {
            S3TreeEntryKind.Directory => StoreEntryKind.Directory,
            S3TreeEntryKind.File => StoreEntryKind.File,
            _ => null,
        };
    }

    /// <summary>When the content at a path last changed (newest object below it), null when absent.</summary>
    public DateTimeOffset? Modified(string relativePath)
    {
        var tree = Wait(ct => Source.Listing.GetAsync(ct), Describe(relativePath));
        return tree.Modified(relativePath);
    }

    public void Dispose()
    {
        if (cacheWrites is not null)
        {
            // Let the chunks already fetched reach the cache (a remount finds them), within bounds.
            cacheWrites.Writer.TryComplete();
            _ = cacheWriter!.Wait(timeout);
        }

        Source.Cache?.Dispose();
        Source.Dispose();
    }

    /// <summary>A fetched object held in memory.</summary>
    private sealed class MemoryStoreFile(string relativePath, byte[] data) : IStoreFile
    {
        public string RelativePath => relativePath;

        public long Length => data.Length;

        public int ReadAt(Span<byte> destination, long offset)
        {
            if (offset >= data.Length)
            {
                return 0;
            }

            var n = (int)Math.Min(destination.Length, data.Length - offset);
            data.AsSpan((int)offset, n).CopyTo(destination);
            return n;
        }

        public void WillNeed(long offset, long length)
        {
        }

        public void Dispose()
        {
        }
    }
}
