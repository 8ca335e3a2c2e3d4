using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace RestoreFs.Datastore;

/// <summary>
/// Reads a PBS datastore (spec sections 1, 5, 7). Opens everything read-only and never writes. Every file is reached
/// through one seam (<see cref="IStoreFiles"/>) by a path relative to the store root: no symlink is followed, nothing
/// but a regular file is read, and every file's size is checked against its limit (<see cref="StoreLimits"/>) first.
/// A malformed entry (bad name, symlink, FIFO) is logged once and skipped; it never hides the good ones.
/// </summary>
public sealed class DatastoreReader : IDisposable
{
    private static readonly string[] Types = ["vm", "ct", "host"];
    private readonly ILogger log;
    private readonly IStoreFiles files;
    private readonly ConcurrentDictionary<string, string> warned = new(StringComparer.Ordinal);

    private DatastoreReader(string basePath, IStoreFiles files, ILogger log)
    {
        BasePath = basePath;
        this.files = files;
        Chunks = new ChunkStore(basePath, files);
        this.log = log;
    }

    /// <summary>
    /// Releases what the store's access holds: for an S3 store its client (pooled connections to the endpoint) and
    /// the local chunk cache, after the cache writes already queued; nothing for a local directory.
    /// </summary>
    public void Dispose() => (files as IDisposable)?.Dispose();

    /// <summary>Chunks read ahead (GETs in flight) for sequential reads from object storage.</summary>
    public const int RemoteReadAhead = 8;

    public string BasePath { get; }

    public ChunkStore Chunks { get; }

    /// <summary>
    /// Opens a local datastore directory, or an S3 datastore <c>s3://BUCKET/STORE</c> reached as
    /// <paramref name="options"/> (else <see cref="StoreOpenOptions.Default"/>) says. Reading never writes anywhere.
    /// </summary>
    public static DatastoreReader Open(string basePath, ILoggerFactory? logs = null, StoreOpenOptions? options = null)
    {
        if (StoreOpenOptions.IsRemote(basePath))
        {
            return OpenS3(basePath, options ?? StoreOpenOptions.Default, logs);
        }

        var full = Path.GetFullPath(basePath);
        if (!Directory.Exists(full))
        {
            throw new DatastoreException("datastore directory does not exist", full);
        }

        return Open(new LocalStoreFiles(full), full, logs);
    }

    private static DatastoreReader OpenS3(string url, StoreOpenOptions options, ILoggerFactory? logs)
    {
        var location = S3.S3StoreLocation.Parse(url);
        var s3 = S3.S3Options.Resolve(options.S3, profile: options.Profile);
        if (s3.AccessKeyId is null)
        {
            throw new S3.S3ConfigurationException(
                "no S3 credentials: give AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, --s3-profile or an AWS credentials file", url);
        }

        var client = new S3.S3Client(s3, logs);
        S3.ChunkDiskCache? cache = null;
        try
        {
            using (var cts = new CancellationTokenSource(options.OperationTimeout))
            {
                Task.Run(() => S3.S3StoreDiscovery.VerifyAsync(client, location, cts.Token), cts.Token).GetAwaiter().GetResult();
            }

            if (options.CacheBytes > 0)
            {
                cache = new S3.ChunkDiskCache(options.EffectiveCacheDirectory, options.CacheBytes);
            }

            var source = new S3.S3StoreSource(client, location, cache, options.ListingRefresh, ownsClient: true);
            return Open(new S3StoreFiles(source, options.OperationTimeout, logs), location.ToString(), logs);
        }
        catch (OperationCanceledException e)
        {
            cache?.Dispose();
            client.Dispose();
            throw new S3.S3EndpointException($"no answer from {client.Endpoint} within {options.OperationTimeout.TotalSeconds:0} s", url, e);
        }
        catch
        {
            cache?.Dispose();
            client.Dispose();
            throw;
        }
    }

    /// <summary>Whether the store is in object storage (every chunk is a request: read further ahead).</summary>
    public bool IsRemote => files is S3StoreFiles;

    /// <summary>Chunk requests that reached the object store (cache misses), 0 for a local store.</summary>
    public long RemoteChunkGets => (files as S3StoreFiles)?.Source.ChunkGets ?? 0;

    /// <summary>Whether the group's directory exists (a prefix in object storage).</summary>
    public bool GroupExists(BackupGroup group) => files.Kind(GroupRelative(group)) == StoreEntryKind.Directory;

    /// <summary>When the group last changed: its directory's mtime, or the newest object below it in object storage.</summary>
    public DateTimeOffset? GroupModified(BackupGroup group)
    {
        var rel = GroupRelative(group);
        if (files is S3StoreFiles s3)
        {
            return s3.Modified(rel);
        }

        var path = files.Describe(rel);
        return Directory.Exists(path) ? Directory.GetLastWriteTimeUtc(path) : null;
    }

    /// <summary>Whether the group has a finished snapshot (its manifest exists) of this time name.</summary>
    public bool IsFinishedSnapshot(BackupGroup group, string timeName) =>
        Names.IsSnapshotTime(timeName) && files.Kind(StorePath.Join(GroupRelative(group), timeName, "index.json.blob")) is not null;

    internal static DatastoreReader Open(IStoreFiles files, string basePath, ILoggerFactory? logs = null)
    {
        switch (files.Kind(".chunks"))
        {
            case StoreEntryKind.Directory:
                break;
            case null:
                throw new DatastoreException("not a datastore: it has no .chunks directory", basePath);
            default:
                throw new StoreEntryRefusedException(".chunks is not a directory (a symlink or special file is refused)", files.Describe(".chunks"));
        }

        return new DatastoreReader(basePath, files, (ILogger?)logs?.CreateLogger<DatastoreReader>() ?? NullLogger.Instance);
    }

    /// <summary>Logs a problem of the store once per reader (a listing repeated by a mount does not repeat it).</summary>
    private void WarnOnce(string key, string message, Exception? e = null)
    {
        var text = e is null ? message : $"{message}: {e.Message}";
        if (warned.TryAdd(key, text))
        {
            log.LogWarning("Skipped in the datastore: {Message}", text);
        }
    }

    /// <summary>Problems found so far (each once, oldest first is not kept): what listings skipped and why.</summary>
    public IReadOnlyCollection<string> Skipped => warned.Values.Order(StringComparer.Ordinal).ToList();

    internal static string NamespaceRelative(BackupNamespace ns) =>
        ns.Path.Length == 0 ? string.Empty : string.Join('/', ns.Path.Split('/').Select(p => "ns/" + p));

    internal static string GroupRelative(BackupGroup group) => StorePath.Join(NamespaceRelative(group.Namespace), group.Type, group.Id);

    internal static string SnapshotRelative(SnapshotInfo snapshot) => StorePath.Join(GroupRelative(snapshot.Group), snapshot.TimeName);

    private static string InSnapshot(SnapshotInfo snapshot, string fileName) => SnapshotRelative(snapshot) + "/" + fileName;

    public string NamespacePath(BackupNamespace ns) => files.Describe(NamespaceRelative(ns));

    public string GroupPath(BackupGroup group) => files.Describe(GroupRelative(group));

    /// <summary>A directory's entries; a refused or unreadable directory is logged once and lists as empty.</summary>
    private IReadOnlyList<StoreEntry> List(string relativePath)
    {
        try
        {
            return files.ListDirectory(relativePath) ?? [];
        }
        catch (DatastoreException e)
        {
            WarnOnce(relativePath, $"{files.Describe(relativePath)} cannot be listed", e);
            return [];
        }
    }

    /// <summary>The valid subdirectories of a directory, sorted; anything else is logged once.</summary>
    private List<string> Subdirectories(string relativePath, Func<string, bool> valid, string what, bool ignoreFiles = false)
    {
        var result = new List<string>();
        foreach (var entry in List(relativePath))
        {
            var child = StorePath.Join(relativePath, Names.Printable(entry.Name));
            if (entry.Kind == StoreEntryKind.Directory && valid(entry.Name))
            {
                result.Add(entry.Name);
            }
            else if (entry.Kind == StoreEntryKind.Directory && entry.Name.StartsWith('.'))
            {
                // Hidden work directories of unfinished backups: not ours to report.
            }
            else if (entry.Kind == StoreEntryKind.Directory)
            {
                WarnOnce(child, $"{child}: '{Names.Printable(entry.Name)}' is no valid {what}");
            }
            else if (entry.Kind == StoreEntryKind.Symlink)
            {
                WarnOnce(child, $"{child}: a symbolic link where a {what} directory belongs (symlinks in a datastore are not followed)");
            }
            else if (entry.Kind == StoreEntryKind.Other || !ignoreFiles)
            {
                WarnOnce(child, $"{child}: a special file or file where a {what} directory belongs");
            }
        }

        result.Sort(StringComparer.Ordinal);
        return result;
    }

    /// <summary>
    /// The root namespace first, then every child namespace depth-first, children sorted by name. At most 7 levels
    /// (as PBS); symlinks are never followed, so each directory is visited once and the cost is linear in the store.
    /// </summary>
    public IReadOnlyList<BackupNamespace> ListNamespaces()
    {
        var result = new List<BackupNamespace>();
        void Walk(BackupNamespace ns, int depth)
        {
            result.Add(ns);
            var nsDir = StorePath.Join(NamespaceRelative(ns), "ns");
            if (files.Kind(nsDir) is not { } kind)
            {
                return;
            }

            if (kind != StoreEntryKind.Directory)
            {
                WarnOnce(nsDir, $"{nsDir}: not a directory (a symlink or special file is not followed)");
                return;
            }

            var children = Subdirectories(nsDir, Names.IsNamespaceComponent, "namespace");
            if (depth >= StoreLimits.MaxNamespaceDepth)
            {
                if (children.Count > 0)
                {
                    WarnOnce(nsDir, $"{nsDir}: namespaces deeper than {StoreLimits.MaxNamespaceDepth} levels are ignored (PBS allows no more)");
                }

                return;
            }

            foreach (var child in children)
            {
                Walk(new BackupNamespace(ns.Path.Length == 0 ? child : ns.Path + "/" + child), depth + 1);
            }
        }

        Walk(BackupNamespace.Root, 0);
        return result;
    }

    public IReadOnlyList<BackupGroup> ListGroups(BackupNamespace ns)
    {
        var result = new List<BackupGroup>();
        var nsPath = NamespaceRelative(ns);
        foreach (var type in Types)
        {
            var typeDir = StorePath.Join(nsPath, type);
            var kind = files.Kind(typeDir);
            if (kind is null)
            {
                continue;
            }

            if (kind != StoreEntryKind.Directory)
            {
                WarnOnce(typeDir, $"{typeDir}: not a directory (a symlink or special file is not followed)");
                continue;
            }

            result.AddRange(Subdirectories(typeDir, Names.IsBackupId, "backup group").Select(id => new BackupGroup(ns, type, id)));
        }

        return result;
    }

    /// <summary>
    /// Snapshots of a group that look finished (an index.json.blob entry exists), oldest first. A manifest that then
    /// cannot be read (a FIFO, too large, malformed) fails <see cref="ReadManifest"/> with an error naming it.
    /// </summary>
    public IReadOnlyList<SnapshotInfo> ListSnapshots(BackupGroup group)
    {
        var dir = GroupRelative(group);
        var result = new List<SnapshotInfo>();
        foreach (var name in Subdirectories(dir, Names.IsSnapshotTime, "snapshot", ignoreFiles: true))
        {
            Names.TryParseTime(name, out var time);
            var snapshot = new SnapshotInfo(group, time, files.Describe(StorePath.Join(dir, name)));
            try
            {
                if (files.Kind(InSnapshot(snapshot, "index.json.blob")) is not null)
                {
                    result.Add(snapshot);
                }
            }
            catch (DatastoreException e)
            {
                WarnOnce(SnapshotRelative(snapshot), $"snapshot {snapshot.Name} cannot be read", e);
            }
        }

        result.Sort((a, b) => a.Time.CompareTo(b.Time));
        return result;
    }

    /// <summary>A snapshot by its name, e.g. <c>vm/100/2024-05-01T10:00:00Z</c>.</summary>
    public SnapshotInfo GetSnapshot(BackupNamespace ns, string name)
    {
        var parts = name.Trim('/').Split('/');
        if (parts.Length != 3 || !Names.IsBackupType(parts[0]) || !Names.IsBackupId(parts[1]))
        {
            throw new SnapshotNotFoundException($"invalid snapshot name '{Names.Printable(name)}' (expected e.g. vm/100/2024-05-01T10:00:00Z)");
        }

        var group = new BackupGroup(ns, parts[0], parts[1]);
        if (!Names.TryParseTime(parts[2], out var time))
        {
            // Accept any RFC 3339 spelling of the time, as users type it.
            try
            {
                time = Names.ParseUserTime(parts[2]);
            }
            catch (DatastoreException)
            {
                throw new SnapshotNotFoundException($"invalid snapshot time '{Names.Printable(parts[2])}'");
            }
        }

        var snapshot = new SnapshotInfo(group, time, files.Describe(StorePath.Join(GroupRelative(group), Names.FormatTime(time))));
        var rel = SnapshotRelative(snapshot);
        var kind = files.Kind(rel);
        if (kind is not null and not StoreEntryKind.Directory)
        {
            throw new StoreEntryRefusedException($"snapshot {snapshot.Name} is not a directory (a symlink or special file is not followed)", snapshot.DirectoryPath);
        }

        if (kind is null || files.Kind(InSnapshot(snapshot, "index.json.blob")) is null)
        {
            throw new SnapshotNotFoundException($"snapshot {snapshot.Name} not found in namespace {ns}", snapshot.DirectoryPath);
        }

        return snapshot;
    }

    /// <summary>Reads the manifest; with a key, checks its fingerprint and signature.</summary>
    public Manifest ReadManifest(SnapshotInfo snapshot, CryptConfig? key)
    {
        var rel = InSnapshot(snapshot, "index.json.blob");
        var path = files.Describe(rel);
        var blob = files.ReadFile(rel, StoreLimits.MaxManifestFile, "manifest")
                   ?? throw new SnapshotNotFoundException("snapshot has no manifest (unfinished backup)", path);
        var manifest = Manifest.Parse(DataBlob.Decode(blob, null, path, StoreLimits.MaxManifestJson), path);
        manifest.Verify(key, path);
        return manifest;
    }

    /// <summary>The *.blob files of a snapshot (regular files with valid names), sorted; anything else logged once.</summary>
    public IReadOnlyList<string> ListBlobFiles(SnapshotInfo snapshot)
    {
        var dir = SnapshotRelative(snapshot);
        var result = new List<string>();
        foreach (var entry in List(dir))
        {
            if (!entry.Name.EndsWith(".blob", StringComparison.Ordinal))
            {
                continue;
            }

            if (entry.Kind == StoreEntryKind.File && Names.IsArchiveName(entry.Name))
            {
                result.Add(entry.Name);
            }
            else
            {
                WarnOnce(dir + "/" + Names.Printable(entry.Name), $"{dir}/{Names.Printable(entry.Name)}: not a regular file with a valid name");
            }
        }

        result.Sort(StringComparer.Ordinal);
        return result;
    }

    /// <summary>Whether the snapshot has this blob file (any kind of entry: reading it then names what is wrong).</summary>
    public bool HasBlob(SnapshotInfo snapshot, string fileName) =>
        Names.IsArchiveName(fileName) && fileName.EndsWith(".blob", StringComparison.Ordinal) && files.Kind(InSnapshot(snapshot, fileName)) is not null;

    /// <summary>A decoded *.blob of the snapshot; checked against the manifest when listed there (<paramref name="manifest"/>:
    /// the snapshot's, already read with <see cref="ReadManifest"/> and the same key; else it is read here).</summary>
    public byte[] ReadBlob(SnapshotInfo snapshot, string fileName, CryptConfig? key, Manifest? manifest = null)
    {
        if (!Names.IsArchiveName(fileName) || !fileName.EndsWith(".blob", StringComparison.Ordinal))
        {
            throw new ArchiveNotFoundException($"'{Names.Printable(fileName)}' is not a blob of the snapshot");
        }

        var rel = InSnapshot(snapshot, fileName);
        var path = files.Describe(rel);
        var bytes = fileName == "index.json.blob"
            ? files.ReadFile(rel, StoreLimits.MaxManifestFile, "manifest")
            : files.ReadFile(rel, StoreLimits.MaxBlobFile, "blob");
        if (bytes is null)
        {
            throw new ArchiveNotFoundException($"snapshot {snapshot.Name} has no {fileName}", path);
        }

        if (fileName != "index.json.blob")
        {
            manifest ??= ReadManifest(snapshot, key);
            if (manifest.Find(fileName) is { } entry)
            {
                var csum = Manifest.Sha256Hex(bytes);
                if ((ulong)bytes.Length != entry.Size || csum != entry.Csum)
                {
                    throw new ManifestMismatchException(
                        $"{fileName} does not match the manifest (size {bytes.Length} vs {entry.Size}, csum {csum} vs {entry.Csum})", path);
                }
            }
        }

        return DataBlob.Decode(bytes, key, path, fileName == "index.json.blob" ? StoreLimits.MaxManifestJson : StoreLimits.MaxBlobPlaintext);
    }

    /// <summary>Normalises an archive name: <c>drive-scsi0.img</c> → <c>drive-scsi0.img.fidx</c>, <c>root.pxar</c> → <c>root.pxar.didx</c>.</summary>
    public static string ArchiveFileName(string archive)
    {
        if (archive.EndsWith(".fidx", StringComparison.Ordinal) || archive.EndsWith(".didx", StringComparison.Ordinal) ||
            archive.EndsWith(".blob", StringComparison.Ordinal))
        {
            return archive;
        }

        if (archive.EndsWith(".img", StringComparison.Ordinal))
        {
            return archive + ".fidx";
        }

        if (archive.EndsWith(".pxar", StringComparison.Ordinal) || archive.EndsWith(".pcat1", StringComparison.Ordinal))
        {
            return archive + ".didx";
        }

        return archive + ".img.fidx";
    }

    /// <summary>Opens a disk image after checking the index against the manifest (size and checksum). A caller that holds
    /// the snapshot's manifest (read with <see cref="ReadManifest"/> and the same key) passes it: it is not read again.</summary>
    public ImageReader OpenImage(SnapshotInfo snapshot, string archive, CryptConfig? key, ImageReaderOptions? options = null, Manifest? manifest = null)
    {
        var (index, file) = OpenFixedIndex(snapshot, archive, key, manifest);
        if (IsRemote && (options ?? new ImageReaderOptions()) is { ReadAheadChunks: < RemoteReadAhead } given)
        {
            // Each chunk is a GET: keep several in flight for sequential reads.
            options = given with { ReadAheadChunks = RemoteReadAhead, CacheBytes = Math.Max(given.CacheBytes, 2L * RemoteReadAhead * index.ChunkSize) };
        }

        log.LogDebug("Opened {Archive} of {Snapshot}: {Size} bytes in {Chunks} chunks", file.FileName, snapshot.Name, index.Size, index.ChunkCount);
        return new ImageReader(index, Chunks, key, file.CryptMode == CryptMode.Encrypt, options);
    }

    /// <summary>Opens a fixed index (.fidx) after checking it against the manifest (<paramref name="manifest"/>, or read here).</summary>
    public (FixedIndex Index, ManifestFile File) OpenFixedIndex(SnapshotInfo snapshot, string archive, CryptConfig? key, Manifest? manifest = null) =>
        OpenIndex(snapshot, archive, key, manifest, ".fidx", "a disk image archive (.img.fidx)", rel => FixedIndex.Open(files, rel), i => (i.Size, i.Checksum));

    /// <summary>Opens a dynamic index (.didx) after checking it against the manifest (<paramref name="manifest"/>, or read here).</summary>
    public (DynamicIndex Index, ManifestFile File) OpenDynamicIndex(SnapshotInfo snapshot, string archive, CryptConfig? key, Manifest? manifest = null) =>
        OpenIndex(snapshot, archive, key, manifest, ".didx", "a stream archive (.didx)", rel => DynamicIndex.Open(files, rel), i => (i.Size, i.Checksum));

    /// <summary>The index of an archive of the snapshot, refused unless the manifest lists it with the same size and
    /// checksum, and unless its key is given when it is encrypted.</summary>
    private (T Index, ManifestFile File) OpenIndex<T>(SnapshotInfo snapshot, string archive, CryptConfig? key, Manifest? manifest,
        string extension, string kind, Func<string, T> open, Func<T, (long Size, byte[] Checksum)> summary)
    {
        var name = ArchiveFileName(archive);
        if (!name.EndsWith(extension, StringComparison.Ordinal) || !Names.IsArchiveName(name))
        {
            throw new ArchiveNotFoundException($"'{Names.Printable(archive)}' is not {kind}");
        }

        manifest ??= ReadManifest(snapshot, key);
        var path = files.Describe(InSnapshot(snapshot, name));
        var file = manifest.Find(name) ?? throw new ArchiveNotFoundException(
            $"snapshot {snapshot.Name} has no archive {name} (it has: {string.Join(", ", manifest.Files.Select(f => f.FileName))})", path);
        if (file.CryptMode == CryptMode.Encrypt && key is null)
        {
            throw new KeyRequiredException($"{name} of {snapshot.Name} is encrypted (key {manifest.KeyFingerprint ?? "unknown"}); give its key file", path);
        }

        var index = open(InSnapshot(snapshot, name));
        var (size, checksum) = summary(index);
        var csum = Convert.ToHexStringLower(checksum);
        if ((ulong)size != file.Size || csum != file.Csum)
        {
            throw new ManifestMismatchException($"index does not match the manifest (size {size} vs {file.Size}, csum {csum} vs {file.Csum})", path);
        }

        return (index, file);
    }

    /// <summary>Decodes one chunk of a dynamic index (for restoring .didx streams).</summary>
    public byte[] ReadDynamicChunk(DynamicIndex index, int chunk, CryptConfig? key, bool encrypted)
    {
        var digest = index.Digest(chunk);
        var blob = Chunks.Read(digest, index.ChunkStart(chunk));
        var data = new byte[index.ChunkEnd(chunk) - index.ChunkStart(chunk)];
        DataBlob.DecodeChunk(blob, key, encrypted, data, digest, Chunks.PathOf(digest), index.ChunkStart(chunk));
        return data;
    }
}
