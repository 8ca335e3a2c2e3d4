namespace RestoreFs.Datastore.S3;

/// <summary>
/// Copies a finished snapshot of a local (staging) datastore into an S3 datastore in PBS's layout: every chunk to
/// <c>STORE/.chunks/&lt;4 hex&gt;/&lt;digest&gt;</c> with a conditional put (a chunk already there is kept), then the
/// snapshot's files to <c>STORE/.cnt/&lt;relative path&gt;</c>, the manifest last, so a reader never sees a
/// manifest whose chunks or indexes are not there yet.
/// </summary>
public static class S3StoreUploader
{
    public sealed record Result(int ChunksCreated, int ChunksPresent, int Files, long Bytes);

    public static async Task<Result> UploadSnapshotAsync(S3Client client, S3StoreLocation location, string localStore, string snapshotDirectory,
        CancellationToken ct = default)
    {
        var root = Path.GetFullPath(localStore);
        var snapshotRel = Path.GetRelativePath(root, Path.GetFullPath(snapshotDirectory)).Replace('\\', '/');
        if (snapshotRel.StartsWith("..", StringComparison.Ordinal) || Path.IsPathRooted(snapshotRel))
        {
            throw new DatastoreException("snapshot is not inside the staging datastore", snapshotDirectory);
        }

        var parallel = new ParallelOptions { MaxDegreeOfParallelism = 8, CancellationToken = ct };
        int created = 0, present = 0;
        long bytes = 0;
        var chunkRoot = Path.Combine(root, ".chunks");
        var chunks = Directory.Exists(chunkRoot)
            ? Directory.EnumerateFiles(chunkRoot, "*", SearchOption.AllDirectories).Where(f => Path.GetFileName(f).Length == 64).ToList()
            : [];
        await Parallel.ForEachAsync(chunks, parallel, async (file, token) =>
        {
            var digest = Path.GetFileName(file);
            var data = await File.ReadAllBytesAsync(file, token).ConfigureAwait(false);
            var put = await client.PutObjectAsync(location.Bucket, location.ChunkKey(digest), data, ifNoneMatch: true, token).ConfigureAwait(false);
            Interlocked.Increment(ref put.Created ? ref created : ref present);
            Interlocked.Add(ref bytes, data.Length);
        }).ConfigureAwait(false);

        var files = Directory.EnumerateFiles(snapshotDirectory).Select(Path.GetFileName).OfType<string>()
            .Where(n => n != "index.json.blob" && !n.StartsWith('.')).ToList();
        await Parallel.ForEachAsync(files, parallel, async (name, token) =>
        {
            var data = await File.ReadAllBytesAsync(Path.Combine(snapshotDirectory, name), token).ConfigureAwait(false);
            await client.PutObjectAsync(location.Bucket, location.ContentKey($"{snapshotRel}/{name}"), data, ct: token).ConfigureAwait(false);
            Interlocked.Add(ref bytes, data.Length);
        }).ConfigureAwait(false);

        // Namespace directories are key prefixes; PBS marks each with a .namespace object so empty ones exist too.
        var parts = snapshotRel.Split('/');
        for (var i = 0; i + 1 < parts.Length && parts[i] == "ns"; i += 2)
        {
            var nsDir = string.Join('/', parts[..(i + 2)]);
            await client.PutObjectAsync(location.Bucket, location.ContentKey($"{nsDir}/{S3ContentTree.NamespaceMarker}"), Array.Empty<byte>(),
                ifNoneMatch: true, ct).ConfigureAwait(false);
        }

        var manifest = await File.ReadAllBytesAsync(Path.Combine(snapshotDirectory, "index.json.blob"), ct).ConfigureAwait(false);
        await client.PutObjectAsync(location.Bucket, location.ContentKey($"{snapshotRel}/index.json.blob"), manifest, ct: ct).ConfigureAwait(false);
        return new Result(created, present, files.Count + 1, bytes + manifest.Length);
    }
}
