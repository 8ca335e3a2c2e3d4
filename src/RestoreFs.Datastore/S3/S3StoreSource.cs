namespace RestoreFs.Datastore.S3;

/// <summary>
/// What the datastore reader needs from an S3 datastore, shaped like its local file access: a datastore-relative
/// path → bytes, a chunk digest → bytes, a directory → entries. Reads only (GET, HEAD, LIST): a key with
/// GetObject + ListBucket suffices and nothing in the bucket changes. Chunks go through the optional
/// <see cref="ChunkDiskCache"/>; the caller's check (digest, CRC, decode) runs on a cached entry before it is used,
/// and the bytes of a fresh GET are cached only after that check passed.
/// </summary>
public sealed class S3StoreSource : IDisposable
{
    private readonly bool ownsClient;

    public S3StoreSource(S3Client client, S3StoreLocation location, ChunkDiskCache? cache = null, TimeSpan? listingRefresh = null, bool ownsClient = false)
    {
        Client = client;
        Location = location;
        Cache = cache;
        this.ownsClient = ownsClient;
        Listing = new S3ContentListing(client, location, listingRefresh ?? TimeSpan.FromSeconds(30));
    }

    public S3Client Client { get; }

    public S3StoreLocation Location { get; }

    public ChunkDiskCache? Cache { get; }

    public S3ContentListing Listing { get; }

    /// <summary>Chunk GETs sent (cache misses that reached the server).</summary>
    public long ChunkGets => Interlocked.Read(ref chunkGets);

    private long chunkGets;

    /// <summary>Checks the bucket and the store (its <c>.in-use</c> or any content), naming the stores there when it is wrong.</summary>
    public Task VerifyAsync(CancellationToken ct = default) => S3StoreDiscovery.VerifyAsync(Client, Location, ct);

    /// <summary>"s3://bucket/store/.cnt/path" for messages.</summary>
    public string Describe(string relativePath) => S3Client.Describe(Location.Bucket, Location.ContentKey(relativePath));

    public string DescribeChunk(string digestHex) => S3Client.Describe(Location.Bucket, Location.ChunkKey(digestHex));

    /// <summary>A content file's bytes, null when it does not exist (a vanished one also makes the listing refresh).</summary>
    public async Task<byte[]?> TryGetFileAsync(string relativePath, CancellationToken ct = default)
    {
        var data = await Client.TryGetObjectAsync(Location.Bucket, Location.ContentKey(relativePath), ct).ConfigureAwait(false);
        if (data is null)
        {
            Listing.Invalidate();
        }

        return data;
    }

    /// <summary>
    /// A chunk's stored bytes (the DataBlob), null when the object does not exist (pruned, or never written).
    /// <paramref name="verify"/> gets the bytes and answers whether they are the chunk asked for; a cached entry
    /// that fails it is dropped and fetched again, fetched bytes that fail it are returned as they are (the caller
    /// reports the corruption naming the chunk) but never cached.
    /// </summary>
    public async Task<byte[]?> TryGetChunkAsync(string digestHex, Func<byte[], bool>? verify = null, CancellationToken ct = default)
    {
        if (Cache?.TryGet(digestHex, verify) is { } cached)
        {
            return cached;
        }

        Interlocked.Increment(ref chunkGets);
        var data = await Client.TryGetObjectAsync(Location.Bucket, Location.ChunkKey(digestHex), ct).ConfigureAwait(false);
        if (data is not null && Cache is not null && (verify is null || verify(data)))
        {
            Cache.Put(digestHex, data);
        }

        return data;
    }

    /// <summary>
    /// One chunk GET (no cache) into a buffer rented from <paramref name="pool"/>; null when the object does not exist.
    /// An object larger than <paramref name="maxBytes"/> is refused unread (<see cref="S3ObjectTooLargeException"/>).
    /// </summary>
    public Task<(byte[] Buffer, int Length)?> GetChunkPooledAsync(string digestHex, System.Buffers.ArrayPool<byte> pool, int maxBytes, CancellationToken ct = default)
    {
        Interlocked.Increment(ref chunkGets);
        return Client.TryGetObjectPooledAsync(Location.Bucket, Location.ChunkKey(digestHex), pool, maxBytes, ct);
    }

    /// <summary>Entries of a content directory ("" = datastore root) from the cached listing; null when absent.</summary>
    public async Task<IReadOnlyList<S3TreeEntry>?> ListDirectoryAsync(string relativePath, CancellationToken ct = default)
        => (await Listing.GetAsync(ct).ConfigureAwait(false)).ListDirectory(relativePath);

    /// <summary>What is at a content path according to the cached listing, or null.</summary>
    public async Task<S3TreeEntryKind?> KindAsync(string relativePath, CancellationToken ct = default)
        => (await Listing.GetAsync(ct).ConfigureAwait(false)).Kind(relativePath);

    public void Dispose()
    {
        if (ownsClient)
        {
            Client.Dispose();
        }
    }
}
