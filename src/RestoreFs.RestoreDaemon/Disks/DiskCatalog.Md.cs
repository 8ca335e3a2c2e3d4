using System.Globalization;

namespace RestoreFs.RestoreDaemon.Disks;

/// <summary>
/// Linux software RAID (md): the members found on the disks are grouped by their array's UUID, each array is started
/// read-only by mdadm (degraded when members are missing and the level allows it: a backup may hold only some of a
/// VM's disks), and what the array holds is listed under <c>md/NAME</c> of every disk with a member: a file system, a
/// partition table (<c>md/NAME-partN</c>) or an LVM physical volume (its logical volumes under <c>lvm/</c>).
/// </summary>
public sealed partial class DiskCatalog
{
    /// <summary>A partition or disk that is a member of an md array.</summary>
    /// <param name="HeadType">What the member's first bytes hold by themselves (for a superblock at the end: the array's
    /// data, or a file system written over a stale member).</param>
    private sealed record RaidCandidate(DiskScan Disk, string Device, VolumeInfo AsVolume, MdSuperblock Superblock, string? HeadType);

    private static readonly TimeSpan MdLimit = TimeSpan.FromSeconds(60);

    // Arrays this catalog started (/dev/mdN), stopped by Dispose.
    private readonly List<string> arrays = [];

    /// <summary>Adds a member to <paramref name="raids"/>; the volume to show instead (with its reason) when it is not
    /// collected: members inside other volumes are not assembled, nor members whose superblock does not parse.</summary>
    private static VolumeInfo? CollectRaidMember(List<RaidCandidate>? raids, DiskScan disk, string device, Stream stream, long offset, long length,
        VolumeInfo volume, string what)
    {
        if (raids is null)
        {
            return volume with { Error = $"{what} is a member of a Linux software RAID (md) array inside another volume, which is not assembled" };
        }

        var sb = MdSuperblock.Read(stream, offset, length);
        if (sb is null)
        {
            return volume with { Error = $"{what} carries the md RAID signature, but its superblock is not one mdadm writes (version 0.90 or 1.x)" };
        }

        raids.Add(new RaidCandidate(disk, device, volume, sb, sb.Version is "1.0" or "0.90" ? FsProbe.Detect(stream, offset, length) : null));
        return null;
    }

    /// <summary>Starts each array read-only and lists what it holds on every disk with one of its members.</summary>
    private void ScanMd(List<RaidCandidate> raids, List<PvCandidate> pvs, List<PvCandidate> zfsMembers)
    {
        // raid456 needs the crc32c module, one of the modules loaded beside the daemon's start.
        WaitForReadyFile("md RAID");
        var names = new HashSet<string>(StringComparer.Ordinal);
        var number = 0;
        foreach (var group in raids.GroupBy(r => r.Superblock.Uuid).OrderBy(g => g.First().Superblock.DisplayName, StringComparer.Ordinal))
        {
            var members = group.GroupBy(r => r.Device).Select(g => g.First()).ToList();
            var sb = members.OrderByDescending(m => m.Superblock.Events).First().Superblock;
            var name = sb.DisplayName;
            for (var i = 2; !names.Add(name); i++)
            {
                name = sb.DisplayName + "-" + i.ToString(CultureInfo.InvariantCulture);
            }

            var disks = members.Select(m => m.Disk).Distinct().ToList();
            var described = $"md array {name} ({sb.LevelName}, metadata {sb.Version}, {members.Count(m => m.Superblock.Role >= 0)} of {sb.RaidDisks} member(s) in this backup)";
            var error = number < 128 ? LoadPersonality(sb) : "more than 128 md arrays on the disks of this backup: the rest are not started";
            string? device = null;
            if (error is null)
            {
                // Numbers from 127 down, as mdadm picks them for arrays it does not know from a config file.
                device = "/dev/md" + (127 - number++).ToString(CultureInfo.InvariantCulture);
                error = Assemble(device, members.Select(m => m.Device).ToList());
            }

            if (error is not null)
            {
                log($"{described}: {error}");
                foreach (var m in members.Where(m => m.HeadType is not null && !FsProbe.IsContainer(m.HeadType)))
                {
                    // A superblock at the end leaves the member's start to the array's data: when the array cannot
                    // start (a stale superblock of a disk reused without wiping it, say), the file system found there
                    // is still offered as the partition it is.
                    log($"{m.AsVolume.Id}: {m.HeadType} at its start, shown as a volume of its own");
                    m.Disk.Volumes.Add(m.AsVolume with { FsType = m.HeadType, Error = null });
                }

                foreach (var disk in disks)
                {
                    var here = string.Join(", ", members.Where(m => m.Disk == disk).Select(m => Where(m.AsVolume)));
                    disk.Volumes.Add(new VolumeInfo(disk.Name, "md", [name], "", 0, null)
                    {
                        Error = $"{described} cannot be started ({here} of this disk): {error}",
                    });
                }

                continue;
            }

            lock (gate)
            {
                arrays.Add(device!);
            }

            var degraded = ReadNumber($"/sys/block/{Path.GetFileName(device)}/md/degraded");
            log($"{described} started read-only as {device}" + (degraded is > 0 ? $", degraded ({degraded} member(s) missing)" : ""));
            AddArrayVolumes(name, device!, disks, pvs, zfsMembers);
        }
    }

    private static string Where(VolumeInfo v) => v.Bucket == "part" ? $"partition {v.Components[0]}" : "the whole disk";

    /// <summary>Loads md and the array's personality; the reason when it cannot.</summary>
    private static string? LoadPersonality(MdSuperblock sb) =>
        sb.Personality is not { } personality ? $"RAID level {sb.Level} is not supported" : LoadModule("md-mod") ?? LoadModule(personality);

    /// <summary>The modules of LVM's RAID and mirror volumes (dm-raid runs md's personalities inside device-mapper),
    /// loaded before the group is activated; what cannot be loaded is logged and left to the activation's error.</summary>
    private void LoadRaidTargets(string vg, IEnumerable<string> segmentTypes)
    {
        var modules = new List<string>();
        foreach (var type in segmentTypes.Distinct())
        {
            string[] needed = type switch
            {
                "mirror" => ["dm-mirror"],
                "raid0" or "raid0_meta" => ["md-mod", "raid0", "dm-raid"],
                "raid1" => ["md-mod", "raid1", "dm-raid"],
                "raid10" => ["md-mod", "raid10", "dm-raid"],
                _ when type.StartsWith("raid4", StringComparison.Ordinal) || type.StartsWith("raid5", StringComparison.Ordinal)
                       || type.StartsWith("raid6", StringComparison.Ordinal) => ["md-mod", "raid456", "dm-raid"],
                _ => [],
            };
            modules.AddRange(needed.Where(m => !modules.Contains(m)));
        }

        foreach (var error in modules.Select(LoadModule).OfType<string>())
        {
            log($"volume group {vg}: {error}");
        }
    }

    /// <summary>Loads a kernel module the image carries, unless it is loaded; the reason when it cannot be.</summary>
    private static string? LoadModule(string module)
    {
        var sys = "/sys/module/" + module.Replace('-', '_');
        if (Directory.Exists(sys))
        {
            return null;
        }

        // start_dirty_degraded: a RAID5/6 that was written to when the backup was taken is dirty; with a member missing
        // from the backup the kernel would refuse to start it. Read-only, it is safe to start.
        var r = Tool.Run("modprobe", module == "md-mod" ? [module, "start_dirty_degraded=1"] : [module], MdLimit);
        return r.Ok || Directory.Exists(sys) ? null : $"cannot load the kernel module {module}: {r.FirstLine}";
    }

    /// <summary>mdadm --assemble, read-only, started even when degraded; null when the array runs, else mdadm's reason.</summary>
    private static string? Assemble(string device, List<string> members)
    {
        // --config=none: no mdadm.conf is read; --readonly: the array never writes (no resync, no superblock update);
        // --run: start with members missing when the level allows it.
        var r = Tool.Run("mdadm", ["--assemble", device, "--readonly", "--run", "--config=none", .. members], MdLimit);
        var sys = $"/sys/block/{Path.GetFileName(device)}";
        if (ReadNumber(sys + "/size") is > 0)
        {
            return null;
        }

        // A failed start can leave an inactive array holding the members: free them.
        Tool.Run("mdadm", ["--stop", device], MdLimit);
        var reason = string.Join("; ", (r.Err + "\n" + r.Out).Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Where(l => !l.StartsWith("mdadm: /dev/", StringComparison.Ordinal) || l.Contains("not", StringComparison.Ordinal)).Take(3));
        return reason.Length > 0 ? reason : $"mdadm ended with code {r.Code} and the array did not start";
    }

    /// <summary>Scans a started array as a disk of its own and shows what it holds under md/ of each member's disk.</summary>
    private void AddArrayVolumes(string name, string device, List<DiskScan> disks, List<PvCandidate> pvs, List<PvCandidate> zfsMembers)
    {
        var scan = new DiskScan(name, device);
        var nestedPvs = new List<PvCandidate>();
        var nestedZfs = new List<PvCandidate>();
        try
        {
            ScanDisk(scan, nestedPvs, nestedZfs);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException or NotSupportedException)
        {
            scan.Volumes.Add(new VolumeInfo("", "raw", [], device, scan.Size, null) { Error = $"cannot read md array {name} ({device}): {e.Message}" });
        }

        string Entry(VolumeInfo v) => v.Bucket == "part" ? $"{name}-part{v.Components[0]}" : name;
        if (scan.Volumes.Count == 0 && nestedPvs.Count == 0 && nestedZfs.Count == 0)
        {
            scan.Volumes.Add(new VolumeInfo("", "raw", [], device, scan.Size, null)
            {
                Error = $"md array {name} ({device}) holds no partition table and no recognised file system",
            });
        }

        foreach (var disk in disks)
        {
            // The array's bytes are not bytes of one disk image: no placement, files are read through the VM.
            VolumeInfo Under(VolumeInfo v) => v with { Disk = disk.Name, Bucket = "md", Components = [Entry(v)], Placement = null };
            disk.Volumes.AddRange(scan.Volumes.Select(Under));
            pvs.AddRange(nestedPvs.Select(p => new PvCandidate(disk, p.Device, Under(p.AsVolume))));
            zfsMembers.AddRange(nestedZfs.Select(p => new PvCandidate(disk, p.Device, Under(p.AsVolume))));
        }
    }

    /// <summary>Stops the arrays this catalog started (after the volumes on them are unmounted and deactivated).</summary>
    private void StopArrays()
    {
        List<string> started;
        lock (gate)
        {
            started = arrays.ToList();
            arrays.Clear();
        }

        foreach (var device in started.AsEnumerable().Reverse())
        {
            var r = Tool.Run("mdadm", ["--stop", device], MdLimit);
            log(r.Ok ? $"stopped {device}" : $"cannot stop {device}: {r.FirstLine}");
        }
    }
}
