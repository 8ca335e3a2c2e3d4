namespace RestoreFs.Datastore.S3;

public enum S3TreeEntryKind
{
    File,
    Directory,
}

/// <summary>One entry of a directory of an <see cref="S3ContentTree"/>.</summary>
public readonly record struct S3TreeEntry(string Name, S3TreeEntryKind Kind);

/// <summary>
/// The content of an S3 datastore (every key under <c>STORE/.cnt/</c>) seen as the directory tree a local datastore
/// has: directories are the key prefixes, files the keys. Built from one paginated ListObjectsV2, so listings and
/// existence checks of the datastore reader cost no further request. <c>.namespace</c> markers (S3 has no empty
/// directories) make their directory exist and are not shown. Keys that are no valid relative path (empty, '.' or
/// '..' components) or that clash with a directory of the same name are left out and counted in
/// <see cref="IgnoredKeys"/>. Immutable; see <see cref="S3ContentListing"/> for the refreshing holder.
/// </summary>
public sealed class S3ContentTree
{
    public const string NamespaceMarker = ".namespace";

    private readonly Dictionary<string, Dictionary<string, S3TreeEntryKind>> directories = new(StringComparer.Ordinal);
    private readonly Dictionary<string, S3ObjectInfo> files = new(StringComparer.Ordinal);

    private S3ContentTree(S3StoreLocation location, IEnumerable<S3ObjectInfo> objects, DateTimeOffset loadedAt, int pages)
    {
        Location = location;
        LoadedAt = loadedAt;
        Pages = pages;
        directories[string.Empty] = new Dictionary<string, S3TreeEntryKind>(StringComparer.Ordinal);
        var ignored = 0;
        var all = objects.ToList();

        // Directories first, so a key that is also a directory prefix is recognised whatever the order.
        foreach (var o in all)
        {
            if (location.RelativePathOf(o.Key) is not { } rel || !ValidPath(rel.TrimEnd('/')))
            {
                continue;
            }

            var parts = rel.TrimEnd('/').Split('/');
            var dirCount = rel.EndsWith('/') || parts[^1] == NamespaceMarker ? parts.Length - (parts[^1] == NamespaceMarker ? 1 : 0) : parts.Length - 1;
            for (var i = 0; i < dirCount; i++)
            {
                AddDirectory(string.Join('/', parts[..i]), parts[i]);
            }
        }

        foreach (var o in all)
        {
            var rel = location.RelativePathOf(o.Key);
            if (rel is null || rel.Length == 0)
            {
                ignored++;
                continue;
            }

            if (rel.EndsWith('/') || rel == NamespaceMarker || rel.EndsWith("/" + NamespaceMarker, StringComparison.Ordinal))
            {
                if (!ValidPath(rel.TrimEnd('/')))
                {
                    ignored++;
                }

                continue;
            }

            if (!ValidPath(rel) || directories.ContainsKey(rel))
            {
                ignored++;
                continue;
            }

            var slash = rel.LastIndexOf('/');
            var parent = slash < 0 ? string.Empty : rel[..slash];
            directories[parent][rel[(slash + 1)..]] = S3TreeEntryKind.File;
            files[rel] = o;
        }

        IgnoredKeys = ignored;
    }

    public S3StoreLocation Location { get; }

    public DateTimeOffset LoadedAt { get; }

    /// <summary>Listing pages it took (one per 1000 keys).</summary>
    public int Pages { get; }

    public int FileCount => files.Count;

    public int IgnoredKeys { get; }

    /// <summary>Lists <c>STORE/.cnt/</c> completely (paginated) and builds the tree.</summary>
    public static async Task<S3ContentTree> LoadAsync(S3Client client, S3StoreLocation location, CancellationToken ct = default)
    {
        var listing = await client.ListAllAsync(location.Bucket, location.ContentPrefix, null, ct).ConfigureAwait(false);
        return new S3ContentTree(location, listing.Objects, DateTimeOffset.UtcNow, listing.Pages);
    }

    /// <summary>Builds a tree from keys already listed (full keys, with the store prefix).</summary>
    public static S3ContentTree FromObjects(S3StoreLocation location, IEnumerable<S3ObjectInfo> objects)
        => new(location, objects, DateTimeOffset.UtcNow, 0);

    /// <summary>Entries of a directory ("" = the datastore root), sorted by name; null when there is no such directory.</summary>
    public IReadOnlyList<S3TreeEntry>? ListDirectory(string relativePath)
        => directories.TryGetValue(Normalize(relativePath), out var entries)
            ? entries.OrderBy(e => e.Key, StringComparer.Ordinal).Select(e => new S3TreeEntry(e.Key, e.Value)).ToList()
            : null;

    /// <summary>What is at a path, or null.</summary>
    public S3TreeEntryKind? Kind(string relativePath)
    {
        var p = Normalize(relativePath);
        return directories.ContainsKey(p) ? S3TreeEntryKind.Directory : files.ContainsKey(p) ? S3TreeEntryKind.File : null;
    }

    /// <summary>The object behind a file path (key, size, ETag), or null.</summary>
    public S3ObjectInfo? File(string relativePath) => files.GetValueOrDefault(Normalize(relativePath));

    /// <summary>The newest LastModified of the objects at or below a path, null when none is there.</summary>
    public DateTimeOffset? Modified(string relativePath)
    {
        var newest = LazyInitializer.EnsureInitialized(ref modified, () =>
        {
            var result = new Dictionary<string, DateTimeOffset>(StringComparer.Ordinal);
            foreach (var (path, info) in files)
            {
                if (info.LastModified is not { } time)
                {
                    continue;
                }

                for (var p = path; ; p = p[..p.LastIndexOf('/')])
                {
                    if (!result.TryGetValue(p, out var seen) || seen < time)
                    {
                        result[p] = time;
                    }

                    if (!p.Contains('/'))
                    {
                        break;
                    }
                }
            }

            return result;
        });
        return newest.TryGetValue(Normalize(relativePath), out var t) ? t : null;
    }

    private Dictionary<string, DateTimeOffset>? modified;

    private void AddDirectory(string parent, string name)
    {
        var path = parent.Length == 0 ? name : $"{parent}/{name}";
        directories[parent][name] = S3TreeEntryKind.Directory;
        if (!directories.ContainsKey(path))
        {
            directories[path] = new Dictionary<string, S3TreeEntryKind>(StringComparer.Ordinal);
        }
    }

    private static string Normalize(string relativePath) => relativePath.Trim('/');

    private static bool ValidPath(string rel) => rel.Length > 0 && rel.Split('/').All(p => p is not ("" or "." or ".."));
}

/// <summary>
/// Holds the <see cref="S3ContentTree"/> of a store and lists again when it is older than the refresh interval, so
/// new snapshots appear without remounting. One listing at a time; callers during a refresh wait for it. A failed
/// refresh keeps the previous tree (and is thrown only when there is none yet).
/// </summary>
public sealed class S3ContentListing(S3Client client, S3StoreLocation location, TimeSpan refreshInterval)
{
    private readonly SemaphoreSlim refresh = new(1, 1);
    private S3ContentTree? current;
    private DateTimeOffset nextLoad;

    /// <summary>The error of the last refresh that fell back to the previous tree (null after a good one), for logs.</summary>
    public Exception? LastRefreshError { get; private set; }

    public async Task<S3ContentTree> GetAsync(CancellationToken ct = default)
    {
        if (Volatile.Read(ref current) is { } fresh && DateTimeOffset.UtcNow < nextLoad)
        {
            return fresh;
        }

        await refresh.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (current is { } again && DateTimeOffset.UtcNow < nextLoad)
            {
                return again;
            }

            try
            {
                var tree = await S3ContentTree.LoadAsync(client, location, ct).ConfigureAwait(false);
                LastRefreshError = null;
                Volatile.Write(ref current, tree);
                return tree;
            }
            catch (S3Exception e) when (current is not null)
            {
                LastRefreshError = e;
                return current;
            }
            finally
            {
                // Also after a failure: the next attempt waits an interval rather than every lookup retrying.
                nextLoad = DateTimeOffset.UtcNow + refreshInterval;
            }
        }
        finally
        {
            refresh.Release();
        }
    }

    /// <summary>Makes the next <see cref="GetAsync"/> list again (after a missing file, or on request).</summary>
    public void Invalidate() => nextLoad = DateTimeOffset.MinValue;
}
