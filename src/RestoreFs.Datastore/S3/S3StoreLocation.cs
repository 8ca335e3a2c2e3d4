using System.Diagnostics.CodeAnalysis;

namespace RestoreFs.Datastore.S3;

/// <summary>
/// A PBS datastore in a bucket, written <c>s3://BUCKET/STORE</c>. Keys (PBS 4's layout): chunks at
/// <c>STORE/.chunks/&lt;first 4 hex&gt;/&lt;64 hex&gt;</c>, everything else at <c>STORE/.cnt/&lt;path relative to the
/// datastore root&gt;</c>, and the marker <c>STORE/.in-use</c> a PBS writes when it adopts the bucket.
/// </summary>
public sealed record S3StoreLocation(string Bucket, string Store)
{
    public const string Scheme = "s3://";

    /// <summary>Prefix of every non-chunk object of the store (ends with '/').</summary>
    public string ContentPrefix => $"{Store}/.cnt/";

    /// <summary>Prefix of every chunk object (ends with '/').</summary>
    public string ChunkPrefix => $"{Store}/.chunks/";

    public string InUseKey => $"{Store}/.in-use";

    public static bool LooksLikeS3(string text) => text.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase);

    /// <summary>Parses <c>s3://BUCKET/STORE</c> (a trailing '/' allowed); a typed error says what is wrong.</summary>
    public static S3StoreLocation Parse(string text)
        => TryParse(text, out var location, out var error) ? location : throw new S3ConfigurationException(error, text);

    public static bool TryParse(string text, [NotNullWhen(true)] out S3StoreLocation? location, out string error)
    {
        location = null;
        if (!LooksLikeS3(text))
        {
            error = $"'{text}' is not an S3 datastore (s3://BUCKET/STORE)";
            return false;
        }

        var rest = text[Scheme.Length..].TrimEnd('/');
        var slash = rest.IndexOf('/');
        if (slash <= 0)
        {
            error = rest.Length == 0
                ? "no bucket in the S3 datastore URL (s3://BUCKET/STORE)"
                : $"no datastore name after the bucket in '{text}' (s3://BUCKET/STORE; the bucket's datastores are the prefixes that have a .in-use marker)";
            return false;
        }

        var bucket = rest[..slash];
        var store = rest[(slash + 1)..];
        if (bucket.Length is < 3 or > 63 || !bucket.All(c => c is (>= 'a' and <= 'z') or (>= '0' and <= '9') or '-' or '.' or '_'))
        {
            error = $"'{bucket}' is not a valid bucket name (3–63 of a–z 0–9 . - _)";
            return false;
        }

        if (!IsStoreName(store))
        {
            error = $"'{store}' is not a datastore name (letters, digits, '_', '-', '.', not starting with '-' or '.', one path component)";
            return false;
        }

        location = new S3StoreLocation(bucket, store);
        error = string.Empty;
        return true;
    }

    /// <summary>PBS's datastore-name rule (SAFE_ID): ASCII letters, digits, '_', '-', '.', not starting with '-' or '.'.</summary>
    public static bool IsStoreName(string name)
        => name.Length is > 0 and <= 128 && name[0] is not ('-' or '.')
           && name.All(c => c is (>= 'a' and <= 'z') or (>= 'A' and <= 'Z') or (>= '0' and <= '9') or '_' or '-' or '.');

    /// <summary>Key of a chunk by its lower-case hex digest (64 hex digits, checked).</summary>
    public string ChunkKey(string digestHex)
    {
        if (digestHex.Length != 64 || !digestHex.All(c => c is (>= '0' and <= '9') or (>= 'a' and <= 'f')))
        {
            throw new ArgumentException($"'{digestHex}' is not a lower-case SHA-256 hex digest", nameof(digestHex));
        }

        return $"{Store}/.chunks/{digestHex[..4]}/{digestHex}";
    }

    /// <summary>Key of a datastore-relative path ("vm/100/2024-05-01T10:00:00Z/index.json.blob").</summary>
    public string ContentKey(string relativePath)
    {
        if (relativePath.Length == 0 || relativePath.StartsWith('/') || relativePath.Split('/').Any(p => p is "" or "." or ".."))
        {
            throw new ArgumentException($"'{relativePath}' is not a datastore-relative path", nameof(relativePath));
        }

        return ContentPrefix + relativePath;
    }

    /// <summary>The relative path of a content key, null when the key is not under <see cref="ContentPrefix"/>.</summary>
    public string? RelativePathOf(string key) => key.StartsWith(ContentPrefix, StringComparison.Ordinal) ? key[ContentPrefix.Length..] : null;

    public override string ToString() => $"{Scheme}{Bucket}/{Store}";
}

/// <summary>The store prefix named in <c>s3://BUCKET/STORE</c> is not a datastore; <see cref="KnownStores"/> lists those that are.</summary>
public sealed class S3StoreNotFoundException(string message, string location, IReadOnlyList<string> knownStores)
    : S3Exception(message, location)
{
    public IReadOnlyList<string> KnownStores { get; } = knownStores;
}

/// <summary>Finds the datastores of a bucket and checks that a named one exists. Reads only (LIST, HEAD).</summary>
public static class S3StoreDiscovery
{
    /// <summary>Top-level prefixes of the bucket that have a <c>.in-use</c> marker, sorted.</summary>
    public static async Task<IReadOnlyList<string>> ListStoresAsync(S3Client client, string bucket, CancellationToken ct = default)
    {
        var top = await client.ListAllAsync(bucket, null, "/", ct).ConfigureAwait(false);
        var candidates = top.CommonPrefixes.Select(p => p.TrimEnd('/')).Where(p => p.Length > 0).ToList();
        var found = new bool[candidates.Count];
        await Parallel.ForEachAsync(Enumerable.Range(0, candidates.Count), new ParallelOptions { MaxDegreeOfParallelism = 8, CancellationToken = ct },
            async (i, token) => found[i] = await client.HeadObjectAsync(bucket, candidates[i] + "/.in-use", token).ConfigureAwait(false) is not null)
            .ConfigureAwait(false);
        return candidates.Where((_, i) => found[i]).Order(StringComparer.Ordinal).ToList();
    }

    /// <summary>
    /// Checks that the bucket is reachable and the store exists: its <c>.in-use</c> marker, or else any object
    /// under its <c>.cnt/</c> prefix. Otherwise <see cref="S3StoreNotFoundException"/> listing the bucket's stores.
    /// </summary>
    public static async Task VerifyAsync(S3Client client, S3StoreLocation location, CancellationToken ct = default)
    {
        if (await client.HeadObjectAsync(location.Bucket, location.InUseKey, ct).ConfigureAwait(false) is not null)
        {
            return;
        }

        var content = await client.ListObjectsPageAsync(location.Bucket, location.ContentPrefix, null, null, 1, ct).ConfigureAwait(false);
        if (content.Objects.Count > 0)
        {
            return;
        }

        var stores = await ListStoresAsync(client, location.Bucket, ct).ConfigureAwait(false);
        var known = stores.Count == 0
            ? $"bucket {location.Bucket} has no datastore (no prefix with a .in-use marker)"
            : $"datastores in bucket {location.Bucket}: {string.Join(", ", stores)}";
        throw new S3StoreNotFoundException($"no datastore '{location.Store}' ({known})", location.ToString(), stores);
    }
}
