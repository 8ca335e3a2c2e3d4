using System.Diagnostics;
using System.Globalization;
using RestoreFs.RestoreDaemon.Native;

namespace RestoreFs.RestoreDaemon.Disks;

/// <summary>
/// Finds the disks, their partitions, LVM logical volumes and file systems (once, in the background, from
/// construction on), and mounts a volume read-only the first time it is used. Nothing here writes to a disk: devices
/// are opened read-only, loop devices are read-only, LVM never writes metadata and activates read-only, and file
/// systems are mounted read-only without journal replay. Dispose unmounts, deactivates and detaches what it made.
/// </summary>
public sealed partial class DiskCatalog : IVolumeCatalog, IDisposable, IAsyncDisposable
{
    private readonly DiskCatalogOptions options;
    private readonly Action<string> log;
    private readonly TimeSpan scanLimit;
    private readonly TimeSpan mountRetryAfter;
    private readonly TimeSpan scanRetryAfter;
    private readonly Stopwatch sinceStart = Stopwatch.StartNew();
    private readonly Task<IReadOnlyList<DiskInfo>> scan;
    private readonly object gate = new();

    /// <summary>Completes when the start-up disk scan has finished (successfully or not).</summary>
    public Task Scanned => scan;

    // Progress of the scan, for an answer when it takes longer than its limit.
    private readonly List<(string Name, string Device)> pending = [];
    private readonly List<DiskInfo> scanned = [];

    // Disks that could not be read (an I/O error: in the VM, often the host's store out of reach for a moment) are
    // scanned again by a caller that comes ScanRetryAfter after the scan that failed; `current` is the scan's answer
    // with those disks replaced by their latest scan.
    private readonly HashSet<string> readFailed = new(StringComparer.Ordinal);
    private TimeSpan readFailedAt;
    private IReadOnlyList<DiskInfo>? current;
    private Task<IReadOnlyList<DiskInfo>>? rescan;
    private readonly HashSet<string> lvmDevices = new(StringComparer.Ordinal);

    // What this catalog made, undone by Dispose.
    private readonly List<string> loops = [];
    private readonly List<string> activated = []; // vg/lv
    private Lvm? lvm;
    private volatile bool disposed;

    /// <summary>A container that is not mounted: LVM members, swap, RAID, journals; LUKS unless passphrases were given
    /// (then the mount opens it, or says why not).</summary>
    private bool Refused(string? type) => FsProbe.IsContainer(type) && !(type == FsProbe.Luks && options.GuestKeys is { Count: > 0 });

    public DiskCatalog(DiskCatalogOptions options)
    {
        this.options = options;
        log = options.Log ?? (_ => { });
        scanLimit = options.ScanLimit ?? TimeSpan.FromSeconds(120);
        mountRetryAfter = options.MountRetryAfter ?? TimeSpan.FromSeconds(30);
        scanRetryAfter = options.ScanRetryAfter ?? TimeSpan.FromSeconds(30);
        List<(string, string)> disks;
        try
        {
            disks = options.Disks?.ToList() ?? ScanSysBlock();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            log($"cannot list the disks: {e.Message}");
            disks = [];
        }

        pending.AddRange(disks);
        scan = Task.Run(() => Scan(disks));
    }

    public async Task<IReadOnlyList<DiskInfo>> GetDisksAsync(CancellationToken ct)
    {
        var left = scanLimit - sinceStart.Elapsed;
        if (!scan.IsCompleted && left > TimeSpan.Zero)
        {
            await Task.WhenAny(scan, Task.Delay(left, ct)).ConfigureAwait(false);
            ct.ThrowIfCancellationRequested();
        }

        if (scan.IsCompleted)
        {
            return await AfterScanAsync(await scan.ConfigureAwait(false), ct).ConfigureAwait(false);
        }

        lock (gate)
        {
            var unfinished = pending.Where(p => scanned.All(s => s.Name != p.Name))
                .Select(p => new DiskInfo(p.Name, p.Device, SysfsSize(p.Device) ?? 0, [],
                    $"the disk scan did not finish within {scanLimit.TotalSeconds:0} s (still reading this disk or its LVM volumes)"));
            return scanned.Concat(unfinished).ToList();
        }
    }

    /// <summary>The finished scan's answer, after scanning again the disks that could not be read when their time has
    /// come (callers share one rescan and wait for it up to the scan limit; past that they get the answer before it).</summary>
    private async Task<IReadOnlyList<DiskInfo>> AfterScanAsync(IReadOnlyList<DiskInfo> first, CancellationToken ct)
    {
        Task<IReadOnlyList<DiskInfo>> task;
        IReadOnlyList<DiskInfo> before;
        lock (gate)
        {
            before = current ??= first;
            if (rescan is { IsCompleted: false })
            {
                task = rescan;
            }
            else if (readFailed.Count > 0 && !disposed && sinceStart.Elapsed - readFailedAt >= scanRetryAfter)
            {
                var again = before.Where(d => readFailed.Contains(d.Name)).Select(d => (d.Name, d.Device)).ToList();
                readFailed.Clear();
                task = rescan = Task.Run(() => Rescan(again));
            }
            else
            {
                return before;
            }
        }

        await Task.WhenAny(task, Task.Delay(scanLimit, ct)).ConfigureAwait(false);
        ct.ThrowIfCancellationRequested();
        return task.IsCompletedSuccessfully ? task.Result : before;
    }

    private IReadOnlyList<DiskInfo> Rescan(List<(string Name, string Device)> disks)
    {
        log($"scanning again the disk(s) that could not be read: {string.Join(", ", disks.Select(d => d.Name))}");
        IReadOnlyList<DiskInfo> found;
        try
        {
            found = ScanAll(disks);
        }
        catch (Exception e)
        {
            log($"disk rescan failed: {e}");
            found = disks.Select(d => new DiskInfo(d.Name, d.Device, 0, [], $"disk scan failed: {e.Message}")).ToList();
        }

        lock (gate)
        {
            var byName = found.ToDictionary(d => d.Name, StringComparer.Ordinal);
            return current = current!.Select(d => byName.GetValueOrDefault(d.Name) ?? d).ToList();
        }
    }

    private IReadOnlyList<DiskInfo> Scan(List<(string Name, string Device)> disks)
    {
        try
        {
            return ScanAll(disks);
        }
        catch (Exception e)
        {
            // The scan must always end with an answer: name what broke it.
            log($"disk scan failed: {e}");
            lock (gate)
            {
                return pending.Select(p => scanned.FirstOrDefault(s => s.Name == p.Name)
                                           ?? new DiskInfo(p.Name, p.Device, 0, [], $"disk scan failed: {e.Message}")).ToList();
            }
        }
    }

    private sealed class DiskScan(string name, string device)
    {
        public string Name { get; } = name;
        public string Device { get; } = device;
        public ulong Size { get; set; }
        public List<VolumeInfo> Volumes { get; } = [];
        public string? Error { get; set; }
        public DiskInfo ToInfo() => new(Name, Device, Size, Volumes.ToList(), Error);
    }

    /// <summary>A partition or disk that holds an LVM physical volume.</summary>
    private sealed record PvCandidate(DiskScan Disk, string Device, VolumeInfo AsVolume);

    private IReadOnlyList<DiskInfo> ScanAll(List<(string Name, string Device)> disks)
    {
        var watch = Stopwatch.StartNew();
        var results = new List<DiskScan>();
        var pvs = new List<PvCandidate>();
        var zfsMembers = new List<PvCandidate>();
        var raids = new List<RaidCandidate>();
        foreach (var (name, device) in disks)
        {
            var disk = new DiskScan(name, device);
            results.Add(disk);
            if (disposed)
            {
                disk.Error = "the catalog was closed before this disk was scanned";
                continue;
            }

            try
            {
                ScanDisk(disk, pvs, zfsMembers, raids);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException or NotSupportedException)
            {
                disk.Error = $"cannot read disk {name} ({device}): {e.Message}";
                log(disk.Error);
                if (e is IOException && disk.Volumes.Count == 0 && pvs.All(c => c.Disk != disk) && zfsMembers.All(c => c.Disk != disk)
                    && raids.All(c => c.Disk != disk))
                {
                    // Nothing of it could be read (in the VM: the host's store out of reach when the scan began): scanned
                    // again later. A disk that failed part-way keeps what was found before the failure, as before.
                    lock (gate)
                    {
                        readFailed.Add(name);
                    }
                }
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // Nothing on a guest's disk may fail the other disks: whatever this one holds, it alone says so.
                disk.Error = $"cannot scan disk {name} ({device}): {e.GetType().Name}: {e.Message}";
                log($"{disk.Error}\n{e}");
                pvs.RemoveAll(c => c.Disk == disk);
                zfsMembers.RemoveAll(c => c.Disk == disk);
                raids.RemoveAll(c => c.Disk == disk);
            }

            if (pvs.All(pv => pv.Disk != disk) && zfsMembers.All(m => m.Disk != disk) && raids.All(r => r.Disk != disk))
            {
                lock (gate)
                {
                    scanned.Add(disk.ToInfo());
                }
            }
        }

        if (raids.Count > 0 && !disposed)
        {
            Stage("the md RAID scan", raids.Select(r => (r.Disk, r.AsVolume)), () => ScanMd(raids, pvs, zfsMembers));
            foreach (var disk in raids.Select(r => r.Disk).Distinct().Where(d => pvs.All(p => p.Disk != d) && zfsMembers.All(m => m.Disk != d)))
            {
                Publish(disk);
            }
        }

        if (!disposed)
        {
            Stage("opening LUKS volumes", [], () => ScanLuks(results, pvs));
        }

        if (pvs.Count > 0 && !disposed)
        {
            Stage("the LVM scan", pvs.Select(p => (p.Disk, p.AsVolume)), () => ScanLvm(pvs, zfsMembers));
        }

        if (zfsMembers.Count > 0 && !disposed)
        {
            Stage("the ZFS scan", zfsMembers.Select(m => (m.Disk, m.AsVolume)), () => ScanZfs(zfsMembers));
        }

        var infos = results.Select(r => r.ToInfo()).ToList();
        foreach (var d in infos)
        {
            log($"disk {d.Name} ({d.Device}, {d.Size} bytes): "
                + (d.Error ?? (d.Volumes.Count == 0 ? "no volumes" : string.Join(", ", d.Volumes.Select(Describe)))));
        }

        log($"disk scan finished in {watch.ElapsedMilliseconds} ms: {infos.Count} disk(s)");
        lock (gate)
        {
            readFailedAt = sinceStart.Elapsed;
        }

        return infos;
    }

    /// <summary>Runs one stage of the scan that looks across disks (md, LUKS, LVM, ZFS). A failure nobody expected
    /// (input no reader was written for, or a bug) is logged with its stack and named on each volume the stage was to
    /// look at that has no entry yet; the scan goes on with the next stage and the other volumes.</summary>
    private void Stage(string what, IEnumerable<(DiskScan Disk, VolumeInfo Volume)> candidates, Action run)
    {
        var looked = candidates.ToList();
        try
        {
            run();
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            log($"{what} failed: {e}");
            foreach (var (disk, volume) in looked.Where(c => c.Disk.Volumes.All(v => v.Id != c.Volume.Id)).DistinctBy(c => c.Volume.Id))
            {
                disk.Volumes.Add(volume with { Error = $"{what} failed: {e.GetType().Name}: {e.Message}" });
            }
        }
    }

    private static string Describe(VolumeInfo v) =>
        $"{string.Join('/', new[] { v.Bucket }.Concat(v.Components))} {v.FsType ?? "?"}{(v.Device.Length > 0 ? " on " + v.Device : "")}"
        + (v.Error is null ? "" : $" ({v.Error})");

    /// <param name="pvs">Collects LVM physical volumes (scanned together by <see cref="ScanLvm"/>).</param>
    /// <param name="zfsMembers">Collects ZFS pool members (imported together by <see cref="ScanZfs"/>).</param>
    /// <param name="raids">Collects md RAID members (assembled together by <see cref="ScanMd"/>); null: they are reported, not
    /// assembled.</param>
    private void ScanDisk(DiskScan disk, List<PvCandidate> pvs, List<PvCandidate> zfsMembers, List<RaidCandidate>? raids = null)
    {
        disk.Size = SysfsSize(disk.Device) ?? 0; // known even when the device cannot be opened
        using var stream = OpenRead(disk.Device);
        var size = DeviceSize(stream, disk.Device);
        disk.Size = (ulong)size;
        var whole = FsProbe.Detect(stream, 0, size);
        PartitionTableInfo? table = null;
        Dictionary<int, (long Start, long Length)>? kernelPartitions = null;
        if (whole is null)
        {
            table = PartitionTable.ReadTable(stream, size);
            kernelPartitions = KernelPartitions(disk.Device);
            if (table.Partitions.Count == 0 && kernelPartitions.Count == 0)
            {
                // No table: a whole-disk md member whose superblock is at the end (with a table, the end of the last
                // partition can hold a 0.90 superblock at the very place a whole disk's would be).
                whole = FsProbe.DetectWithEnd(stream, 0, size);
            }
        }

        if (whole is FsProbe.LvmMember or FsProbe.ZfsMember)
        {
            (whole == FsProbe.LvmMember ? pvs : zfsMembers).Add(new PvCandidate(disk, disk.Device,
                new VolumeInfo(disk.Name, "raw", [], disk.Device, disk.Size, whole) { Placement = [new DiskSpan(0, 0, (long)disk.Size)] }));
            return;
        }

        if (whole is not null)
        {
            var volume = new VolumeInfo(disk.Name, "raw", [], disk.Device, disk.Size, whole)
            {
                Error = Refused(whole) ? $"the whole disk {FsProbe.ContainerReason(whole)}" : null,
                Placement = [new DiskSpan(0, 0, (long)disk.Size)],
            };
            if (whole == FsProbe.RaidMember && CollectRaidMember(raids, disk, disk.Device, stream, 0, size, volume, "the whole disk") is { } refused)
            {
                volume = refused;
            }
            else if (whole == FsProbe.RaidMember)
            {
                return;
            }

            // A file system on the whole disk: PBS mounts the whole disk first and then looks no further.
            disk.Volumes.Add(volume);
            return;
        }

        foreach (var note in table!.Notes)
        {
            log($"disk {disk.Name}: {note}");
        }

        var parts = new List<Partition>();
        foreach (var p in table.Partitions)
        {
            // The kernel's partition N is what its device holds: where the kernel read another table (Windows' LDM on
            // an MBR disk, the other copy of a GPT), its view is used, so that what is probed, mounted and mapped onto
            // the image are the same bytes.
            if (kernelPartitions!.TryGetValue(p.Number, out var k) && (k.Start != p.Offset || k.Length != p.Length))
            {
                log($"disk {disk.Name}: partition {p.Number} lies at byte {k.Start} ({k.Length} bytes) for the kernel and at {p.Offset} "
                    + $"({p.Length} bytes) in the {table.Scheme} table read here: the kernel's is used");
                parts.Add(new Partition(p.Number, k.Start, k.Length, "kernel"));
            }
            else
            {
                parts.Add(p);
            }
        }

        foreach (var (number, (start, length)) in kernelPartitions!.Where(k => parts.All(p => p.Number != k.Key)).OrderBy(k => k.Key))
        {
            // The kernel knows a partition our parser does not (another table type): use the kernel's view.
            if (length > 4096)
            {
                parts.Add(new Partition(number, start, length, "kernel"));
            }
        }

        foreach (var part in parts.OrderBy(p => p.Number))
        {
            var number = part.Number.ToString(CultureInfo.InvariantCulture);
            var type = FsProbe.DetectWithEnd(stream, part.Offset, part.Length);
            string? device = null;
            string? error = null;
            try
            {
                device = PartitionDevice(disk, part, kernelPartitions!.ContainsKey(part.Number));
                if (device is null)
                {
                    error = "the kernel shows no device for this partition (and loop devices for partitions are off)";
                }
            }
            catch (IOException e)
            {
                error = e.Message;
            }

            var volume = new VolumeInfo(disk.Name, "part", [number], device ?? "", (ulong)part.Length, type)
            {
                Error = error ?? (Refused(type) && type is not (FsProbe.LvmMember or FsProbe.ZfsMember) ? $"partition {number} {FsProbe.ContainerReason(type!)}"
                    : type is null && part.NoFileSystemKind is { } kind ? $"partition {number} is a {kind}: it holds no file system" : null),
                Placement = [new DiskSpan(0, part.Offset, part.Length)],
            };
            if (type is FsProbe.LvmMember or FsProbe.ZfsMember && device is not null)
            {
                (type == FsProbe.LvmMember ? pvs : zfsMembers).Add(new PvCandidate(disk, device, volume));
                continue;
            }

            if (type == FsProbe.RaidMember && error is null)
            {
                if (CollectRaidMember(raids, disk, device!, stream, part.Offset, part.Length, volume, $"partition {number}") is not { } refused)
                {
                    continue;
                }

                volume = refused;
            }

            disk.Volumes.Add(volume);
        }
    }

    private static FileStream OpenRead(string device) =>
        new(device, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, bufferSize: 0); // O_RDONLY, never written

    /// <summary>Size in bytes from sysfs (sectors × 512) for a block device; null for anything else.</summary>
    private static ulong? SysfsSize(string device) =>
        SysDir(device) is { } sys && ReadNumber(Path.Combine(sys, "size")) is { } sectors ? (ulong)sectors * 512 : null;

    /// <summary>The sysfs directory of a block device (found by its device number, so symlinked paths work too).</summary>
    private static string? SysDir(string device)
    {
        if (!IsBlockDevice(device, out var major, out var minor))
        {
            return null;
        }

        var dir = $"/sys/dev/block/{major}:{minor}";
        try
        {
            return File.ResolveLinkTarget(dir, returnFinalTarget: true)?.FullName ?? (Directory.Exists(dir) ? dir : null);
        }
        catch (IOException)
        {
            return null;
        }
    }

    private static long DeviceSize(FileStream stream, string device)
    {
        if (SysfsSize(device) is { } sys)
        {
            return (long)sys;
        }

        var size = DiskNative.BlockDeviceSize(stream.SafeFileHandle);
        return size >= 0 ? size : stream.Length;
    }

    /// <summary>Whether the path (after symlinks) is a block device; its device number when it is.</summary>
    internal static bool IsBlockDevice(string path, out uint major, out uint minor)
    {
        major = minor = 0;
        try
        {
            var target = File.ResolveLinkTarget(path, returnFinalTarget: true)?.FullName ?? Path.GetFullPath(path);
            if (LibC.Stat(LibC.AT_FDCWD, System.Text.Encoding.UTF8.GetBytes(target), out var st) != 0 || st.Kind != LibC.S_IFBLK)
            {
                return false;
            }

            (major, minor) = (st.RdevMajor, st.RdevMinor);
            return true;
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static bool IsBlockDevice(string path) => IsBlockDevice(path, out _, out _);

    /// <summary>The VM's virtio disks: name = serial, device node made if devtmpfs did not.</summary>
    private List<(string, string)> ScanSysBlock()
    {
        var result = new List<(string, string)>();
        if (!Directory.Exists("/sys/block"))
        {
            log("no /sys/block: no disks");
            return result;
        }

        foreach (var dir in Directory.GetDirectories("/sys/block", "vd*").Order(StringComparer.Ordinal))
        {
            var dev = Path.GetFileName(dir);
            var serialFile = Path.Combine(dir, "serial");
            var serial = File.Exists(serialFile) ? File.ReadAllText(serialFile).Trim('\0', ' ', '\n', '\t') : "";
            if (serial.Length == 0)
            {
                log($"{dev} has no serial: named {dev}");
            }

            result.Add((serial.Length > 0 ? serial : dev, EnsureNode(dir, "/dev/" + dev)));
        }

        return result;
    }

    /// <summary>The device node for a sysfs block device, made with mknod when devtmpfs did not.</summary>
    private string EnsureNode(string sysDir, string node)
    {
        var devFile = Path.Combine(sysDir, "dev");
        if (!File.Exists(node) && File.Exists(devFile))
        {
            var parts = File.ReadAllText(devFile).Trim().Split(':');
            if (parts.Length == 2 && uint.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out var major)
                && uint.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var minor))
            {
                Directory.CreateDirectory(Path.GetDirectoryName(node)!);
                if (LibC.MkNod(node, LibC.S_IFBLK | 0x180, LibC.MakeDev(major, minor)) != 0)
                {
                    log($"mknod {node} ({major}:{minor}): {LibC.StrError(LibC.Errno)}");
                }
            }
        }

        return node;
    }

    /// <summary>The partitions the kernel shows for a disk: number → (byte offset, bytes).</summary>
    private static Dictionary<int, (long Start, long Length)> KernelPartitions(string device)
    {
        var result = new Dictionary<int, (long, long)>();
        if (SysDir(device) is not { } sys)
        {
            return result;
        }

        foreach (var child in Directory.GetDirectories(sys))
        {
            if (ReadNumber(Path.Combine(child, "partition")) is { } number && ReadNumber(Path.Combine(child, "start")) is { } start
                && ReadNumber(Path.Combine(child, "size")) is { } sectors)
            {
                result[(int)number] = (start * 512, sectors * 512);
            }
        }

        return result;
    }

    private static long? ReadNumber(string file) =>
        File.Exists(file) && long.TryParse(File.ReadAllText(file).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : null;

    /// <summary>The block device of a partition: the kernel's (node made if missing), else a read-only loop device over
    /// its range when allowed, else null.</summary>
    private string? PartitionDevice(DiskScan disk, Partition part, bool kernelShowsIt)
    {
        if (kernelShowsIt && SysDir(disk.Device) is { } sys)
        {
            foreach (var child in Directory.GetDirectories(sys))
            {
                if (ReadNumber(Path.Combine(child, "partition")) == part.Number)
                {
                    return EnsureNode(child, "/dev/" + Path.GetFileName(child));
                }
            }
        }

        if (!options.LoopForPartitions)
        {
            return Lvm.DeviceMapperAvailable() ? PartitionMap(disk, part) : null;
        }

        var r = Tool.Run("losetup", ["-r", "-f", "--show", "-o", part.Offset.ToString(CultureInfo.InvariantCulture),
            "--sizelimit", part.Length.ToString(CultureInfo.InvariantCulture), disk.Device], TimeSpan.FromSeconds(30));
        if (!r.Ok || !r.Out.Trim().StartsWith("/dev/", StringComparison.Ordinal))
        {
            throw new IOException($"cannot make a loop device for partition {part.Number} of {disk.Device}: {r.FirstLine}");
        }

        var loop = r.Out.Trim();
        lock (gate)
        {
            loops.Add(loop);
        }

        return loop;
    }

    /// <summary>
    /// A partition our reader found that the kernel does not show (a GPT of 4 KiB sectors on a virtual disk of 512-byte
    /// ones; a GPT behind an MBR without its boot signature, which Linux ignores): a read-only device-mapper device over
    /// its sectors, <c>/dev/mapper/restorefs-&lt;disk&gt;-partN</c>, removed when the catalog closes.
    /// </summary>
    private string PartitionMap(DiskScan disk, Partition part)
    {
        var name = $"restorefs-{new string(disk.Name.Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' ? c : '_').ToArray())}-part{part.Number}";
        CreateDevice(name, string.Create(CultureInfo.InvariantCulture, $"0 {part.Length / 512} linear {disk.Device} {part.Offset / 512}\n"), partitionMaps);
        var r = Tool.Run("dmsetup", ["mknodes", name], TimeSpan.FromSeconds(30));
        var node = "/dev/mapper/" + name;
        if (!IsBlockDevice(node, out _, out _))
        {
            throw new IOException($"partition {part.Number} of {disk.Device} is mapped as {name}, but it has no device node ({r.FirstLine})");
        }

        log($"disk {disk.Name}: partition {part.Number} (the kernel shows none) mapped as {node}");
        return node;
    }

    /// <summary>A linear LV's place on one disk: every segment on a PV of that disk whose own place is one run.</summary>
    private static IReadOnlyList<DiskSpan>? LvPlacement(IReadOnlyList<(long Offset, string Device, long DeviceOffset, long Length)>? segments, DiskScan disk,
        Dictionary<string, PvCandidate> byDevice)
    {
        if (segments is null)
        {
            return null;
        }

        var spans = new List<DiskSpan>();
        foreach (var (offset, device, deviceOffset, length) in segments)
        {
            if (!byDevice.TryGetValue(device, out var pv) || pv.Disk != disk || pv.AsVolume.Placement is not [var run]
                || deviceOffset + length > run.Length)
            {
                return null;
            }

            spans.Add(new DiskSpan(offset, run.DiskOffset + deviceOffset, length));
        }

        return spans;
    }

    /// <param name="zfsMembers">ZFS members still to be scanned: their disks are reported as scanned by <see cref="ScanZfs"/>.</param>
    private void ScanLvm(List<PvCandidate> pvs, List<PvCandidate> zfsMembers)
    {
        var byDevice = pvs.GroupBy(p => p.Device).ToDictionary(g => g.Key, g => g.First());
        // A disk scanned again adds its PVs to those of the first scan: the same filter serves both (and the
        // deactivation at the end); only the groups of the PVs given here are listed.
        lvmDevices.UnionWith(byDevice.Keys);
        lvm = new Lvm(lvmDevices.ToList(), log);
        IReadOnlyList<LvmPhysicalVolume> found;
        IReadOnlyList<LvmLogicalVolume> lvs;
        try
        {
            found = lvm.PhysicalVolumes();
            lvs = lvm.LogicalVolumes();
        }
        catch (IOException e)
        {
            log(e.Message);
            foreach (var pv in pvs)
            {
                pv.Disk.Volumes.Add(pv.AsVolume with { Error = $"{pv.Device} is an LVM physical volume, but LVM cannot read it: {e.Message}" });
            }

            return;
        }

        IReadOnlyDictionary<string, IReadOnlyList<(long Offset, string Device, long DeviceOffset, long Length)>> segments;
        try
        {
            segments = lvm.LinearSegments();
        }
        catch (IOException e)
        {
            log($"{e.Message}: files on LVM are read through the VM's disks only");
            segments = new Dictionary<string, IReadOnlyList<(long, string, long, long)>>();
        }

        var groupDisks = new Dictionary<string, List<DiskScan>>(StringComparer.Ordinal);
        foreach (var pv in found)
        {
            // A PV on an md array has a candidate for every disk with a member of the array.
            foreach (var candidate in pv.VolumeGroup.Length > 0 ? pvs.Where(p => p.Device == pv.Device) : [])
            {
                var list = groupDisks.TryGetValue(pv.VolumeGroup, out var l) ? l : groupDisks[pv.VolumeGroup] = [];
                if (!list.Contains(candidate.Disk))
                {
                    list.Add(candidate.Disk);
                }
            }
        }

        foreach (var pv in pvs.Where(p => found.All(f => f.Device != p.Device)))
        {
            // Said where the volume would be, not only logged: its volume group would otherwise be missing without a word.
            var why = $"{pv.Device} has an LVM label, but lvm does not report it as a physical volume";
            log(why);
            pv.Disk.Volumes.Add(pv.AsVolume with { Error = why });
        }

        foreach (var (vg, disks) in groupDisks.OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            var usable = lvs.Where(l => l.VolumeGroup == vg && l.HoldsFileSystem).ToList();
            if (usable.Count == 0)
            {
                log($"volume group {vg} has no logical volumes");
                continue;
            }

            // Thin LVs are mapped from their pool's metadata (DiskCatalog.Thin.cs); LVM activates the others.
            var thin = usable.Where(l => l.IsThin).ToList();
            var errors = ActivateGroup(vg, usable.Where(l => !l.IsThin).ToList(), restrict: thin.Count > 0);
            var thinMapped = MapThinVolumes(vg, thin, lvs, segments);
            foreach (var (name, mapped) in thinMapped)
            {
                if (mapped.Error is not null)
                {
                    errors[name] = mapped.Error;
                }
            }

            foreach (var lv in usable)
            {
                string? type = null;
                var error = errors.GetValueOrDefault(lv.Name);
                if (error is null)
                {
                    try
                    {
                        using var s = OpenRead(lv.DmPath);
                        type = FsProbe.Detect(s, 0, (long)lv.Size);
                        if (Refused(type))
                        {
                            error = $"logical volume {lv.FullName} {FsProbe.ContainerReason(type!)}";
                        }
                    }
                    catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                    {
                        error = $"cannot read {lv.FullName} ({lv.DmPath}): {e.Message}";
                    }
                }

                foreach (var disk in disks)
                {
                    disk.Volumes.Add(new VolumeInfo(disk.Name, "lvm", [lv.VolumeGroup, lv.Name], lv.DmPath, lv.Size, type)
                    {
                        Error = error,
                        Placement = LvPlacement(lv.IsThin ? thinMapped.GetValueOrDefault(lv.Name)?.Segments : segments.GetValueOrDefault(lv.FullName), disk, byDevice),
                    });
                }
            }
        }

        foreach (var disk in pvs.Select(p => p.Disk).Distinct().Where(d => zfsMembers.All(m => m.Disk != d)))
        {
            Publish(disk);
        }
    }

    /// <summary>Activates a group read-only; the error per logical volume that did not come up.</summary>
    /// <param name="restrict">Activate only <paramref name="lvs"/> (the group has volumes LVM must not activate).</param>
    private Dictionary<string, string> ActivateGroup(string vg, List<LvmLogicalVolume> lvs, bool restrict)
    {
        var errors = new Dictionary<string, string>(StringComparer.Ordinal);
        if (lvs.Count == 0)
        {
            return errors;
        }

        if (lvs.Any(l => l.NeedsExtraTargets))
        {
            WaitForReadyFile($"the device-mapper targets of {vg} ({string.Join(", ", lvs.Select(l => l.SegmentTypes).Distinct())})");
            LoadRaidTargets(vg, lvs.SelectMany(l => l.SegmentTypes.Split(',')));
        }

        var before = lvs.Where(l => File.Exists(l.DmPath)).Select(l => l.Name).ToHashSet(StringComparer.Ordinal);
        var result = lvm!.Activate(vg, restrict ? lvs.Select(l => l.FullName).ToList() : null);
        foreach (var lv in lvs)
        {
            if (File.Exists(lv.DmPath))
            {
                if (!before.Contains(lv.Name))
                {
                    lock (gate)
                    {
                        activated.Add(lv.FullName);
                    }
                }

                continue;
            }

            var why = result.Ok ? $"{lv.DmPath} did not appear after activation" : result.FirstLine;
            errors[lv.Name] = Lvm.DeviceMapperAvailable()
                ? $"cannot activate {lv.FullName}: {why}"
                : $"cannot activate {lv.FullName}: device-mapper not available in this kernel (lvm: {why})";
        }

        if (errors.Count > 0)
        {
            log($"volume group {vg}: {string.Join("; ", errors.Values)}");
        }
        else
        {
            log($"volume group {vg}: {lvs.Count} logical volume(s) active read-only");
        }

        return errors;
    }

    private void WaitForReadyFile(string what)
    {
        if (options.ReadyFile is not { } ready || File.Exists(ready))
        {
            return;
        }

        var watch = Stopwatch.StartNew();
        while (!File.Exists(ready) && watch.Elapsed < TimeSpan.FromSeconds(30))
        {
            Thread.Sleep(10);
        }

        log($"waited {watch.ElapsedMilliseconds} ms for the kernel modules for {what}");
    }
}
