using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace RestoreFs.Datastore;

/// <summary>
/// Reads a PBS datastore directory (spec sections 1, 5, 7). Opens everything read-only and never writes.
/// </summary>
public sealed class DatastoreReader
{
    private static readonly string[] Types = ["vm", "ct", "host"];
    private readonly ILogger log;

    private DatastoreReader(string basePath, ILogger log)
    {
        BasePath = basePath;
        Chunks = new ChunkStore(basePath);
        this.log = log;
    }

    public string BasePath { get; }

    public ChunkStore Chunks { get; }

    public static DatastoreReader Open(string basePath, ILoggerFactory? logs = null)
    {
        var full = Path.GetFullPath(basePath);
        if (!Directory.Exists(full))
        {
            throw new DatastoreException("datastore directory does not exist", full);
        }

        if (!Directory.Exists(Path.Combine(full, ".chunks")))
        {
            throw new DatastoreException("not a datastore: it has no .chunks directory", full);
        }

        return new DatastoreReader(full, (ILogger?)logs?.CreateLogger<DatastoreReader>() ?? NullLogger.Instance);
    }

    public string NamespacePath(BackupNamespace ns)
    {
        var path = BasePath;
        if (ns.Path.Length > 0)
        {
            foreach (var part in ns.Path.Split('/'))
            {
                path = Path.Combine(path, "ns", part);
            }
        }

        return path;
    }

    public string GroupPath(BackupGroup group) => Path.Combine(NamespacePath(group.Namespace), group.Type, group.Id);

    /// <summary>The root namespace first, then every child namespace depth-first, children sorted by name.</summary>
    public IReadOnlyList<BackupNamespace> ListNamespaces()
    {
        var result = new List<BackupNamespace>();
        void Walk(BackupNamespace ns, int depth)
        {
            result.Add(ns);
            var nsDir = Path.Combine(NamespacePath(ns), "ns");
            if (depth >= 7 || !Directory.Exists(nsDir))
            {
                return;
            }

            foreach (var child in Directory.EnumerateDirectories(nsDir).Select(Path.GetFileName).OfType<string>()
                         .Where(n => Names.SafeId.IsMatch(n)).Order(StringComparer.Ordinal))
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
        var nsPath = NamespacePath(ns);
        foreach (var type in Types)
        {
            var typeDir = Path.Combine(nsPath, type);
            if (!Directory.Exists(typeDir))
            {
                continue;
            }

            result.AddRange(Directory.EnumerateDirectories(typeDir).Select(Path.GetFileName).OfType<string>()
                .Where(n => Names.SafeId.IsMatch(n)).Order(StringComparer.Ordinal).Select(id => new BackupGroup(ns, type, id)));
        }

        return result;
    }

    /// <summary>Finished snapshots of a group (those with index.json.blob), oldest first.</summary>
    public IReadOnlyList<SnapshotInfo> ListSnapshots(BackupGroup group)
    {
        var dir = GroupPath(group);
        if (!Directory.Exists(dir))
        {
            return [];
        }

        var result = new List<SnapshotInfo>();
        foreach (var path in Directory.EnumerateDirectories(dir))
        {
            var name = Path.GetFileName(path);
            if (Names.TryParseTime(name, out var time) && File.Exists(Path.Combine(path, "index.json.blob")))
            {
                result.Add(new SnapshotInfo(group, time, path));
            }
        }

        result.Sort((a, b) => a.Time.CompareTo(b.Time));
        return result;
    }

    /// <summary>A snapshot by its name, e.g. <c>vm/100/2024-05-01T10:00:00Z</c>.</summary>
    public SnapshotInfo GetSnapshot(BackupNamespace ns, string name)
    {
        var parts = name.Trim('/').Split('/');
        if (parts.Length != 3 || !Names.IsType(parts[0]) || !Names.SafeId.IsMatch(parts[1]))
        {
            throw new SnapshotNotFoundException($"invalid snapshot name '{name}' (expected e.g. vm/100/2024-05-01T10:00:00Z)");
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
                throw new SnapshotNotFoundException($"invalid snapshot time '{parts[2]}'");
            }
        }

        var dir = Path.Combine(GroupPath(group), Names.FormatTime(time));
        if (!File.Exists(Path.Combine(dir, "index.json.blob")))
        {
            throw new SnapshotNotFoundException($"snapshot {group.Type}/{group.Id}/{Names.FormatTime(time)} not found in namespace {ns}", dir);
        }

        return new SnapshotInfo(group, time, dir);
    }

    /// <summary>Reads the manifest; with a key, checks its fingerprint and signature.</summary>
    public Manifest ReadManifest(SnapshotInfo snapshot, CryptConfig? key)
    {
        var path = Path.Combine(snapshot.DirectoryPath, "index.json.blob");
        byte[] blob;
        try
        {
            blob = File.ReadAllBytes(path);
        }
        catch (FileNotFoundException)
        {
            throw new SnapshotNotFoundException("snapshot has no manifest (unfinished backup)", path);
        }

        var manifest = Manifest.Parse(DataBlob.Decode(blob, null, path), path);
        manifest.Verify(key, path);
        return manifest;
    }

    /// <summary>A decoded *.blob of the snapshot; checked against the manifest when listed there.</summary>
    public byte[] ReadBlob(SnapshotInfo snapshot, string fileName, CryptConfig? key)
    {
        if (fileName.Contains('/') || !fileName.EndsWith(".blob", StringComparison.Ordinal))
        {
            throw new ArchiveNotFoundException($"'{fileName}' is not a blob of the snapshot");
        }

        var path = Path.Combine(snapshot.DirectoryPath, fileName);
        if (!File.Exists(path))
        {
            throw new ArchiveNotFoundException($"snapshot {snapshot.Name} has no {fileName}", path);
        }

        var bytes = File.ReadAllBytes(path);
        if (fileName != "index.json.blob")
        {
            var manifest = ReadManifest(snapshot, key);
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

        return DataBlob.Decode(bytes, key, path);
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

    /// <summary>Opens a disk image after checking the index against the manifest (size and checksum).</summary>
    public ImageReader OpenImage(SnapshotInfo snapshot, string archive, CryptConfig? key, ImageReaderOptions? options = null)
    {
        var (index, file) = OpenFixedIndex(snapshot, archive, key);
        log.LogDebug("Opened {Archive} of {Snapshot}: {Size} bytes in {Chunks} chunks", file.FileName, snapshot.Name, index.Size, index.ChunkCount);
        return new ImageReader(index, Chunks, key, file.CryptMode == CryptMode.Encrypt, options);
    }

    public (FixedIndex Index, ManifestFile File) OpenFixedIndex(SnapshotInfo snapshot, string archive, CryptConfig? key)
    {
        var name = ArchiveFileName(archive);
        if (!name.EndsWith(".fidx", StringComparison.Ordinal))
        {
            throw new ArchiveNotFoundException($"'{archive}' is not a disk image archive (.img.fidx)");
        }

        var manifest = ReadManifest(snapshot, key);
        var file = manifest.Find(name) ?? throw new ArchiveNotFoundException(
            $"snapshot {snapshot.Name} has no archive {name} (it has: {string.Join(", ", manifest.Files.Select(f => f.FileName))})",
            Path.Combine(snapshot.DirectoryPath, name));
        if (file.CryptMode == CryptMode.Encrypt && key is null)
        {
            throw new KeyRequiredException($"{name} of {snapshot.Name} is encrypted (key {manifest.KeyFingerprint ?? "unknown"}); give its key file",
                Path.Combine(snapshot.DirectoryPath, name));
        }

        var path = Path.Combine(snapshot.DirectoryPath, name);
        var index = FixedIndex.Open(path);
        var csum = Convert.ToHexStringLower(index.Checksum);
        if ((ulong)index.Size != file.Size || csum != file.Csum)
        {
            throw new ManifestMismatchException(
                $"index does not match the manifest (size {index.Size} vs {file.Size}, csum {csum} vs {file.Csum})", path);
        }

        return (index, file);
    }

    /// <summary>Opens a dynamic index (.didx) after checking it against the manifest.</summary>
    public (DynamicIndex Index, ManifestFile File) OpenDynamicIndex(SnapshotInfo snapshot, string archive, CryptConfig? key)
    {
        var name = ArchiveFileName(archive);
        var manifest = ReadManifest(snapshot, key);
        var file = manifest.Find(name) ?? throw new ArchiveNotFoundException($"snapshot {snapshot.Name} has no archive {name}");
        if (file.CryptMode == CryptMode.Encrypt && key is null)
        {
            throw new KeyRequiredException($"{name} of {snapshot.Name} is encrypted; give its key file");
        }

        var path = Path.Combine(snapshot.DirectoryPath, name);
        var index = DynamicIndex.Open(path);
        var csum = Convert.ToHexStringLower(index.Checksum);
        if ((ulong)index.Size != file.Size || csum != file.Csum)
        {
            throw new ManifestMismatchException($"index does not match the manifest (size {index.Size} vs {file.Size}, csum {csum} vs {file.Csum})", path);
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
