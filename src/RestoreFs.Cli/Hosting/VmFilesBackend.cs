using Microsoft.Extensions.Logging;
using RestoreFs.Fuse;
using RestoreFs.RestoreApi;
using RestoreFs.RestoreVm;
using RestoreFs.Tree;
using RestoreFs.Tree.Files;

namespace RestoreFs.Cli.Hosting;

/// <summary>
/// <c>files/</c> through restore VMs: one VM per snapshot, started on first use with the snapshot's images as disks
/// (exports of this mount's NBD server). A VM that died (killed, crashed, idle-stopped) is restarted and the request
/// retried once, so the user only sees a delay.
/// </summary>
public sealed class VmFilesBackend(TreeContext context, RestoreVmManager manager) : IFilesBackend, IAsyncDisposable
{
    /// <summary>Files up to this size come with their directory's listing.</summary>
    public const int InlineMax = 64 * 1024;

    /// <summary>Large files are fetched in blocks of this size; a sequential reader gets the next block ahead.</summary>
    public const int Block = 2 * 1024 * 1024;

    public const int ReadAheadBlocks = 3;

    /// <summary>Subdirectories listed ahead of a tree walker, at most this many at once.</summary>
    public const int PrefetchDirectories = 2;

    private readonly ILogger log = context.Logs.CreateLogger<VmFilesBackend>();
    private readonly ContentCache cache = new(256L << 20);
    private readonly System.Collections.Concurrent.ConcurrentDictionary<ContentKey, Lazy<Task<byte[]>>> inflight = new();
    private readonly System.Collections.Concurrent.ConcurrentDictionary<PathKey, long> lastBlock = new();
    private readonly System.Collections.Concurrent.ConcurrentDictionary<PathKey, Task<IReadOnlyList<RemoteEntry>>> prefetched = new();
    private readonly SemaphoreSlim prefetchSlots = new(PrefetchDirectories, PrefetchDirectories);
    private readonly System.Collections.Concurrent.ConcurrentDictionary<PathKey, List<byte[]>> subdirectories = new();
    private readonly System.Collections.Concurrent.ConcurrentDictionary<PathKey, (PathKey Key, int Index)> parents = new();
    private readonly System.Collections.Concurrent.ConcurrentDictionary<PathKey, FileMap> maps = new();
    private readonly System.Collections.Concurrent.ConcurrentDictionary<PathKey, FileExtent[]> placements = new();

    public static string VmName(SnapshotState state)
    {
        var s = state.Snapshot;
        var ns = s.Group.Namespace.Path.Length > 0 ? s.Group.Namespace.Path + "/" : "";
        return $"{state.Context.Options.StorePath}:{ns}{s.Name}";
    }

    public async ValueTask<IReadOnlyList<RemoteEntry>> ListAsync(SnapshotState snapshot, byte[] path, CancellationToken ct)
    {
        var vm = VmName(snapshot);
        var key = PathKey.Of(vm, path);
        IReadOnlyList<RemoteEntry>? list = null;
        if (prefetched.TryRemove(key, out var early))
        {
            try
            {
                list = await early.WaitAsync(ct).ConfigureAwait(false);
            }
            catch (Exception e) when (e is IOException or RestoreApiException)
            {
                // ask again below, with the restart-and-retry of a normal request
            }
        }

        list ??= await FetchListAsync(snapshot, vm, path, ct).ConfigureAwait(false);
        var dirs = list.Where(e => e.Type == 'd' && e.Error is null).Select(e => Child(path, e.Name)).ToList();
        subdirectories[key] = dirs;
        for (var i = 0; i < dirs.Count; i++)
        {
            parents[PathKey.Of(vm, dirs[i])] = (key, i);
        }

        // Ahead of a tree walker: this directory's first subdirectories, and the siblings that come after it.
        var ahead = dirs.Take(PrefetchDirectories).ToList();
        if (parents.TryGetValue(key, out var parent) && subdirectories.TryGetValue(parent.Key, out var siblings))
        {
            ahead.AddRange(siblings.Skip(parent.Index + 1).Take(PrefetchDirectories));
        }

        Prefetch(snapshot, vm, path, ahead);
        return list;
    }

    /// <summary>
    /// Lists a directory in the VM. A file system there may answer a directory whose blocks could not be read (a
    /// damaged chunk in the backup) with fewer entries or none instead of an error. So a listing during which a read
    /// of its volume's part of the disk failed (seen by our NBD server; the daemon also reports what the VM's kernel
    /// logged) is asked once more (the failure may have been another request's), and then fails with EIO naming the
    /// damage instead of showing a short directory.
    /// </summary>
    private async Task<IReadOnlyList<RemoteEntry>> FetchListAsync(SnapshotState snapshot, string vm, byte[] path, CancellationToken ct)
    {
        var volume = VolumeOf(path);
        if (volume is null)
        {
            return await FetchListOnceAsync(snapshot, vm, path, ct).ConfigureAwait(false); // the levels above file systems
        }

        var archive = ArchiveOf(snapshot, path);
        var placement = placements.GetValueOrDefault(PathKey.Of(vm, volume));
        for (var attempt = 0; ; attempt++)
        {
            var mark = snapshot.ExportReadFailures.Mark();
            IReadOnlyList<RemoteEntry> list;
            try
            {
                list = await FetchListOnceAsync(snapshot, vm, path, ct).ConfigureAwait(false);
            }
            catch (IOException e) when (attempt == 0 && e.InnerException is RestoreApiException { StatusCode: 500 })
            {
                continue;
            }

            var damage = snapshot.ExportReadFailures.Since(mark).FirstOrDefault(f =>
                (archive is null || f.Archive == archive)
                && (placement is null || placement.Any(x => f.Offset < x.Disk + x.Length && f.Offset + f.Length > x.Disk)));
            if (damage.Archive is null)
            {
                return list;
            }

            if (attempt > 0)
            {
                throw new IOException($"{System.Text.Encoding.UTF8.GetString(path)} cannot be listed completely: reading {damage.Archive} at offset {damage.Offset} failed ({damage.Reason})");
            }
        }
    }

    /// <summary>The volume a files/ path lies in (<c>disk/part/N</c>, <c>disk/lvm/VG/LV</c>, <c>disk/raw</c>); null above.</summary>
    private static byte[]? VolumeOf(byte[] path)
    {
        var parts = System.Text.Encoding.UTF8.GetString(path).Split('/');
        var depth = parts.Length > 1 ? parts[1] switch { "part" => 3, "lvm" => 4, "raw" => 2, _ => int.MaxValue } : int.MaxValue;
        return parts.Length >= depth ? System.Text.Encoding.UTF8.GetBytes(string.Join('/', parts.Take(depth))) : null;
    }

    private async Task<IReadOnlyList<RemoteEntry>> FetchListOnceAsync(SnapshotState snapshot, string vm, byte[] path, CancellationToken ct) =>
        await WithVmAsync(snapshot, async client =>
        {
            var list = new List<RemoteEntry>();
            var archive = ArchiveOf(snapshot, path);
            var volume = VolumeOf(path);
            var placement = volume is null ? null : placements.GetValueOrDefault(PathKey.Of(vm, volume));
            await foreach (var e in client.ListAsync(path, new ListOptions(InlineMax, Extents: archive is not null, Xattrs: true), ct).ConfigureAwait(false))
            {
                if (list.Count >= GuestAnswers.MaxEntries)
                {
                    throw new MalformedAnswerException($"the restore VM lists more than {GuestAnswers.MaxEntries} entries in {System.Text.Encoding.UTF8.GetString(path)}");
                }

                list.Add(EntryOf(e));
                if (e.Content is { } content)
                {
                    if ((ulong)content.Length != (e.Size ?? 0) || e.Type != 'f')
                    {
                        throw new MalformedAnswerException($"the restore VM sent {content.Length} bytes inline for {GuestAnswers.Show(e.Name)} of {e.Size} bytes");
                    }

                    cache.Put(ContentKey.WholeFile(vm, Child(path, e.Name)), content);
                }
                else if (e.Extents is { } place && e.Type is 'd' or 'v')
                {
                    placements[PathKey.Of(vm, Child(path, e.Name))] = [.. place]; // a volume's place on its disk
                }
                else if (e.Extents is { } extents && e.Type == 'f' && archive is not null && Valid(snapshot, archive, extents, (long)(e.Size ?? 0), placement))
                {
                    maps[PathKey.Of(vm, Child(path, e.Name))] = new FileMap(archive, [.. extents], (long)(e.Size ?? 0));
                }
            }

            return (IReadOnlyList<RemoteEntry>)list;
        }, ct).ConfigureAwait(false);

    /// <summary>
    /// A tree walker (cp -a, rsync, find) lists the subdirectories next: list a few of them ahead, so the VM works
    /// while the host copies. Only inside file systems (not at the disk and volume levels), a bounded number at once.
    /// </summary>
    private void Prefetch(SnapshotState snapshot, string vm, byte[] path, List<byte[]> children)
    {
        if (path.Count(b => b == (byte)'/') < 2)
        {
            return;
        }

        foreach (var child in children)
        {
            var key = PathKey.Of(vm, child);
            if (prefetched.ContainsKey(key) || subdirectories.ContainsKey(key))
            {
                continue; // on its way, or listed already
            }

            if (prefetched.Count >= 64 || !prefetchSlots.Wait(0))
            {
                return;
            }

            var task = Task.Run(async () =>
            {
                try
                {
                    return await FetchListAsync(snapshot, vm, child, CancellationToken.None).ConfigureAwait(false);
                }
                finally
                {
                    prefetchSlots.Release();
                }
            });
            if (!prefetched.TryAdd(key, task))
            {
                _ = task.ContinueWith(t => _ = t.Exception, TaskScheduler.Default);
            }
        }
    }

    /// <summary>The image archive a files/ path is on (its first component names the disk), when it can be told.</summary>
    private static string? ArchiveOf(SnapshotState snapshot, byte[] path)
    {
        var slash = Array.IndexOf(path, (byte)'/');
        var first = System.Text.Encoding.UTF8.GetString(slash < 0 ? path : path.AsSpan(0, slash));
        var archives = snapshot.ImageArchives;
        if (archives.Contains(first))
        {
            return first;
        }

        // The daemon names a disk by its virtio serial, which QEMU cuts to 20 bytes.
        const string suffix = ".img.fidx";
        if (!first.EndsWith(suffix, StringComparison.Ordinal))
        {
            return null;
        }

        var serial = first[..^suffix.Length];
        var matches = archives.Where(a => a.StartsWith(serial, StringComparison.Ordinal)).ToList();
        return matches.Count == 1 ? matches[0] : null;
    }

    /// <summary>A map is used only when it stays inside the file, the image and the volume's place on it (the guest is
    /// not trusted blindly); otherwise the file is read through the VM.</summary>
    private bool Valid(SnapshotState snapshot, string archive, IReadOnlyList<FileExtent> extents, long size, FileExtent[]? placement)
    {
        long imageSize;
        try
        {
            imageSize = snapshot.OpenImage(archive).Size;
        }
        catch (Exception e) when (e is IOException or Fuse.FuseException)
        {
            return false;
        }

        var problem = GuestAnswers.CheckExtents(extents, size, 0, imageSize);
        if (problem is null && placement is { Length: > 0 }
            && extents.Any(x => !placement.Any(p => x.Disk >= p.Disk && x.Disk - p.Disk <= p.Length - x.Length)))
        {
            problem = "an extent lies outside its volume's place on the disk";
        }

        if (problem is not null)
        {
            context.WarnOnce($"map:{archive}", null, "Ignoring a file map from the restore VM ({Problem}) in {Archive}; reading through the VM", problem, archive);
            return false;
        }

        return true;
    }

    public async ValueTask<int> ReadAsync(SnapshotState snapshot, byte[] path, long offset, Memory<byte> buffer, CancellationToken ct)
    {
        var vm = VmName(snapshot);
        if (maps.TryGetValue(PathKey.Of(vm, path), out var map))
        {
            return await map.ReadAsync(snapshot, offset, buffer, ct).ConfigureAwait(false);
        }

        if (cache.Get(ContentKey.WholeFile(vm, path)) is { } whole)
        {
            return CopyOut(whole, offset, buffer);
        }

        var index = offset / Block;
        var block = await BlockAsync(snapshot, vm, path, index, ct).ConfigureAwait(false);
        var pathKey = PathKey.Of(vm, path);
        var previous = lastBlock.GetValueOrDefault(pathKey, -1);
        lastBlock[pathKey] = index;
        if (block.Length == Block && (index == 0 || previous == index || previous == index - 1))
        {
            // Sequential: fetch the next blocks while this one is consumed (the VM serves requests concurrently).
            for (var ahead = 1; ahead <= ReadAheadBlocks; ahead++)
            {
                _ = BlockAsync(snapshot, vm, path, index + ahead, CancellationToken.None).ContinueWith(t => _ = t.Exception, TaskScheduler.Default);
            }
        }

        return CopyOut(block, offset - index * Block, buffer);
    }

    private static int CopyOut(byte[] data, long offset, Memory<byte> buffer)
    {
        if (offset >= data.Length)
        {
            return 0;
        }

        var n = (int)Math.Min(buffer.Length, data.Length - offset);
        data.AsSpan((int)offset, n).CopyTo(buffer.Span);
        return n;
    }

    private async Task<byte[]> BlockAsync(SnapshotState snapshot, string vm, byte[] path, long index, CancellationToken ct)
    {
        var key = ContentKey.BlockAt(vm, path, index * Block);
        if (cache.Get(key) is { } cached)
        {
            return cached;
        }

        var fetch = inflight.GetOrAdd(key, k => new Lazy<Task<byte[]>>(() => Task.Run(async () =>
        {
            try
            {
                var buffer = new byte[Block];
                var n = await WithVmAsync(snapshot, client => client.ReadAsync(path, index * Block, buffer, CancellationToken.None), CancellationToken.None)
                    .ConfigureAwait(false);
                var data = n == Block ? buffer : buffer[..n];
                cache.Put(key, data);
                return data;
            }
            finally
            {
                inflight.TryRemove(key, out _);
            }
        })));
        return await fetch.Value.WaitAsync(ct).ConfigureAwait(false);
    }

    private static byte[] Child(byte[] parent, byte[] name) => [.. parent, (byte)'/', .. name];

    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, byte> used = new(StringComparer.Ordinal);
    private Timer? sweeper;

    /// <summary>How often the state of stopped VMs is looked for.</summary>
    public static TimeSpan SweepInterval { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Releases what a stopped VM's snapshot holds here: cached content (inline small files, read-ahead blocks) and the
    /// walker bookkeeping. File maps stay: they are the image's, and reading through them needs no VM.
    /// </summary>
    public void Forget(string vm)
    {
        cache.RemoveVm(vm);
        foreach (var key in lastBlock.Keys.Where(k => k.Vm == vm))
        {
            lastBlock.TryRemove(key, out _);
        }

        foreach (var key in subdirectories.Keys.Where(k => k.Vm == vm))
        {
            subdirectories.TryRemove(key, out _);
        }

        foreach (var key in parents.Keys.Where(k => k.Vm == vm))
        {
            parents.TryRemove(key, out _);
        }

        foreach (var key in prefetched.Keys.Where(k => k.Vm == vm))
        {
            prefetched.TryRemove(key, out _);
        }
    }

    /// <summary>The bytes of cached content held now (all VMs).</summary>
    public long CachedBytes => cache.Bytes;

    private void Sweep()
    {
        foreach (var vm in used.Keys)
        {
            if (!manager.HasLiveSession(vm))
            {
                used.TryRemove(vm, out _);
                Forget(vm);
            }
        }
    }

    private async Task<T> WithVmAsync<T>(SnapshotState snapshot, Func<IRestoreClient, Task<T>> request, CancellationToken ct)
    {
        var name = VmName(snapshot);
        used[name] = 0;
        if (sweeper is null)
        {
            var timer = new Timer(_ => Sweep(), null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
            if (Interlocked.CompareExchange(ref sweeper, timer, null) is null)
            {
                timer.Change(SweepInterval, SweepInterval);
            }
            else
            {
                timer.Dispose();
            }
        }

        for (var attempt = 0; ; attempt++)
        {
            VmSession session;
            try
            {
                session = await manager.EnsureRunningAsync(name, Disks(snapshot), ct).ConfigureAwait(false);
            }
            catch (VmLimitException e)
            {
                throw new FuseException(Errors.EAGAIN, e.Message);
            }

            try
            {
                return await request(session.Client).ConfigureAwait(false);
            }
            catch (IOException e) when (attempt == 0)
            {
                log.LogWarning("Restore VM for {Snapshot} stopped answering ({Reason}); restarting it and retrying", snapshot.Snapshot.Name, e.Message);
                await manager.InvalidateAsync(name).ConfigureAwait(false);
            }
            catch (RestoreApiException e)
            {
                throw new IOException(e.Message, e);
            }
        }
    }

    private List<VmDisk> Disks(SnapshotState snapshot)
    {
        var disks = new List<VmDisk>();
        foreach (var archive in snapshot.ImageArchives)
        {
            context.Exports.UriFor(snapshot, archive); // exports it
            var serial = archive.EndsWith(".img.fidx", StringComparison.Ordinal) ? archive[..^".img.fidx".Length] : archive;
            disks.Add(new VmDisk(serial, context.Exports.SocketPath, ImageExports.ExportName(snapshot, archive)));
        }

        return disks;
    }

    public bool IsVmRunning(SnapshotState snapshot) => manager.HasLiveSession(VmName(snapshot));

    public bool IsMapped(SnapshotState snapshot, byte[] path) => maps.ContainsKey(PathKey.Of(VmName(snapshot), path));

    /// <summary>A listed entry with everything the guest's statx and xattrs said.</summary>
    public static RemoteEntry EntryOf(ArchiveEntry e) =>
        new(e.Name, e.Type, e.Size ?? 0, e.MTime ?? 0, e.Mode, e.Uid, e.Gid, e.Target, e.Error)
        {
            MTimeNs = e.MTimeNs ?? 0,
            ATime = e.ATime is { } a ? new FuseTime(a.Seconds, a.Nanoseconds) : null,
            CTime = e.CTime is { } c ? new FuseTime(c.Seconds, c.Nanoseconds) : null,
            Dev = e.Dev is { } d ? (d.Major, d.Minor) : null,
            Ino = e.Ino,
            NLink = e.NLink,
            Blocks = e.Blocks,
            RDev = e.RDev is { } r ? (r.Major, r.Minor) : null,
            Xattrs = e.Xattrs?.Select(x => new RemoteXattr(x.Name, x.Value, x.Error)).ToList(),
        };

    public async ValueTask<IReadOnlyList<RemoteXattr>> XattrsAsync(SnapshotState snapshot, byte[] path, CancellationToken ct)
    {
        var list = await WithVmAsync(snapshot, client => client.XattrsAsync(path, ct), ct).ConfigureAwait(false);
        return list.Select(x => new RemoteXattr(x.Name, x.Value, x.Error)).ToList();
    }

    /// <summary>SEEK_DATA/SEEK_HOLE: from the file map's holes for a mapped file (no VM needed), else the guest's lseek.
    /// A small file that came inline counts as all data.</summary>
    public async ValueTask<long> SeekAsync(SnapshotState snapshot, byte[] path, long offset, bool data, CancellationToken ct)
    {
        var vm = VmName(snapshot);
        if (maps.TryGetValue(PathKey.Of(vm, path), out var map))
        {
            return map.Seek(offset, data);
        }

        if (cache.Get(ContentKey.WholeFile(vm, path)) is not null)
        {
            throw new NotSupportedException();
        }

        return await WithVmAsync(snapshot, client => client.SeekAsync(path, offset, data, ct), ct).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        if (sweeper is { } timer)
        {
            await timer.DisposeAsync().ConfigureAwait(false);
        }

        await manager.DisposeAsync().ConfigureAwait(false);
    }
}
