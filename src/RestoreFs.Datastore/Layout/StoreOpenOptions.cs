using RestoreFs.Datastore.S3;

namespace RestoreFs.Datastore;

/// <summary>
/// How <c>DatastoreReader.Open</c> reaches a datastore that is not a local
/// directory: the S3 endpoint and credentials (filled from the environment and AWS profile files when not given),
/// the local chunk cache and the listing refresh. A local path ignores all of it.
/// </summary>
public sealed record StoreOpenOptions
{
    /// <summary>Default size bound of the local chunk cache.</summary>
    public const long DefaultCacheBytes = 2L * 1024 * 1024 * 1024;

    /// <summary>What the command line asked for; filled by the CLI before it opens a store.</summary>
    public static StoreOpenOptions Default { get; set; } = new();

    /// <summary>Endpoint, region, keys, fingerprint, insecure (given values; the rest come from the environment).</summary>
    public S3Options S3 { get; init; } = new();

    /// <summary>AWS profile name (else <c>AWS_PROFILE</c> or "default").</summary>
    public string? Profile { get; init; }

    /// <summary>Chunk cache directory; null = <c>$XDG_CACHE_HOME/restorefs</c> or <c>~/.cache/restorefs</c>.</summary>
    public string? CacheDirectory { get; init; }

    /// <summary>Bound of the chunk cache in bytes; 0 turns it off.</summary>
    public long CacheBytes { get; init; } = DefaultCacheBytes;

    /// <summary>How old the cached listing of the bucket may become before it is listed again.</summary>
    public TimeSpan ListingRefresh { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Longest time one synchronous read of the store may take (all retries included).</summary>
    public TimeSpan OperationTimeout { get; init; } = TimeSpan.FromMinutes(2);

    /// <summary>The cache directory to use: the given one, else the XDG cache directory.</summary>
    public string EffectiveCacheDirectory
    {
        get
        {
            if (!string.IsNullOrEmpty(CacheDirectory))
            {
                return Path.GetFullPath(CacheDirectory);
            }

            var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            if (!string.IsNullOrEmpty(xdg) && Path.IsPathRooted(xdg))
            {
                return Path.Combine(xdg, "restorefs");
            }

            var home = Environment.GetEnvironmentVariable("HOME") ?? Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
            return Path.Combine(home, ".cache", "restorefs");
        }
    }

    /// <summary>Whether <paramref name="store"/> names a datastore in object storage (<c>s3://BUCKET/STORE</c>).</summary>
    public static bool IsRemote(string store) => S3StoreLocation.LooksLikeS3(store);

    /// <summary>A local store as an absolute path; an <c>s3://</c> store as it is (checked for syntax).</summary>
    public static string Normalize(string store)
    {
        if (IsRemote(store))
        {
            return S3StoreLocation.Parse(store).ToString();
        }

        return Path.GetFullPath(store);
    }
}
