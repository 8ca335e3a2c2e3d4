using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.Json;
using RestoreFs.RestoreDaemon.Native;

namespace RestoreFs.RestoreDaemon.Disks;

/// <param name="Disks">Explicit disks (name = serial, device path); null scans <c>/sys/block/vd*</c> as in the VM.</param>
/// <param name="MountRoot">Where volumes are mounted.</param>
/// <param name="LoopForPartitions">Make read-only loop devices for partitions when the kernel shows none (hosts
/// without partition support); the VM's kernel shows them itself.</param>
/// <param name="ReadyFile">In the VM: a file /init creates once every file system module is loaded (device-mapper
/// is loaded before the daemon starts). A mount whose type the kernel does not know yet waits for its module or
/// for this file (up to 30 s); the disk scan does not wait.</param>
public sealed record DiskCatalogOptions(IReadOnlyList<(string Name, string Device)>? Disks, string MountRoot, Action<string> Log,
    bool LoopForPartitions = false, TimeSpan? ScanLimit = null, string? ReadyFile = null);

/// <summary>
/// Finds the disks, their partitions, LVM logical volumes and file systems, and mounts a volume read-only the first
/// time it is used. Nothing here writes to a disk: devices are opened read-only, loop devices are read-only, LVM is
/// activated read-only and file systems are mounted without journal replay.
/// </summary>
public sealed class DiskCatalog : IVolumeCatalog, IDisposable
{
    private readonly DiskCatalogOptions options;
    private readonly Task<IReadOnlyList<DiskInfo>> scan;
    private readonly ConcurrentDictionary<string, Lazy<Task<string>>> mounts = new();
    private readonly ConcurrentDictionary<string, MountedVolume> mounted = new();
    private readonly List<string> loops = [];
    private readonly List<string> activatedGroups = [];
    private readonly object gate = new();

    public DiskCatalog(DiskCatalogOptions options)
    {
        this.options = options;
        scan = Task.Run(Scan);
    }

    public IReadOnlyList<MountedVolume> Mounts => mounted.Values.OrderBy(m => m.Volume.Id, StringComparer.Ordinal).ToList();

    public async Task<IReadOnlyList<DiskInfo>> GetDisksAsync(CancellationToken ct) =>
        await scan.WaitAsync(options.ScanLimit ?? TimeSpan.FromSeconds(120), ct).ConfigureAwait(false);

    public Task<string> MountAsync(VolumeInfo volume, CancellationToken ct) =>
        mounts.GetOrAdd(volume.Id, _ => new Lazy<Task<string>>(() => Task.Run(() => Mount(volume), CancellationToken.None))).Value.WaitAsync(ct);

    private IReadOnlyList<DiskInfo> Scan()
    {
        var watch = Stopwatch.StartNew();
        var disks = (options.Disks ?? ScanSysBlock()).ToList();
        var result = new List<(string Name, string Device, ulong Size, List<VolumeInfo> Volumes, string? Error)>();
        var lvmDevices = new Dictionary<string, string>(); // PV device → disk name
        foreach (var (name, device) in disks)
        {
            try
            {
                using var stream = new FileStream(device, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 4096);
                var size = (ulong)BlockDeviceSize(stream, device);
                var volumes = new List<VolumeInfo>();
                var whole = FsProbe.Detect(stream);
                if (whole == FsProbe.LvmMember)
                {
                    lvmDevices[device] = name;
                }
                else if (whole is not null)
                {
                    volumes.Add(new VolumeInfo(name, "raw", [], device, size, whole));
                }
                else
                {
                    foreach (var part in PartitionTable.Read(stream, (long)size))
                    {
                        var partDevice = PartitionDevice(device, part);
                        string? type = null;
                        string? error = null;
                        if (partDevice is null)
                        {
                            error = $"partition {part.Number} of {name} has no device (the kernel shows none and loop devices are off)";
                        }
                        else
                        {
                            using var ps = new FileStream(partDevice, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 4096);
                            type = FsProbe.Detect(ps);
                        }

                        if (type == FsProbe.LvmMember)
                        {
                            lvmDevices[partDevice!] = name;
                            continue;
                        }

                        volumes.Add(new VolumeInfo(name, "part", [part.Number.ToString(System.Globalization.CultureInfo.InvariantCulture)],
                            partDevice ?? "", (ulong)part.Length, type) { Error = error });
                    }
                }

                result.Add((name, device, size, volumes, null));
                options.Log($"disk {name} ({device}, {size} bytes): {(volumes.Count == 0 ? "no volumes yet" : string.Join(", ", volumes.Select(v => $"{v.Id} {v.FsType ?? "?"}")))}");
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException)
            {
                options.Log($"disk {name} ({device}): {e.Message}");
                result.Add((name, device, 0, [], e.Message));
            }
        }

        if (lvmDevices.Count > 0)
        {
            foreach (var (diskNames, volume) in ScanLvm(lvmDevices))
            {
                foreach (var disk in result.Where(r => diskNames.Contains(r.Name)))
                {
                    disk.Volumes.Add(volume with { Disk = disk.Name });
                }
            }
        }

        options.Log($"disk scan finished in {watch.ElapsedMilliseconds} ms: {result.Count} disk(s)");
        return result.Select(r => new DiskInfo(r.Name, r.Device, r.Size, r.Volumes, r.Error)).ToList();
    }

    private static IEnumerable<(string, string)> ScanSysBlock()
    {
        if (!Directory.Exists("/sys/block"))
        {
            yield break;
        }

        foreach (var dir in Directory.GetDirectories("/sys/block", "vd*").Order(StringComparer.Ordinal))
        {
            var dev = Path.GetFileName(dir);
            var serialFile = Path.Combine(dir, "serial");
            var serial = File.Exists(serialFile) ? File.ReadAllText(serialFile).Trim('\0', ' ', '\n') : "";
            yield return (serial.Length > 0 ? serial : dev, EnsureNode(dir, "/dev/" + dev));
        }
    }

    /// <summary>The device node for a sysfs block device, made with mknod when devtmpfs did not.</summary>
    private static string EnsureNode(string sysDir, string node)
    {
        if (!File.Exists(node) && File.Exists(Path.Combine(sysDir, "dev")))
        {
            var parts = File.ReadAllText(Path.Combine(sysDir, "dev")).Trim().Split(':');
            LibC.MkNod(node, LibC.S_IFBLK | 0x180, LibC.MakeDev(uint.Parse(parts[0]), uint.Parse(parts[1])));
        }

        return node;
    }

    private static long BlockDeviceSize(FileStream stream, string device)
    {
        if (stream.Length > 0)
        {
            return stream.Length;
        }

        var sysSize = $"/sys/class/block/{Path.GetFileName(device)}/size";
        return File.Exists(sysSize) ? long.Parse(File.ReadAllText(sysSize).Trim()) * 512 : stream.Seek(0, SeekOrigin.End);
    }

    private string? PartitionDevice(string device, Partition part)
    {
        var name = Path.GetFileName(device);
        var sysDir = $"/sys/class/block/{name}";
        if (Directory.Exists(sysDir))
        {
            foreach (var child in Directory.GetDirectories(sysDir, name + "*"))
            {
                var number = Path.Combine(child, "partition");
                if (File.Exists(number) && File.ReadAllText(number).Trim() == part.Number.ToString(System.Globalization.CultureInfo.InvariantCulture))
                {
                    return EnsureNode(child, "/dev/" + Path.GetFileName(child));
                }
            }
        }

        if (!options.LoopForPartitions)
        {
            return null;
        }

        var loop = Run("losetup", "-r", "-f", "--show", "-o", part.Offset.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--sizelimit", part.Length.ToString(System.Globalization.CultureInfo.InvariantCulture), device);
        if (loop.Code != 0)
        {
            throw new IOException($"cannot make a loop device for partition {part.Number} of {device}: {loop.Err.Trim()}");
        }

        var path = loop.Out.Trim();
        lock (gate)
        {
            loops.Add(path);
        }

        return path;
    }

    private IEnumerable<(HashSet<string> Disks, VolumeInfo Volume)> ScanLvm(Dictionary<string, string> pvs)
    {
        var devices = pvs.Keys.ToList();
        var filter = "devices { filter = [ " + string.Join(", ", devices.Select(d => $"\"a|^{d}$|\"")) + ", \"r|.*|\" ] "
            + "scan = [ \"/dev\" ] obtain_device_list_from_udev = 0 use_devicesfile = 0 } "
            + "activation { udev_sync = 0 udev_rules = 0 monitoring = 0 } global { use_lvmetad = 0 } log { level = 0 }";
        var pvReport = Run("lvm", "pvs", "--config", filter, "--reportformat", "json", "-o", "pv_name,vg_name");
        if (pvReport.Code != 0)
        {
            options.Log($"lvm pvs failed: {pvReport.Err.Trim()}");
            yield break;
        }

        var vgDisks = new Dictionary<string, HashSet<string>>(StringComparer.Ordinal);
        foreach (var row in Rows(pvReport.Out, "pv"))
        {
            var vg = row.GetValueOrDefault("vg_name") ?? "";
            var pv = row.GetValueOrDefault("pv_name") ?? "";
            if (vg.Length > 0 && pvs.TryGetValue(pv, out var disk))
            {
                (vgDisks.TryGetValue(vg, out var set) ? set : vgDisks[vg] = []).Add(disk);
            }
        }

        var lvReport = Run("lvm", "lvs", "--config", filter, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "vg_name,lv_name,lv_size,lv_attr");
        if (lvReport.Code != 0)
        {
            options.Log($"lvm lvs failed: {lvReport.Err.Trim()}");
            yield break;
        }

        var lvs = Rows(lvReport.Out, "lv").ToList();
        foreach (var (vg, disks) in vgDisks)
        {
            string? error = null;
            var activate = Run("lvm", "vgchange", "--config", filter + $" activation {{ read_only_volume_list = [ \"{vg}\" ] }}", "-ay", "-K", "--ignoremonitoring", vg);
            if (activate.Code != 0)
            {
                error = $"cannot activate volume group {vg}: {FirstLine(activate.Err)}";
                options.Log(error);
            }
            else
            {
                lock (gate)
                {
                    activatedGroups.Add(vg);
                }

                Run("lvm", "vgmknodes", "--config", filter, vg);
            }

            foreach (var lv in lvs.Where(r => r.GetValueOrDefault("vg_name") == vg))
            {
                var name = lv.GetValueOrDefault("lv_name") ?? "";
                var attr = lv.GetValueOrDefault("lv_attr") ?? "";
                if (name.Length == 0 || attr.StartsWith('t') || attr.StartsWith('e') || attr.StartsWith('i') || attr.StartsWith('l'))
                {
                    continue; // thin pools and internal volumes hold no file system of their own
                }

                _ = ulong.TryParse(lv.GetValueOrDefault("lv_size"), out var size);
                var device = "/dev/mapper/" + vg.Replace("-", "--", StringComparison.Ordinal) + "-" + name.Replace("-", "--", StringComparison.Ordinal);
                string? type = null;
                var lvError = error;
                if (error is null)
                {
                    try
                    {
                        using var s = new FileStream(device, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 4096);
                        type = FsProbe.Detect(s);
                    }
                    catch (IOException e)
                    {
                        lvError = $"cannot open {device}: {e.Message}";
                    }
                }

                yield return (disks, new VolumeInfo("", "lvm", [vg, name], device, size, type) { Error = lvError });
            }
        }
    }

    private static string FirstLine(string text) =>
        text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault() ?? "failed";

    private static IEnumerable<Dictionary<string, string>> Rows(string json, string kind)
    {
        using var doc = JsonDocument.Parse(json);
        var list = new List<Dictionary<string, string>>();
        foreach (var report in doc.RootElement.GetProperty("report").EnumerateArray())
        {
            if (!report.TryGetProperty(kind, out var rows))
            {
                continue;
            }

            foreach (var row in rows.EnumerateArray())
            {
                list.Add(row.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString() ?? "", StringComparer.Ordinal));
            }
        }

        return list;
    }

    private string Mount(VolumeInfo volume)
    {
        if (volume.Error is not null)
        {
            Remember(volume, "", "", volume.Error);
            throw new VolumeException($"{volume.Id}: {volume.Error}");
        }

        if (volume.FsType is FsProbe.LvmMember or FsProbe.Swap)
        {
            var why = volume.FsType == FsProbe.Swap ? "is swap space" : "is an LVM physical volume";
            Remember(volume, "", volume.FsType, why);
            throw new VolumeException($"{volume.Id} {why}, not a file system");
        }

        var target = volume.Bucket == "lvm"
            ? Path.Combine(options.MountRoot, "lvm", volume.Components[0], volume.Components[1])
            : Path.Combine(options.MountRoot, "dev", Path.GetFileName(volume.Device));
        Directory.CreateDirectory(target);
        WaitForModules(volume.FsType);
        var candidates = volume.FsType is { } known ? [known] : KernelFileSystems();
        var errors = new List<string>();
        if (volume.FsType == "ntfs" && !KernelFileSystems().Contains("ntfs3"))
        {
            return MountNtfs3g(volume, target);
        }

        foreach (var type in candidates)
        {
            var kernelType = type is "ext2" or "ext3" ? "ext4" : type == "ntfs" ? "ntfs3" : type;
            var data = FsProbe.ReadOnlyOptions(type);
            if (LibC.Mount(volume.Device, target, kernelType, LibC.MS_RDONLY | LibC.MS_NOSUID | LibC.MS_NODEV | LibC.MS_NOEXEC, data) == 0)
            {
                options.Log($"mounted {volume.Id} ({volume.Device}, {type}) read-only on {target}");
                Remember(volume, target, type, null);
                return target;
            }

            var errno = LibC.Errno;
            errors.Add($"{type}: {LibC.StrError(errno)}{(errno == 19 ? " (the kernel has no " + type + " support)" : "")}");
            if (volume.FsType is null && errno == LibC.EINVAL)
            {
                continue;
            }
        }

        var message = candidates.Count == 0
            ? $"{volume.Id} ({volume.Device}): no recognised file system"
            : volume.FsType is null
                ? $"{volume.Id} ({volume.Device}): no recognised file system; tried {string.Join(", ", errors)}"
                : $"cannot mount {volume.Id} ({volume.Device}) as {errors[0]}";
        options.Log(message);
        Remember(volume, target, volume.FsType ?? "", message);
        throw new VolumeException(message);
    }

    /// <summary>NTFS without the kernel's ntfs3: ntfs-3g over FUSE, read-only, without touching a dirty log.</summary>
    private string MountNtfs3g(VolumeInfo volume, string target)
    {
        WaitForModules(null); // fuse
        var result = Run("ntfs-3g", "-o", "ro,norecover,nosuid,nodev,noexec", volume.Device, target);
        if (result.Code == 0)
        {
            options.Log($"mounted {volume.Id} ({volume.Device}, ntfs through ntfs-3g) read-only on {target}");
            Remember(volume, target, "ntfs-3g", null);
            return target;
        }

        var message = $"cannot mount {volume.Id} ({volume.Device}) as ntfs with ntfs-3g: {FirstLine(result.Err + result.Out)}";
        options.Log(message);
        Remember(volume, target, "ntfs", message);
        throw new VolumeException(message);
    }

    /// <summary>In the VM, file system modules load while the daemon already answers: wait for this type's.</summary>
    private void WaitForModules(string? type)
    {
        if (options.ReadyFile is not { } ready)
        {
            return;
        }

        var kernelType = type is "ext2" or "ext3" ? "ext4" : type;
        // FAT, exFAT and ISO 9660 also need their character-set modules: wait for all modules for them.
        var needsAll = kernelType is null or "vfat" or "exfat" or "iso9660" or "ntfs3";
        var watch = Stopwatch.StartNew();
        while (!File.Exists(ready) && watch.Elapsed < TimeSpan.FromSeconds(30)
               && (needsAll || !KernelFileSystems().Contains(kernelType!)))
        {
            Thread.Sleep(10);
        }

        if (watch.ElapsedMilliseconds > 50)
        {
            options.Log($"waited {watch.ElapsedMilliseconds} ms for the {kernelType ?? "file system"} module");
        }
    }

    private void Remember(VolumeInfo volume, string target, string type, string? error) =>
        mounted[volume.Id] = new MountedVolume(volume, target, type, error);

    private static List<string> KernelFileSystems()
    {
        if (!File.Exists("/proc/filesystems"))
        {
            return [];
        }

        return File.ReadAllLines("/proc/filesystems")
            .Where(l => !l.StartsWith("nodev", StringComparison.Ordinal))
            .Select(l => l.Trim())
            .Where(t => t.Length > 0 && t != "zfs" && t != "fuseblk")
            .ToList();
    }

    private static (int Code, string Out, string Err) Run(string file, params string[] args)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        info.Environment["LVM_SUPPRESS_FD_WARNINGS"] = "1";
        try
        {
            using var p = Process.Start(info)!;
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(60_000))
            {
                p.Kill(true);
                return (-1, "", $"{file} timed out");
            }

            return (p.ExitCode, stdout.Result, stderr.Result);
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return (-1, "", $"{file}: {e.Message}");
        }
    }

    public void Dispose()
    {
        foreach (var m in mounted.Values.Where(m => m.Error is null && m.MountPoint.Length > 0))
        {
            if (LibC.Umount2(m.MountPoint, 0) != 0)
            {
                LibC.Umount2(m.MountPoint, 2); // MNT_DETACH while something still uses it
            }
        }

        lock (gate)
        {
            foreach (var vg in activatedGroups)
            {
                Run("lvm", "vgchange", "-an", vg);
            }

            foreach (var loop in loops)
            {
                Run("losetup", "-d", loop);
            }

            loops.Clear();
            activatedGroups.Clear();
        }
    }
}
