using System.Collections.Concurrent;
using RestoreFs.Datastore.S3;

namespace RestoreFs.Datastore;

/// <summary>
/// The store seam over an S3 datastore (<c>s3://BUCKET/STORE</c>): content files are GETs of
/// <c>STORE/.cnt/&lt;path&gt;</c>, directories and kinds come from the cached, refreshing listing, chunks are GETs of
/// <c>STORE/.chunks/&lt;4 hex&gt;/&lt;digest&gt;</c> through the local chunk cache. Reads only. The seam is synchronous:
/// each call waits for its request with a bounded timeout and gives up with a typed error naming the object. Requests
/// for a chunk already on its way share that one GET, so a chunk costs at most one GET per cache lifetime.
/// </summary>
internal sealed class S3StoreFiles : IStoreFiles, IDisposable
{
    private readonly TimeSpan timeout;
    private readonly ConcurrentDictionary<string, Lazy<Task<byte[]?>>> inflight = new(StringComparer.Ordinal);

    static S3StoreFiles()
    {
        // Readers block pool threads while GETs are in flight (read-ahead runs several): keep threads at hand so the
        // completions of those GETs never wait for the pool to grow.
        ThreadPool.GetMinThreads(out var worker, out var io);
        ThreadPool.SetMinThreads(Math.Max(worker, 64), Math.Max(io, 64));
    }

    public S3StoreFiles(S3StoreSource source, TimeSpan timeout)
    {
        Source = source;
        this.timeout = timeout;
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

        public void WillNeed()
        {
        }

        public void Dispose()
        {
        }
    }
}
