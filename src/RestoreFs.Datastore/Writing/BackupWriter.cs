using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace RestoreFs.Datastore;

/// <summary>Progress of a backup: bytes of the current image done, its size, chunks written new and reused.</summary>
public readonly record struct BackupProgress(string Archive, long Done, long Total, long NewChunks, long ReusedChunks);

/// <summary>
/// Writes one snapshot in PBS format: a fixed index per raw image (4 MiB chunks, zstd kept only when smaller,
/// AES-256-GCM when keyed), existing chunks reused and never rewritten, chunk files written to a temporary name and
/// renamed, and the manifest last. The snapshot is built in a hidden directory and renamed into place when finished,
/// so an interrupted backup leaves no half snapshot visible.
/// </summary>
public sealed partial class BackupWriter : IDisposable
{
    public const int DefaultChunkSize = 4 * 1024 * 1024;

    private readonly ChunkStore chunks;
    private readonly CryptConfig? key;
    private readonly ILogger log;
    private readonly string finalDir;
    private readonly string workDir;
    private readonly List<ManifestFile> files = [];
    private readonly BackupGroup group;
    private readonly DateTimeOffset time;
    private readonly string marker;
    private readonly ConcurrentDictionary<string, byte> inFlight = new(StringComparer.Ordinal);
    private bool finished;

    private BackupWriter(string storePath, BackupGroup group, DateTimeOffset time, CryptConfig? key, ILogger log)
    {
        this.group = group;
        this.time = time;
        this.key = key;
        this.log = log;
        if (key is not null)
        {
            CryptConfig.LogCipherChoice(log);
        }

        chunks = new ChunkStore(storePath);
        var groupDir = Path.Combine(StorePathOf(storePath, group.Namespace), group.Type, group.Id);
        finalDir = Path.Combine(groupDir, Names.FormatTime(time));
        if (Directory.Exists(finalDir))
        {
            throw new DatastoreException($"snapshot {group.Type}/{group.Id}/{Names.FormatTime(time)} already exists", finalDir);
        }

        Directory.CreateDirectory(groupDir);
        SweepStale(storePath, groupDir, log);

        // Names this writer's temporary files for the next writer, should this process die without cleaning up.
        marker = Path.Combine(storePath, $"{MarkerPrefix}{Environment.ProcessId}");
        File.WriteAllText(marker, $"{Environment.MachineName}\n{Path.GetRelativePath(storePath, groupDir)}\n");
        var owner = Path.Combine(groupDir, "owner");
        if (!File.Exists(owner))
        {
            File.WriteAllText(owner, "root@pam\n");
        }

        // A name that PBS's snapshot pattern does not match: ignored by every reader until it is renamed.
        workDir = Path.Combine(groupDir, $".{Names.FormatTime(time)}.tmp-{Environment.ProcessId}");
        Directory.CreateDirectory(workDir);
    }

    /// <summary>Prefix of the marker file a running backup keeps in the store root (<c>.restorefs-backup-PID</c>).</summary>
    public const string MarkerPrefix = ".restorefs-backup-";

    /// <summary>A marker written on another machine is only trusted to be stale after this long.</summary>
    public static readonly TimeSpan ForeignStaleAge = TimeSpan.FromDays(1);

    /// <summary>
    /// Removes what dead backups left behind: for each marker of a pid that no longer runs on this machine, its chunk
    /// temporaries (<c>.chunks/*/*.tmp_PID_*</c>) and snapshot work directories (<c>.TIME.tmp-PID</c>) in its group;
    /// and in the group about to be written, any work directory of a dead pid. Returns how many entries went.
    /// </summary>
    public static int SweepStale(string storePath, string? groupDir = null, ILogger? log = null)
    {
        log ??= NullLogger.Instance;
        var removed = 0;
        var store = Path.GetFullPath(storePath);
        foreach (var markerPath in Directory.EnumerateFiles(store, MarkerPrefix + "*"))
        {
            if (!int.TryParse(Path.GetFileName(markerPath)[MarkerPrefix.Length..], out var pid) || pid <= 0)
            {
                continue;
            }

            string[] lines;
            try
            {
                lines = File.ReadAllLines(markerPath);
            }
            catch (IOException)
            {
                continue;
            }

            var local = lines.Length > 0 && lines[0] == Environment.MachineName;
            var stale = local
                ? pid != Environment.ProcessId && !StoreLibC.ProcessExists(pid)
                : DateTime.UtcNow - File.GetLastWriteTimeUtc(markerPath) > ForeignStaleAge;
            if (!stale)
            {
                continue;
            }

            removed += SweepChunkTemporaries(Path.Combine(store, ".chunks"), pid);
            if (lines.Length > 1 && !lines[1].Split('/').Any(p => p is ".." or "") &&
                Path.GetFullPath(Path.Combine(store, lines[1])) is var dir && dir.StartsWith(store + "/", StringComparison.Ordinal))
            {
                removed += SweepWorkDirectories(dir, p => p == pid);
            }

            File.Delete(markerPath);
            log.LogInformation("Removed the temporary files of backup process {Pid}, which ended without cleaning up", pid);
        }

        if (groupDir is not null)
        {
            removed += SweepWorkDirectories(groupDir, p => p != Environment.ProcessId && !StoreLibC.ProcessExists(p));
        }

        return removed;
    }

    private static int SweepChunkTemporaries(string chunkDir, int pid)
    {
        var removed = 0;
        if (!Directory.Exists(chunkDir))
        {
            return 0;
        }

        var pattern = $"*.tmp_{pid}_*";
        foreach (var sub in Directory.EnumerateDirectories(chunkDir))
        {
            if (new FileInfo(sub).LinkTarget is not null)
            {
                continue;
            }

            foreach (var tmp in Directory.EnumerateFiles(sub, pattern))
            {
                File.Delete(tmp);
                removed++;
            }
        }

        return removed;
    }

    private static int SweepWorkDirectories(string groupDir, Func<int, bool> dead)
    {
        var removed = 0;
        if (!Directory.Exists(groupDir))
        {
            return 0;
        }

        foreach (var dir in Directory.EnumerateDirectories(groupDir, ".*.tmp-*"))
        {
            var name = Path.GetFileName(dir);
            var at = name.LastIndexOf(".tmp-", StringComparison.Ordinal);
            if (int.TryParse(name[(at + 5)..], out var pid) && pid > 0 && dead(pid) && new FileInfo(dir).LinkTarget is null)
            {
                Directory.Delete(dir, recursive: true);
                removed++;
            }
        }

        return removed;
    }

    /// <summary>
    /// Starts a snapshot; creates the datastore (with all 65536 chunk directories, as PBS does) if needed. With
    /// <paramref name="precreateChunkDirectories"/> false a new store gets only the chunk directories it uses (they are
    /// made on demand): much faster for small throw-away stores, and still readable by PBS and by us.
    /// </summary>
    public static BackupWriter Create(string storePath, BackupGroup group, DateTimeOffset time, CryptConfig? key, ILoggerFactory? logs = null,
        bool precreateChunkDirectories = true)
    {
        EnsureStore(storePath, precreateChunkDirectories);
        return new BackupWriter(Path.GetFullPath(storePath), group, DateTimeOffset.FromUnixTimeSeconds(time.ToUnixTimeSeconds()), key,
            (ILogger?)logs?.CreateLogger<BackupWriter>() ?? NullLogger.Instance);
    }

    public static void EnsureStore(string storePath, bool precreateChunkDirectories = true)
    {
        var chunkDir = Path.Combine(storePath, ".chunks");
        if (Directory.Exists(Path.Combine(chunkDir, "ffff")) || (!precreateChunkDirectories && Directory.Exists(chunkDir)))
        {
            return;
        }

        Directory.CreateDirectory(chunkDir);
        for (var i = 0; precreateChunkDirectories && i < 65536; i++)
        {
            Directory.CreateDirectory(Path.Combine(chunkDir, i.ToString("x4")));
        }

        var lockFile = Path.Combine(storePath, ".lock");
        if (!File.Exists(lockFile))
        {
            File.WriteAllBytes(lockFile, []);
        }
    }

    private static string StorePathOf(string storePath, BackupNamespace ns)
    {
        var path = storePath;
        if (ns.Path.Length > 0)
        {
            foreach (var part in ns.Path.Split('/'))
            {
                path = Path.Combine(path, "ns", part);
                Directory.CreateDirectory(path);
            }
        }

        return path;
    }

    public string SnapshotName => $"{group.Type}/{group.Id}/{Names.FormatTime(time)}";

    /// <summary>Backs up a raw image (file or block device) as <c>NAME.img.fidx</c>.</summary>
    public ManifestFile AddImage(string name, Stream source, long size, IProgress<BackupProgress>? progress = null, CancellationToken ct = default)
    {
        if (size <= 0)
        {
            throw new DatastoreException($"image {name} is empty; PBS does not back up empty images");
        }

        var archive = name.EndsWith(".img", StringComparison.Ordinal) ? name + ".fidx" : name + ".img.fidx";
        var count = (int)((size + DefaultChunkSize - 1) / DefaultChunkSize);
        var digests = new byte[count][];
        long newChunks = 0, reused = 0, done = 0;
        var workers = Math.Max(1, Environment.ProcessorCount);
        using var slots = new SemaphoreSlim(workers * 2);

        // Chunk buffers go round: one per chunk in flight and one being read, never a fresh 4 MiB array per chunk.
        var spare = new ConcurrentBag<byte[]>();
        var tasks = new List<Task>();
        Exception? failure = null;
        for (var i = 0; i < count && failure is null && !ct.IsCancellationRequested; i++)
        {
            var length = (int)Math.Min(DefaultChunkSize, size - (long)i * DefaultChunkSize);
            if (!spare.TryTake(out var buffer))
            {
                buffer = GC.AllocateUninitializedArray<byte>(DefaultChunkSize);
            }

            try
            {
                source.ReadExactly(buffer, 0, length);
            }
            catch (Exception e)
            {
                failure ??= e;
                break;
            }

            try
            {
                slots.Wait(ct);
            }
            catch (OperationCanceledException)
            {
                break;
            }

            var chunkIndex = i;
            tasks.Add(Task.Run(() =>
            {
                try
                {
                    var (digest, isNew) = StoreChunk(buffer.AsSpan(0, length));
                    digests[chunkIndex] = digest;
                    if (isNew)
                    {
                        Interlocked.Increment(ref newChunks);
                    }
                    else
                    {
                        Interlocked.Increment(ref reused);
                    }

                    var total = Interlocked.Add(ref done, length);
                    progress?.Report(new BackupProgress(archive, total, size, Interlocked.Read(ref newChunks), Interlocked.Read(ref reused)));
                }
                catch (Exception e)
                {
                    failure ??= e;
                }
                finally
                {
                    spare.Add(buffer);
                    slots.Release();
                }
            }, CancellationToken.None));
        }

        // Every started chunk finishes (or removes its temporary file) before this returns, also when cancelled.
        Task.WaitAll(tasks.ToArray(), CancellationToken.None);
        if (failure is not null)
        {
            throw failure;
        }

        ct.ThrowIfCancellationRequested();

        var indexBytes = FixedIndex.Build(size, DefaultChunkSize, digests, DateTimeOffset.UtcNow);
        var tmp = Path.Combine(workDir, archive.Replace(".fidx", ".tmp_fidx", StringComparison.Ordinal));
        File.WriteAllBytes(tmp, indexBytes);
        File.Move(tmp, Path.Combine(workDir, archive));
        var file = new ManifestFile(archive, key is null ? CryptMode.None : CryptMode.Encrypt, (ulong)size,
            Convert.ToHexStringLower(indexBytes.AsSpan(32, 32)));
        files.Add(file);
        log.LogInformation("Backed up {Archive}: {Size} bytes, {Chunks} chunks ({New} new, {Reused} reused)",
            archive, size, count, newChunks, reused);
        return file;
    }

    [ThreadStatic]
    private static byte[]? blobBuffer;

    /// <summary>
    /// The digest of a chunk: an all-zero chunk (the unused part of most disks) is recognised by a vectorised scan and
    /// gets the digest computed once per length, the same digest hashing would give.
    /// </summary>
    private byte[] DigestOf(ReadOnlySpan<byte> data)
    {
        return data.ContainsAnyExcept((byte)0)
            ? CryptConfig.ChunkDigest(key, data)
            : CryptConfig.ZeroChunkDigest(key, data.Length);
    }

    /// <summary>Stores one chunk; returns its digest and whether it was new to the store.</summary>
    private (byte[] Digest, bool IsNew) StoreChunk(ReadOnlySpan<byte> data)
    {
        var digest = DigestOf(data);
        var path = chunks.PathOf(digest);
        var existing = new FileInfo(path);
        if (existing.Exists && existing.Length > 0)
        {
            return (digest, false);
        }

        // Encoded into a buffer of this thread, reused from chunk to chunk.
        var room = DataBlob.MaxEncodedLength(data.Length);
        if (blobBuffer is null || blobBuffer.Length < room)
        {
            blobBuffer = GC.AllocateUninitializedArray<byte>(Math.Max(room, DataBlob.MaxEncodedLength(DefaultChunkSize)));
        }

        var blobLength = DataBlob.EncodeInto(data, key, compress: true, blobBuffer);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var tmp = $"{path}.tmp_{Environment.ProcessId}_{Environment.CurrentManagedThreadId}";
        inFlight[tmp] = 0;
        try
        {
            using (var stream = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1, FileOptions.None))
            {
                stream.Write(blobBuffer, 0, blobLength);
            }

            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            // Out of space, an I/O error: no half chunk stays behind.
            TryDelete(tmp);
            throw;
        }
        finally
        {
            inFlight.TryRemove(tmp, out _);
        }

        return (digest, true);
    }

    /// <summary>Adds a small file (e.g. <c>qemu-server.conf</c>) as <c>NAME.blob</c>, encrypted when keyed.</summary>
    public ManifestFile AddBlob(string name, ReadOnlySpan<byte> content, bool listInManifest = true)
    {
        var fileName = name.EndsWith(".blob", StringComparison.Ordinal) ? name : name + ".blob";
        var blob = DataBlob.Encode(content, key, compress: true);
        File.WriteAllBytes(Path.Combine(workDir, fileName), blob);
        var file = new ManifestFile(fileName, key is null ? CryptMode.None : CryptMode.Encrypt, (ulong)blob.Length, Manifest.Sha256Hex(blob));
        if (listInManifest)
        {
            files.Add(file);
        }

        return file;
    }

    /// <summary>Writes the manifest (signed when keyed) and makes the snapshot visible.</summary>
    public SnapshotInfo Finish()
    {
        var manifest = Manifest.Build(group.Type, group.Id, time.ToUnixTimeSeconds(), files, key);
        var blob = DataBlob.Encode(manifest, null, compress: true);
        File.WriteAllBytes(Path.Combine(workDir, "index.json.blob"), blob);
        Directory.Move(workDir, finalDir);
        finished = true;
        return new SnapshotInfo(group, time, finalDir);
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }

    /// <summary>An unfinished snapshot is removed with its work directory and chunk temporaries; the marker goes.</summary>
    public void Dispose()
    {
        foreach (var tmp in inFlight.Keys)
        {
            TryDelete(tmp);
        }

        if (!finished && Directory.Exists(workDir))
        {
            try
            {
                Directory.Delete(workDir, recursive: true);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                log.LogWarning("Could not remove the unfinished snapshot {Dir}: {Error}", workDir, e.Message);
                return;
            }
        }

        TryDelete(marker);
    }
}
