using System.Collections.Concurrent;
using System.Text;
using Microsoft.Extensions.Logging;
using RestoreFs.Fuse;
using RestoreFs.RestoreApi;

namespace RestoreFs.Tree.Files;

/// <summary>
/// <c>files/</c> served by restore VMs (through <see cref="IRestoreVms"/>): listings, with small files inline and exact
/// file maps for files the mount then reads straight from the backup image; reads through the VM in blocks with
/// read-ahead for the rest; listings of subdirectories fetched ahead of a tree walker; a listing that raced a failed
/// read of its volume checked again. Memory is bounded: content by <see cref="TreeOptions.FilesCacheBytes"/>, file
/// maps by <see cref="MapBudget"/> (oldest maps of the least recently used snapshot out first; an evicted file reads
/// through the VM again), and everything of a snapshot is released when its VM stops.
/// </summary>
public sealed class VmFiles : IFilesBackend, IAsyncDisposable
{
    /// <summary>Files up to this size come with their directory's listing.</summary>
    public const int InlineMax = 64 * 1024;

    /// <summary>Large files are fetched in blocks of this size; a sequential reader gets the next block ahead.</summary>
    public const int Block = 2 * 1024 * 1024;

    public const int ReadAheadBlocks = 3;

    /// <summary>Subdirectories listed ahead of a tree walker, at most this many at once.</summary>
    public const int PrefetchDirectories = 2;

    /// <summary>Listings fetched ahead and not yet asked for, at most this many per snapshot.</summary>
    public const int PrefetchedMax = 64;

    private readonly TreeContext context;
    private readonly IRestoreVms vms;
    private readonly ILogger log;
    private readonly ContentCache cache;
    private readonly ConcurrentDictionary<ContentKey, Lazy<Task<byte[]>>> inflight = new();
    private readonly SemaphoreSlim prefetchSlots = new(PrefetchDirectories, PrefetchDirectories);
    private readonly ConcurrentDictionary<string, FilesSession> sessions = new(StringComparer.Ordinal);
    private readonly object mapGate = new();
    private long mapUnits;
    private Timer? sweeper;

    public VmFiles(TreeContext context, IRestoreVms vms)
    {
        this.context = context;
        this.vms = vms;
        log = context.Logs.CreateLogger<VmFiles>();
        cache = new ContentCache(context.Options.FilesCacheBytes);
    }

    /// <summary>File maps of all snapshots together, in units of one per map plus one per extent (about 40 bytes
    /// each with their keys): 256 Ki units stay near 10 MiB.</summary>
    public long MapBudget { get; set; } = DefaultMapBudget;

    public const long DefaultMapBudget = 256 * 1024;

    /// <summary>How often the state of stopped VMs is looked for.</summary>
    public static TimeSpan SweepInterval { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>A snapshot whose files/ nobody used for this long has its state released like a stopped VM's (the VM
    /// itself keeps running until its own idle timeout): browsing many snapshots one after another then holds about
    /// one snapshot's listings and maps, not all of them.</summary>
    public TimeSpan IdleRelease { get; set; } = DefaultIdleRelease;

    /// <summary><see cref="IdleRelease"/> of new instances (RESTOREFS_FILES_IDLE).</summary>
    public static TimeSpan DefaultIdleRelease { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>The bytes of cached content held now (all VMs).</summary>
    public long CachedBytes => cache.Bytes;

    /// <summary>Map units held now (all VMs).</summary>
    public long MapUnits => Interlocked.Read(ref mapUnits);

    /// <summary>Snapshots with state held now.</summary>
    public int Sessions => sessions.Count;

    private FilesSession Session(SnapshotState snapshot)
    {
        var vm = RestoreVms.VmName(snapshot);
        var session = sessions.GetOrAdd(vm, v => new FilesSession(v));
        session.Snapshot = snapshot;
        session.Touch();
        StartSweeper();
        return session;
    }

    public async ValueTask<IReadOnlyList<RemoteEntry>> ListAsync(SnapshotState snapshot, byte[] path, CancellationToken ct)
    {
        var session = Session(snapshot);
        var key = FilesSession.Key(path);
        IReadOnlyList<RemoteEntry>? list = null;
        if (session.Prefetched.TryRemove(key, out var early))
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

        list ??= await FetchListAsync(snapshot, session, path, ct).ConfigureAwait(false);
        var dirs = list.Where(e => e.Type == 'd' && e.Error is null).Select(e => Child(path, e.Name)).ToList();
        session.Subdirectories[key] = dirs;
        for (var i = 0; i < dirs.Count; i++)
        {
            session.Parents[FilesSession.Key(dirs[i])] = (key, i);
        }

        // Ahead of a tree walker: this directory's first subdirectories, and the siblings that come after it.
        var ahead = dirs.Take(PrefetchDirectories).ToList();
        if (session.Parents.TryGetValue(key, out var parent) && session.Subdirectories.TryGetValue(parent.Parent, out var siblings))
        {
            ahead.AddRange(siblings.Skip(parent.Index + 1).Take(PrefetchDirectories));
        }

        Prefetch(snapshot, session, path, ahead);
        return list;
    }

    /// <summary>
    /// Lists a directory in the VM. A file system there may answer a directory whose blocks could not be read (a
    /// damaged chunk in the backup) with fewer entries or none instead of an error. So a listing during which a read
    /// of its volume's part of the disk failed (seen by our NBD server; the daemon also reports what the VM's kernel
    /// logged) is asked once more (the failure may have been another request's), and then fails with EIO naming the
    /// damage instead of showing a short directory.
    /// </summary>
    private async Task<IReadOnlyList<RemoteEntry>> FetchListAsync(SnapshotState snapshot, FilesSession session, byte[] path, CancellationToken ct)
    {
        var volume = VolumeOf(path);
        if (volume is null)
        {
            return await FetchListOnceAsync(snapshot, session, path, ct).ConfigureAwait(false); // the levels above file systems
        }

        var archive = ArchiveOf(snapshot, path);
        var placement = session.Placements.GetValueOrDefault(FilesSession.Key(volume));
        for (var attempt = 0; ; attempt++)
        {
            var mark = snapshot.ExportReadFailures.Mark();
            IReadOnlyList<RemoteEntry> list;
            try
            {
                list = await FetchListOnceAsync(snapshot, session, path, ct).ConfigureAwait(false);
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
                throw new IOException($"{Encoding.UTF8.GetString(path)} cannot be listed completely: reading {damage.Archive} at offset {damage.Offset} failed ({damage.Reason})");
            }
        }
    }

    /// <summary>The volume a files/ path lies in (<c>disk/part/N</c>, <c>disk/lvm/VG/LV</c>, <c>disk/raw</c>); null above.</summary>
    private static byte[]? VolumeOf(byte[] path) => LinkTable.VolumeLength(path) is var n and >= 0 ? path[..n] : null;

    private async Task<IReadOnlyList<RemoteEntry>> FetchListOnceAsync(SnapshotState snapshot, FilesSession session, byte[] path, CancellationToken ct) =>
        await vms.RequestAsync(snapshot, async client =>
        {
            var list = new List<RemoteEntry>();
            var archive = ArchiveOf(snapshot, path);
            var volume = VolumeOf(path);
            var placement = volume is null ? null : session.Placements.GetValueOrDefault(FilesSession.Key(volume));
            await foreach (var e in client.ListAsync(path, new ListOptions(InlineMax, Extents: archive is not null, Xattrs: true), ct).ConfigureAwait(false))
            {
                if (list.Count >= GuestAnswers.MaxEntries)
                {
                    throw new MalformedAnswerException($"the restore VM lists more than {GuestAnswers.MaxEntries} entries in {Encoding.UTF8.GetString(path)}");
                }

                list.Add(EntryOf(e));
                if (e.Content is { } content)
                {
                    if ((ulong)content.Length != (e.Size ?? 0) || e.Type != 'f')
                    {
                        throw new MalformedAnswerException($"the restore VM sent {content.Length} bytes inline for {GuestAnswers.Show(e.Name)} of {e.Size} bytes");
                    }

                    cache.Put(ContentKey.WholeFile(session.Vm, Child(path, e.Name)), content);
                }
                else if (e.Extents is { } place && e.Type is 'd' or 'v')
                {
                    session.Placements[FilesSession.Key(Child(path, e.Name))] = [.. place]; // a volume's place on its disk
                }
                else if (e.Extents is { } extents && e.Type == 'f' && archive is not null && Valid(snapshot, archive, extents, (long)(e.Size ?? 0), placement))
                {
                    AddMap(session, Child(path, e.Name), new FileMap(archive, [.. extents], (long)(e.Size ?? 0)));
                }
            }

            return (IReadOnlyList<RemoteEntry>)list;
        }, ct).ConfigureAwait(false);

    /// <summary>Keeps a file map within <see cref="MapBudget"/>: the oldest maps of the least recently used snapshot
    /// go first (those files then read through the VM again).</summary>
    private void AddMap(FilesSession session, byte[] path, FileMap map)
    {
        var added = session.AddMap(path, map);
        if (Interlocked.Add(ref mapUnits, added) <= MapBudget)
        {
            return;
        }

        lock (mapGate)
        {
            while (Interlocked.Read(ref mapUnits) > MapBudget)
            {
                var victim = sessions.Values.Where(s => s.MapUnits > 0).OrderBy(s => s == session ? 1 : 0).ThenBy(s => s.LastUse).FirstOrDefault();
                var freed = victim?.DropOldestMap() ?? 0;
                if (freed == 0)
                {
                    return;
                }

                Interlocked.Add(ref mapUnits, -freed);
            }
        }
    }

    /// <summary>
    /// A tree walker (cp -a, rsync, find) lists the subdirectories next: list a few of them ahead, so the VM works
    /// while the host copies. Only inside file systems (not at the disk and volume levels), a bounded number at once.
    /// </summary>
    private void Prefetch(SnapshotState snapshot, FilesSession session, byte[] path, List<byte[]> children)
    {
        if (path.Count(b => b == (byte)'/') < 2)
        {
            return;
        }

        foreach (var child in children)
        {
            var key = FilesSession.Key(child);
            if (session.Prefetched.ContainsKey(key) || session.Subdirectories.ContainsKey(key))
            {
                continue; // on its way, or listed already
            }

            if (session.Prefetched.Count >= PrefetchedMax || !prefetchSlots.Wait(0))
            {
                return;
            }

            var task = Task.Run(async () =>
            {
                try
                {
                    return await FetchListAsync(snapshot, session, child, CancellationToken.None).ConfigureAwait(false);
                }
                finally
                {
                    prefetchSlots.Release();
                }
            });
            if (!session.Prefetched.TryAdd(key, task))
            {
                _ = task.ContinueWith(t => _ = t.Exception, TaskScheduler.Default);
            }
        }
    }

    /// <summary>The image archive a files/ path is on (its first component names the disk), when it can be told.</summary>
    private static string? ArchiveOf(SnapshotState snapshot, byte[] path)
    {
        var slash = Array.IndexOf(path, (byte)'/');
        var first = Encoding.UTF8.GetString(slash < 0 ? path : path.AsSpan(0, slash));
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
        catch (Exception e) when (e is IOException or FuseException)
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
        var session = Session(snapshot);
        if (session.TryGetMap(path, out var map))
        {
            return await map.ReadAsync(snapshot, offset, buffer, ct).ConfigureAwait(false);
        }

        if (cache.Get(ContentKey.WholeFile(session.Vm, path)) is { } whole)
        {
            return CopyOut(whole, offset, buffer);
        }

        var index = offset / Block;
        var block = await BlockAsync(snapshot, session.Vm, path, index, ct).ConfigureAwait(false);
        var key = FilesSession.Key(path);
        var previous = session.LastBlock.GetValueOrDefault(key, -1);
        session.LastBlock[key] = index;
        if (block.Length == Block && (index == 0 || previous == index || previous == index - 1))
        {
            // Sequential: fetch the next blocks while this one is consumed (the VM serves requests concurrently).
            for (var ahead = 1; ahead <= ReadAheadBlocks; ahead++)
            {
                _ = BlockAsync(snapshot, session.Vm, path, index + ahead, CancellationToken.None).ContinueWith(t => _ = t.Exception, TaskScheduler.Default);
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
                var n = await vms.RequestAsync(snapshot, client => client.ReadAsync(path, index * Block, buffer, CancellationToken.None), CancellationToken.None)
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

    private void StartSweeper()
    {
        if (sweeper is not null)
        {
            return;
        }

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

    /// <summary>Releases the state of every snapshot whose VM no longer runs or that was idle for <see cref="IdleRelease"/>.</summary>
    public void Sweep()
    {
        if (log.IsEnabled(LogLevel.Debug))
        {
            var gc = GC.GetGCMemoryInfo();
            log.LogDebug("Memory: heap {Heap} MiB (fragmented {Fragmented} MiB, committed {Committed} MiB), chunk cache {Chunks} MiB, files/ content {Content} MiB, map units {Maps}, sessions {Sessions}",
                gc.HeapSizeBytes >> 20, gc.FragmentedBytes >> 20, gc.TotalCommittedBytes >> 20, context.ChunkMemory.Used >> 20, cache.Bytes >> 20, MapUnits, sessions.Count);
        }

        var released = 0;
        var now = Environment.TickCount64;
        foreach (var (vm, session) in sessions)
        {
            if (!vms.IsRunning(vm) || now - session.LastUse > IdleRelease.TotalMilliseconds)
            {
                released += Release(vm) ? 1 : 0;
            }
        }

        if (released > 0)
        {
            // What was released is mostly large arrays (inline files, blocks, chunk buffers): give the memory back.
            context.ChunkMemory.DropSpares();
            GC.Collect(2, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        }
    }

    /// <summary>
    /// Releases everything held for a snapshot's VM (it stopped): cached content, file maps, walker bookkeeping, the
    /// decoded chunks of its images, and
    /// the listed directories' nodes (<see cref="FilesNodes"/>), so the mount's memory goes back to what it was before
    /// the snapshot was browsed. The next use lists again (and starts the VM).
    /// </summary>
    public bool Release(string vm)
    {
        if (!sessions.TryRemove(vm, out var session))
        {
            return false;
        }

        cache.RemoveVm(vm);
        lock (mapGate)
        {
            Interlocked.Add(ref mapUnits, -session.DropMaps());
        }

        session.Placements.Clear();
        session.Subdirectories.Clear();
        session.Parents.Clear();
        session.Prefetched.Clear();
        session.LastBlock.Clear();
        session.Snapshot?.DropImageCaches();
        var nodes = context.FilesNodes.Release(vm);
        log.LogDebug("Released files/ state of {Vm}: {Nodes} directories unloaded", vm, nodes);
        return true;
    }

    public bool IsVmRunning(SnapshotState snapshot) => vms.IsRunning(RestoreVms.VmName(snapshot));

    public bool IsMapped(SnapshotState snapshot, byte[] path) =>
        sessions.TryGetValue(RestoreVms.VmName(snapshot), out var session) && session.HasMap(path);

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
        Session(snapshot);
        var list = await vms.RequestAsync(snapshot, client => client.XattrsAsync(path, ct), ct).ConfigureAwait(false);
        return list.Select(x => new RemoteXattr(x.Name, x.Value, x.Error)).ToList();
    }

    /// <summary>SEEK_DATA/SEEK_HOLE: from the file map's holes for a mapped file (no VM needed), else the guest's lseek.
    /// A small file that came inline counts as all data.</summary>
    public async ValueTask<long> SeekAsync(SnapshotState snapshot, byte[] path, long offset, bool data, CancellationToken ct)
    {
        var session = Session(snapshot);
        if (session.TryGetMap(path, out var map))
        {
            return map.Seek(offset, data);
        }

        if (cache.Get(ContentKey.WholeFile(session.Vm, path)) is not null)
        {
            throw new NotSupportedException();
        }

        return await vms.RequestAsync(snapshot, client => client.SeekAsync(path, offset, data, ct), ct).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        if (sweeper is { } timer)
        {
            await timer.DisposeAsync().ConfigureAwait(false);
        }

        await vms.DisposeAsync().ConfigureAwait(false);
    }
}
