using System.Collections.Concurrent;
using System.Diagnostics;
using RestoreFs.RestoreDaemon.Native;

namespace RestoreFs.RestoreDaemon.Disks;

public sealed partial class DiskCatalog
{
    private const int ENODEV = 19, ENOTBLK = 15, MNT_DETACH = 2;
    private const ulong ReadOnlyFlags = LibC.MS_RDONLY | LibC.MS_NOSUID | LibC.MS_NODEV | LibC.MS_NOEXEC;

    private readonly ConcurrentDictionary<string, Lazy<Task<string>>> attempts = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<Lazy<Task<string>>, long> failedAt = new();
    private readonly ConcurrentDictionary<string, MountedVolume> mounted = new(StringComparer.Ordinal);
    private readonly List<string> createdDirectories = [];

    /// <summary>Every volume a mount was attempted for, with its error when it failed.</summary>
    public IReadOnlyList<MountedVolume> Mounts => mounted.Values.OrderBy(m => m.Volume.Id, StringComparer.Ordinal).ToList();

    /// <summary>Mounts once per volume; concurrent and later callers share the one attempt. Its failure is shared too,
    /// for <see cref="DiskCatalogOptions.MountRetryAfter"/>: after that the next caller tries again, since what failed
    /// may have been the disk's blocks for a moment (the host's store out of reach while the VM read them over NBD)
    /// rather than the file system.</summary>
    public Task<string> MountAsync(VolumeInfo volume, CancellationToken ct)
    {
        if (disposed)
        {
            return Task.FromException<string>(new VolumeException($"{volume.Id}: the disk catalog is shutting down"));
        }

        // One attempt per block device: a volume shown under several disks (an LV of a volume group or the contents of an
        // md array spread over them) is mounted once and shared.
        var key = volume.Device.Length > 0 ? "device:" + volume.Device : volume.Id;
        if (attempts.TryGetValue(key, out var previous) && failedAt.TryGetValue(previous, out var failed)
            && Environment.TickCount64 - failed >= (long)mountRetryAfter.TotalMilliseconds
            && attempts.TryRemove(new KeyValuePair<string, Lazy<Task<string>>>(key, previous)))
        {
            failedAt.TryRemove(previous, out _);
            log($"trying {volume.Id} ({volume.Device}) again: its last mount failed {(Environment.TickCount64 - failed) / 1000} s ago");
        }

        var attempt = attempts.GetOrAdd(key, _ => new Lazy<Task<string>>(() => Task.Factory.StartNew(() => Mount(volume), CancellationToken.None,
                TaskCreationOptions.LongRunning, TaskScheduler.Default)));
        var task = attempt.Value;
        if (!task.IsCompleted)
        {
            _ = task.ContinueWith(_ => failedAt.TryAdd(attempt, Environment.TickCount64), CancellationToken.None,
                TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
        else if (task.IsFaulted)
        {
            failedAt.TryAdd(attempt, Environment.TickCount64);
        }

        return (task.IsCompletedSuccessfully && mounted.ContainsKey(volume.Id) ? task : Shared(volume, task)).WaitAsync(ct);
    }

    /// <summary>The mount of another volume on the same device, recorded for this one as well (its file maps, its status).</summary>
    private async Task<string> Shared(VolumeInfo volume, Task<string> attempt)
    {
        var target = await attempt.ConfigureAwait(false);
        if (!mounted.ContainsKey(volume.Id) && mounted.Values.FirstOrDefault(m => m.Error is null && m.MountPoint == target) is { } first)
        {
            mounted.TryAdd(volume.Id, first with { Volume = volume });
        }

        return target;
    }

    /// <summary>Where a volume is mounted: <c>root/dev/&lt;device&gt;</c>, <c>root/lvm/&lt;vg&gt;/&lt;lv&gt;</c> or
    /// <c>root/zfs/&lt;pool&gt;/&lt;dataset&gt;</c>.</summary>
    public string MountPointOf(VolumeInfo volume) => volume.Bucket is "lvm" or "zfs" && volume.Components.Count == 2
        ? Path.Combine(options.MountRoot, volume.Bucket, volume.Components[0], volume.Components[1])
        : Path.Combine(options.MountRoot, "dev", Path.GetFileName(volume.Device));

    private string Mount(VolumeInfo volume)
    {
        try
        {
            return MountCore(volume);
        }
        catch (Exception e) when (e is not VolumeException)
        {
            return Fail(volume, "", volume.FsType ?? "", $"cannot mount {volume.Id} ({volume.Device}): {e.Message}");
        }
    }

    private string MountCore(VolumeInfo volume)
    {
        if (volume.Error is not null)
        {
            return Fail(volume, "", volume.FsType ?? "", $"{volume.Id}: {volume.Error}");
        }

        if (volume.Device.Length == 0)
        {
            return Fail(volume, "", volume.FsType ?? "", $"{volume.Id} has no block device");
        }

        if (volume.Bucket == "zfs" && volume.FsType == "zfs")
        {
            return MountZfsDataset(volume);
        }

        if (volume.FsType == FsProbe.Luks && options.GuestKeys is { Count: > 0 })
        {
            return MountLuks(volume);
        }

        if (FsProbe.IsContainer(volume.FsType))
        {
            return Fail(volume, "", volume.FsType!, $"{volume.Id} ({volume.Device}) {FsProbe.ContainerReason(volume.FsType!)}");
        }

        var target = MountPointOf(volume);
        CreateMountPoint(target);
        WaitForModules(volume.FsType);
        LoadFileSystem(volume.FsType);
        using var kernelLog = DiskNative.KernelLog.OpenAtEnd();
        var kernelName = KernelDeviceName(volume.Device);
        if (volume.FsType is { } known)
        {
            var errors = new List<string>();
            foreach (var kernelType in known is "ext2" or "ext3" ? new[] { "ext4", known } : [FsProbe.KernelType(known)])
            {
                var (ok, error, errno) = TryMount(volume, target, kernelType, kernelLog, kernelName);
                if (ok)
                {
                    return target;
                }

                errors.Add(error);
                if (errno != ENODEV)
                {
                    break; // the driver is there and refused the volume: its answer is the one that counts
                }
            }

            if (known == "ntfs" && File.Exists(Tool.Resolve("ntfs-3g")))
            {
                return MountNtfs3g(volume, target, errors[0]);
            }

            return Fail(volume, target, known, $"cannot mount {volume.Id} ({volume.Device}) as {string.Join("; as ", errors)}");
        }

        // Type unknown: try every block file system the kernel has, as PBS does.
        var candidates = KernelFileSystems();
        var tried = new List<string>();
        foreach (var type in candidates)
        {
            var (ok, error, _) = TryMount(volume, target, type, kernelLog, kernelName);
            if (ok)
            {
                return target;
            }

            tried.Add(error);
        }

        return Fail(volume, target, "", candidates.Count == 0
            ? $"{volume.Id} ({volume.Device}): no recognised file system, and the kernel lists no block file systems to try"
            : $"{volume.Id} ({volume.Device}): no recognised file system; tried {string.Join("; ", tried)}");
    }

    /// <summary>One type with each of its option variants; never without the options that prevent journal replay.</summary>
    private (bool Ok, string Error, int Errno) TryMount(VolumeInfo volume, string target, string type, DiskNative.KernelLog? kernelLog,
        string kernelName)
    {
        var failures = new List<string>();
        var errno = 0;
        // btrfs is shown from its top level (subvolume id 5), whatever its default subvolume: where a system boots from a
        // default set to a subvolume (openSUSE and SLES with snapper: @/.snapshots/1/snapshot), a plain mount would show
        // only that one, and /home, /var, … (subvolumes beside it) would be empty directories.
        var extra = type == "btrfs" ? string.Join(',', new[] { BtrfsDevices(volume), "subvolid=5" }.OfType<string>()) : null;
        if (this.options.Replay && FsProbe.Replays(type))
        {
            // The disk is a throwaway overlay of this VM session: the journal may be replayed into it (the file system
            // stays read-only). Writes are counted on the device, so that files of a volume that was written are not
            // mapped onto the image (the host would read the bytes before the replay).
            var before = DeviceWrites(kernelName);
            if (LibC.Mount(volume.Device, target, type, ReadOnlyFlags, extra) == 0)
            {
                var written = DeviceWrites(kernelName);
                log($"mounted {volume.Id} ({volume.Device}, {type}) read-only with journal replay on {target}"
                    + (written > before && before >= 0 ? $" ({(written - before) * 512} bytes written to the session overlay)" : ""));
                mounted[volume.Id] = new MountedVolume(volume, target, type, null)
                {
                    NoFileMaps = () => before < 0 || DeviceWrites(kernelName) is var now && (now < 0 || now > before),
                };
                return (true, "", 0);
            }

            var replayErrno = LibC.Errno;
            var kernel = kernelLog?.ReadNew(kernelName) ?? [];
            log($"mounting {volume.Id} ({volume.Device}, {type}) with journal replay failed: {LibC.StrError(replayErrno)}"
                + (kernel.Count > 0 ? $"; kernel: {string.Join(" / ", kernel)}" : "") + "; mounting it without replay");
            if (replayErrno == ENODEV)
            {
                return (false, $"{type}: {LibC.StrError(replayErrno)} (the kernel has no {type} support)", replayErrno);
            }
        }

        foreach (var variant in FsProbe.MountData(type))
        {
            var data = extra is null ? variant : variant is null ? extra : extra + "," + variant;
            if (LibC.Mount(volume.Device, target, type, ReadOnlyFlags, data) == 0)
            {
                log($"mounted {volume.Id} ({volume.Device}, {type}{(data is null ? "" : "," + data)}) read-only on {target}");
                mounted[volume.Id] = new MountedVolume(volume, target, type, null)
                {
                    // A replay that failed half-way may have written: maps only while the device was never written.
                    NoFileMaps = this.options.Replay ? () => DeviceWrites(kernelName) is var now && (now < 0 || now > 0) : null,
                };
                return (true, "", 0);
            }

            errno = LibC.Errno;
            var text = $"{LibC.StrError(errno)}{(errno == ENODEV ? $" (the kernel has no {type} support)" : "")}"
                       + $"{(errno == ENOTBLK ? " (not a block device)" : "")}";
            var kernel = kernelLog?.ReadNew(kernelName) ?? [];
            var options = data is null ? "" : $" -o {data}";
            failures.Add(kernel.Count > 0 ? $"{text}{options}; kernel: {string.Join(" / ", kernel)}" : $"{text}{options}");
            if (errno != LibC.EINVAL)
            {
                break; // only a rejected option (EINVAL) makes the next variant worth a try
            }
        }

        return (false, $"{type}: {string.Join("; then ", failures)}", errno);
    }

    /// <summary>
    /// A btrfs file system over several devices (its own RAID1/RAID10/…, as a VM with two disks may use) mounts only
    /// when the kernel knows every member: the mount options name each device of the backup with the same file system
    /// id (<c>device=</c>), and <c>degraded</c> when the backup holds fewer than the file system has. Null for a
    /// single-device file system.
    /// </summary>
    private string? BtrfsDevices(VolumeInfo volume)
    {
        var mine = BtrfsIdentityOf(volume.Device);
        IReadOnlyList<DiskInfo>? disks;
        lock (gate)
        {
            disks = current ?? (scan.IsCompletedSuccessfully ? scan.Result : null);
        }

        if (mine is not { NumDevices: > 1 } id || disks is null)
        {
            return null;
        }

        var members = disks.SelectMany(d => d.Volumes).Where(v => v.FsType == "btrfs" && v.Error is null && v.Device.Length > 0)
            .Select(v => v.Device).Distinct(StringComparer.Ordinal)
            .Select(d => (Device: d, Id: BtrfsIdentityOf(d))).Where(m => m.Id?.Fsid == id.Fsid)
            .DistinctBy(m => m.Id!.Value.DevId).Select(m => m.Device).ToList();
        var missing = (long)id.NumDevices - members.Count;
        log($"btrfs {id.Fsid} on {volume.Device}: {members.Count} of {id.NumDevices} devices in this backup ({string.Join(", ", members)})"
            + (missing > 0 ? ": mounted degraded" : ""));
        var data = string.Join(',', members.Select(m => "device=" + m));
        return missing > 0 ? data + ",degraded" : data;
    }

    private readonly ConcurrentDictionary<string, (string Fsid, ulong NumDevices, ulong DevId)?> btrfsIds = new(StringComparer.Ordinal);

    private (string Fsid, ulong NumDevices, ulong DevId)? BtrfsIdentityOf(string device) => btrfsIds.GetOrAdd(device, d =>
    {
        try
        {
            using var s = OpenRead(d);
            var head = new byte[FsProbe.ProbeBytes];
            var n = s.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
            return FsProbe.BtrfsIdentity(head.AsSpan(0, n));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    });

    private readonly List<string> luksOpened = [];
    private int luksCount;
    private readonly ConcurrentDictionary<string, Lazy<(string? Mapped, string? Error, bool Final)>> luksDevices = new(StringComparer.Ordinal);

    /// <summary>Opens a LUKS volume read-only once per device (the scan opens those that hold LVM, a mount the others);
    /// its mapped device, or why it cannot be opened. An answer that may change (the device could not be read, a failure
    /// other than a refused passphrase) is not kept: the next caller tries again. A refused passphrase is kept, as the
    /// key derivation it took is costly by design.</summary>
    private (string? Mapped, string? Error) OpenLuks(VolumeInfo volume)
    {
        var attempt = luksDevices.GetOrAdd(volume.Device, _ => new Lazy<(string?, string?, bool)>(() => OpenLuksNow(volume)));
        var (mapped, error, final) = attempt.Value;
        if (!final)
        {
            luksDevices.TryRemove(KeyValuePair.Create(volume.Device, attempt));
        }

        return (mapped, error);
    }

    private (string? Mapped, string? Error, bool Final) OpenLuksNow(VolumeInfo volume)
    {
        string? uuid;
        try
        {
            using var device = new FileStream(volume.Device, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            var header = new byte[512];
            device.ReadAtLeast(header, header.Length, throwOnEndOfStream: false);
            uuid = FsProbe.LuksUuid(header);
        }
        catch (IOException e)
        {
            return (null, $"cannot read the LUKS header of {volume.Id} ({volume.Device}): {e.Message}", false);
        }

        var keys = options.GuestKeys!;
        var key = uuid is not null && keys.TryGetValue(uuid, out var own) ? own : keys.GetValueOrDefault("*");
        if (key is null)
        {
            return (null, $"{volume.Id} ({volume.Device}) is encrypted (LUKS{(uuid is null ? "" : ", UUID " + uuid)}); --guest-passphrase-file has no passphrase for it", true);
        }

        WaitForModules(null); // dm-crypt and the ciphers load with the late modules
        var name = $"restorefs-luks{Interlocked.Increment(ref luksCount)}";
        var opened = Tool.Run("cryptsetup", ["open", "--type", "luks", "--readonly", "--key-file=-", volume.Device, name], TimeSpan.FromMinutes(2), key);
        if (!opened.Ok)
        {
            var why = opened.Code == 2 ? "the passphrase does not open it" : opened.FirstLine;
            return (null, $"cannot open {volume.Id} ({volume.Device}, LUKS{(uuid is null ? "" : " " + uuid)}): {why}", opened.Code == 2);
        }

        lock (gate)
        {
            luksOpened.Add(name);
        }

        var mapped = MappedDevice(name);
        if (mapped is null)
        {
            return (null, $"{volume.Id}: cryptsetup opened it, but no device for {name} appeared", true);
        }

        log($"opened {volume.Id} (LUKS{(uuid is null ? "" : " " + uuid)}) read-only as {mapped}");
        return (mapped, null, true);
    }

    /// <summary>
    /// A LUKS volume with a passphrase from the host: opened read-only with cryptsetup (the passphrase on its stdin,
    /// never on a command line), its file system mounted like any other at the volume's mount point. Its files are never
    /// mapped (the image holds ciphertext).
    /// </summary>
    private string MountLuks(VolumeInfo volume)
    {
        var (mapped, error) = OpenLuks(volume);
        if (mapped is null)
        {
            return Fail(volume, "", FsProbe.Luks, error!);
        }

        string? inner;
        ulong size;
        try
        {
            using var stream = new FileStream(mapped, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            size = (ulong)stream.Seek(0, SeekOrigin.End);
            inner = FsProbe.Detect(stream, 0, (long)size);
        }
        catch (IOException e)
        {
            return Fail(volume, "", FsProbe.Luks, $"{volume.Id}: cannot read the opened LUKS volume {mapped}: {e.Message}");
        }

        log($"{volume.Id} (LUKS, opened as {mapped}) holds {inner ?? "no recognised file system"}");
        if (FsProbe.IsContainer(inner))
        {
            return Fail(volume, "", inner!, $"{volume.Id} (LUKS, opened) {FsProbe.ContainerReason(inner!)}");
        }

        // The same volume (its id and place) on the opened device; the mount is recorded under the volume's id.
        var plain = volume with { Device = mapped, FsType = inner, Size = size };
        var target = MountCore(plain);
        mounted[volume.Id] = mounted[volume.Id] with { NoFileMaps = () => true };
        return target;
    }

    /// <summary>/dev/mapper/NAME, else the dm-N device whose dm/name is NAME (no udev in the VM).</summary>
    private static string? MappedDevice(string name)
    {
        var path = $"/dev/mapper/{name}";
        if (File.Exists(path) || Directory.Exists("/dev/mapper") && new FileInfo(path).Exists)
        {
            return path;
        }

        foreach (var dir in Directory.Exists("/sys/block") ? Directory.GetDirectories("/sys/block", "dm-*") : [])
        {
            try
            {
                if (File.ReadAllText(Path.Combine(dir, "dm", "name")).Trim() == name && File.Exists("/dev/" + Path.GetFileName(dir)))
                {
                    return "/dev/" + Path.GetFileName(dir);
                }
            }
            catch (IOException)
            {
            }
        }

        return null;
    }

    /// <summary>Sectors written to a block device since boot (<c>/sys/class/block/NAME/stat</c>, field 7); -1 when unknown.</summary>
    internal static long DeviceWrites(string kernelName)
    {
        try
        {
            var fields = File.ReadAllText($"/sys/class/block/{kernelName}/stat").Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return fields.Length > 6 && long.TryParse(fields[6], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var n)
                ? n : -1;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return -1;
        }
    }

    /// <summary>NTFS without the kernel's ntfs3: ntfs-3g over FUSE, read-only, without touching a dirty log. Named data
    /// streams (alternate data streams) are extended attributes <c>user.&lt;stream&gt;</c> (<c>streams_interface=xattr</c>,
    /// ntfs-3g's default, set explicitly), so the <c>xattrs</c> endpoint hands them out.</summary>
    public const string Ntfs3gOptions = "ro,norecover,nosuid,nodev,noexec,streams_interface=xattr";

    private string MountNtfs3g(VolumeInfo volume, string target, string kernelError)
    {
        WaitForModules(null); // fuse
        var result = Tool.Run("ntfs-3g", ["-o", Ntfs3gOptions, volume.Device, target]);
        if (result.Ok)
        {
            log($"mounted {volume.Id} ({volume.Device}, ntfs through ntfs-3g) read-only on {target}");
            mounted[volume.Id] = new MountedVolume(volume, target, "ntfs-3g", null);
            return target;
        }

        return Fail(volume, target, "ntfs",
            $"cannot mount {volume.Id} ({volume.Device}) as ntfs: {kernelError}; with ntfs-3g: {result.FirstLine}");
    }

    private string Fail(VolumeInfo volume, string target, string type, string message)
    {
        log(message);
        mounted[volume.Id] = new MountedVolume(volume, target, type, message);
        if (target.Length > 0)
        {
            RemoveMountPoint(target);
        }

        throw new VolumeException(message);
    }

    private void CreateMountPoint(string target)
    {
        var missing = new List<string>();
        for (var dir = target; !Directory.Exists(dir) && dir != Path.GetDirectoryName(dir); dir = Path.GetDirectoryName(dir)!)
        {
            missing.Add(dir);
        }

        Directory.CreateDirectory(target);
        lock (gate)
        {
            createdDirectories.AddRange(missing);
        }
    }

    /// <summary>Removes the directories this catalog made for a mount point, as far as they are empty.</summary>
    private void RemoveMountPoint(string target)
    {
        lock (gate)
        {
            foreach (var dir in createdDirectories.Where(d => target == d || target.StartsWith(d + "/", StringComparison.Ordinal))
                         .OrderByDescending(d => d.Length).ToList())
            {
                try
                {
                    Directory.Delete(dir);
                    createdDirectories.Remove(dir);
                }
                catch (IOException)
                {
                    // not empty (another volume's mount point below it) or still a mount point
                }
            }
        }
    }

    /// <summary>The kernel's name of a block device (loop3, vda2, dm-0) — the name its log lines use.</summary>
    private static string KernelDeviceName(string device)
    {
        if (IsBlockDevice(device, out var major, out var minor))
        {
            var sys = $"/sys/dev/block/{major}:{minor}";
            try
            {
                if (File.ResolveLinkTarget(sys, returnFinalTarget: true) is { } target)
                {
                    return target.Name;
                }
            }
            catch (IOException)
            {
            }
        }

        return Path.GetFileName(device);
    }

    /// <summary>In the VM, file system modules load while the daemon already answers: wait for this type's.</summary>
    private void WaitForModules(string? type)
    {
        if (options.ReadyFile is not { } ready || File.Exists(ready))
        {
            return;
        }

        var kernelType = type is null ? null : FsProbe.KernelType(type);
        // FAT, exFAT, ISO 9660 and NTFS also need their character-set modules: wait for all modules for them.
        var needsAll = kernelType is null or "vfat" or "exfat" or "iso9660" or "ntfs3";
        var watch = Stopwatch.StartNew();
        while (!File.Exists(ready) && watch.Elapsed < TimeSpan.FromSeconds(30) && (needsAll || !KernelFileSystems().Contains(kernelType!)))
        {
            Thread.Sleep(10);
        }

        if (watch.ElapsedMilliseconds > 50)
        {
            log($"waited {watch.ElapsedMilliseconds} ms for the {kernelType ?? "file system"} module");
        }
    }

    /// <summary>Loads the module of a file system the image carries but does not load at boot (JFS, ReiserFS, F2FS).</summary>
    private void LoadFileSystem(string? type)
    {
        if (type is null || !FsProbe.LoadsOnDemand(FsProbe.KernelType(type)) || KernelFileSystems().Contains(FsProbe.KernelType(type)))
        {
            return;
        }

        // F2FS checks its superblock with the kernel's "crc32" hash, a soft dependency busybox's modprobe does not follow.
        foreach (var error in (type == "f2fs" ? ["crc32_generic", "f2fs"] : new[] { FsProbe.KernelType(type) }).Select(LoadModule).OfType<string>())
        {
            log(error);
        }
    }

    /// <summary>The block (non-nodev) file systems the kernel knows, without the ones that never fit (FUSE, ZFS).</summary>
    private static List<string> KernelFileSystems()
    {
        if (!File.Exists("/proc/filesystems"))
        {
            return [];
        }

        return File.ReadAllLines("/proc/filesystems")
            .Where(l => !l.StartsWith("nodev", StringComparison.Ordinal))
            .Select(l => l.Trim())
            .Where(t => t.Length > 0 && t is not ("zfs" or "fuseblk"))
            .ToList();
    }

    public void Dispose()
    {
        if (disposed)
        {
            return;
        }

        disposed = true;
        // Let the scan and running mounts finish, so that nothing they make is left behind.
        var left = scanLimit - sinceStart.Elapsed;
        if (!scan.Wait(left > TimeSpan.FromSeconds(5) ? left : TimeSpan.FromSeconds(5)))
        {
            log("disposing while the disk scan still runs: what it makes after this is not cleaned up");
        }

        Task? again;
        lock (gate)
        {
            again = rescan;
        }

        if (again is not null && !again.Wait(TimeSpan.FromSeconds(30)))
        {
            log("disposing while a disk is scanned again: what that scan makes after this is not cleaned up");
        }

        var running = attempts.Values.Where(a => a.IsValueCreated).Select(a => (Task)a.Value).ToArray();
        try
        {
            Task.WaitAll(running, TimeSpan.FromSeconds(30));
        }
        catch (AggregateException)
        {
            // failed mounts are remembered in `mounted`
        }

        foreach (var m in mounted.Values.Where(m => m.Error is null).DistinctBy(m => m.MountPoint).OrderByDescending(m => m.MountPoint.Length))
        {
            if (LibC.Umount2(m.MountPoint, 0) == 0)
            {
                log($"unmounted {m.Volume.Id} from {m.MountPoint}");
            }
            else
            {
                var why = LibC.StrError(LibC.Errno);
                var lazy = LibC.Umount2(m.MountPoint, MNT_DETACH) == 0;
                log($"unmounting {m.Volume.Id} from {m.MountPoint}: {why}; {(lazy ? "detached lazily" : "lazy unmount failed too: " + LibC.StrError(LibC.Errno))}");
            }

            RemoveMountPoint(m.MountPoint);
        }

        ExportPools();
        List<string> lvs, loopDevices;
        lock (gate)
        {
            lvs = activated.ToList();
            loopDevices = loops.ToList();
            activated.Clear();
            loops.Clear();
        }

        List<string> crypts;
        lock (gate)
        {
            crypts = luksOpened.ToList();
            luksOpened.Clear();
        }

        // LUKS inside an LV closes before the LV is deactivated, LVM inside LUKS after: close what closes, deactivate,
        // then close the rest.
        var busy = CloseCrypts(crypts, last: false);
        RemoveDevices(dmDevices);
        foreach (var lv in lvs)
        {
            var r = lvm!.Deactivate(lv);
            log(r.Ok ? $"deactivated {lv}" : $"cannot deactivate {lv}: {r.FirstLine}");
        }

        CloseCrypts(busy, last: true);

        StopArrays();
        RemoveDevices(partitionMaps);

        foreach (var loop in loopDevices)
        {
            // A loop device still held by a lazily unmounted file system is freed by the kernel when released.
            var r = Tool.Run("losetup", ["-d", loop], TimeSpan.FromSeconds(30));
            if (!r.Ok)
            {
                log($"cannot detach {loop}: {r.FirstLine}");
            }
        }

        lock (gate)
        {
            foreach (var dir in createdDirectories.OrderByDescending(d => d.Length).ToList())
            {
                try
                {
                    Directory.Delete(dir);
                }
                catch (IOException)
                {
                }
            }

            createdDirectories.Clear();
        }
    }

    /// <summary>Closes LUKS mappings; those that could not be closed (still held by an LV on them).</summary>
    private List<string> CloseCrypts(List<string> crypts, bool last)
    {
        var busy = new List<string>();
        foreach (var crypt in crypts)
        {
            var r = Tool.Run("cryptsetup", ["close", crypt], TimeSpan.FromSeconds(30));
            if (r.Ok)
            {
                log($"closed {crypt}");
            }
            else if (last)
            {
                log($"cannot close {crypt}: {r.FirstLine}");
            }
            else
            {
                busy.Add(crypt);
            }
        }

        return busy;
    }

    public ValueTask DisposeAsync() => new(Task.Run(Dispose));
}
