using RestoreFs.RestoreDaemon.Native;

namespace RestoreFs.RestoreDaemon.Disks;

/// <summary>
/// ZFS pools: imported read-only (no cache file, nothing mounted by the import), each file system dataset a volume
/// <c>zfs/&lt;pool&gt;/&lt;dataset&gt;</c> (the dataset's full name with <c>/</c> as <c>+</c>), each ZFS volume (zvol) scanned
/// like a disk: a file system on the whole zvol is <c>zfs/&lt;pool&gt;/&lt;zvol&gt;</c>, its partition N
/// <c>zfs/&lt;pool&gt;/&lt;zvol&gt;-partN</c> (udev's naming). A pool is listed under every disk that holds one of its members.
/// </summary>
public sealed partial class DiskCatalog
{
    private Zfs? zfs;
    private readonly List<string> importedPools = [];

    private void ScanZfs(List<PvCandidate> members)
    {
        try
        {
            ScanZfsCore(members);
        }
        finally
        {
            foreach (var disk in members.Select(m => m.Disk).Distinct())
            {
                lock (gate)
                {
                    scanned.Add(disk.ToInfo());
                }
            }
        }
    }

    private void ScanZfsCore(List<PvCandidate> members)
    {
        void AllFail(IEnumerable<PvCandidate> which, string why)
        {
            foreach (var m in which)
            {
                m.Disk.Volumes.Add(m.AsVolume with { Error = $"{m.Device} is a member of a ZFS pool, but {why}" });
                log($"ZFS: {m.Device}: {why}");
            }
        }

        zfs = new Zfs(log);
        var watch = System.Diagnostics.Stopwatch.StartNew();
        if (zfs.EnsureLoaded() is { } missing)
        {
            AllFail(members, missing);
            return;
        }

        log($"ZFS ready in {watch.ElapsedMilliseconds} ms");
        var links = Zfs.ShowDevices(members.Select(m => m.Device).Distinct().ToList());
        zfs.ImportAll();
        var pools = new List<(ZfsPoolCandidate Pool, string Name)>(zfs.ImportedPools(links).Select(p => (p, p.Name)));
        var left = members.Where(m => pools.All(p => !p.Pool.Members.Contains(m.Device))).ToList();
        if (left.Count > 0)
        {
            // Not imported by the first run: a second pool of a name already taken, a damaged or incomplete pool.
            IReadOnlyList<ZfsPoolCandidate> listed;
            try
            {
                listed = zfs.FindPools(links);
            }
            catch (IOException e)
            {
                listed = [];
                AllFail(left, e.Message);
                left.Clear();
            }

            var names = pools.Select(p => p.Name).ToHashSet(StringComparer.Ordinal);
            foreach (var pool in listed.Where(p => p.Members.Any(d => left.Any(m => m.Device == d))))
            {
                var disks = members.Where(m => pool.Members.Contains(m.Device)).Select(m => m.Disk).Distinct().ToList();
                // Two pools of one name (clones of a VM's disks): the second is imported under its name and id.
                var importName = names.Add(pool.Name) ? pool.Name : $"{pool.Name}-{pool.Id}";
                names.Add(importName);
                if (zfs.Import(pool, importName) is { } failed)
                {
                    var error = $"cannot import ZFS pool {pool.Name} (id {pool.Id}, state {pool.State}) read-only: {failed}";
                    log(error + "\n" + pool.Text);
                    foreach (var disk in disks)
                    {
                        disk.Volumes.Add(new VolumeInfo(disk.Name, "zfs", [importName, importName], "", 0, "zfs") { Error = error });
                    }

                    left.RemoveAll(m => pool.Members.Contains(m.Device));
                    continue;
                }

                pools.Add((pool, importName));
                left.RemoveAll(m => pool.Members.Contains(m.Device));
            }

            AllFail(left, "zpool import finds no pool on it");
        }

        foreach (var (pool, importName) in pools)
        {
            var disks = members.Where(m => pool.Members.Contains(m.Device)).Select(m => m.Disk).Distinct().ToList();
            log($"imported ZFS pool {importName}{(importName != pool.Name ? $" (id {pool.Id}, named {pool.Name} on disk)" : "")} read-only");
            lock (gate)
            {
                importedPools.Add(importName);
            }

            IReadOnlyList<ZfsDataset> datasets;
            try
            {
                datasets = zfs.Datasets(importName);
            }
            catch (IOException e)
            {
                foreach (var disk in disks)
                {
                    disk.Volumes.Add(new VolumeInfo(disk.Name, "zfs", [importName, importName], "", 0, "zfs") { Error = e.Message });
                }

                continue;
            }

            var zvols = datasets.Where(d => d.Type == "volume").ToList();
            // Only volumes that get a device are waited for (a locked or volmode=none one never does).
            var expected = zvols.Count(v => !v.KeyMissing && !v.NoDevice);
            var devices = expected > 0 ? zfs.VolumeDevices(expected, TimeSpan.FromSeconds(20)) : [];
            var found = new List<VolumeInfo>();
            foreach (var ds in datasets)
            {
                var entry = Zfs.EntryName(ds.Name);
                if (ds.Type == "filesystem")
                {
                    found.Add(new VolumeInfo("", "zfs", [importName, entry], ds.Name, ds.Size, "zfs")
                    {
                        Error = ds.KeyMissing ? $"ZFS dataset {ds.Name} is encrypted (ZFS native encryption) and its key is not loaded" : null,
                    });
                }
                else if (ds.Type == "volume")
                {
                    found.AddRange(devices.TryGetValue(ds.Name, out var device)
                        ? ScanZvol(importName, ds, device)
                        : [new VolumeInfo("", "zfs", [importName, entry], "", ds.Size, null)
                        {
                            Error = ds.KeyMissing
                                ? $"ZFS volume {ds.Name} is encrypted (ZFS native encryption) and its key is not loaded"
                                : ds.NoDevice
                                    ? $"ZFS volume {ds.Name} has volmode=none: ZFS gives it no block device"
                                    : $"ZFS volume {ds.Name}: no block device appeared for it",
                        }]);
                }
            }

            log($"ZFS pool {importName}: {datasets.Count(d => d.Type == "filesystem")} file system(s), {zvols.Count} volume(s)");
            foreach (var disk in disks)
            {
                disk.Volumes.AddRange(found.Select(v => v with { Disk = disk.Name }));
            }
        }
    }

    /// <summary>A ZFS volume scanned like a disk: its partitions or the file system on all of it.</summary>
    private List<VolumeInfo> ScanZvol(string pool, ZfsDataset ds, string device)
    {
        var entry = Zfs.EntryName(ds.Name);
        var scan = new DiskScan(entry, device);
        var nestedPvs = new List<PvCandidate>();
        var nestedZfs = new List<PvCandidate>();
        try
        {
            ScanDisk(scan, nestedPvs, nestedZfs);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException or NotSupportedException)
        {
            return [new VolumeInfo("", "zfs", [pool, entry], device, ds.Size, null) { Error = $"cannot read ZFS volume {ds.Name} ({device}): {e.Message}" }];
        }

        var result = new List<VolumeInfo>();
        foreach (var v in scan.Volumes.Concat(nestedPvs.Concat(nestedZfs).Select(c => c.AsVolume with
                 {
                     Error = $"{c.AsVolume.FsType} inside a ZFS volume is not looked into",
                 })))
        {
            var name = v.Bucket == "part" ? $"{entry}-part{v.Components[0]}" : entry;
            // Bytes of a zvol are not bytes of the disk image: no placement, files are read through the VM.
            result.Add(v with { Bucket = "zfs", Components = [pool, name], Placement = null });
        }

        if (result.Count == 0)
        {
            result.Add(new VolumeInfo("", "zfs", [pool, entry], device, ds.Size, null) { Error = $"ZFS volume {ds.Name} ({device}) holds no partition table and no recognised file system" });
        }

        return result;
    }

    /// <summary>A ZFS file system dataset, mounted read-only by itself (the pool is imported read-only).</summary>
    private string MountZfsDataset(VolumeInfo volume)
    {
        var target = MountPointOf(volume);
        CreateMountPoint(target);
        if (LibC.Mount(volume.Device, target, "zfs", ReadOnlyFlags, null) == 0)
        {
            log($"mounted ZFS dataset {volume.Device} read-only on {target}");
            mounted[volume.Id] = new MountedVolume(volume, target, "zfs", null);
            return target;
        }

        var errno = LibC.Errno;
        return Fail(volume, target, "zfs", $"cannot mount ZFS dataset {volume.Device} ({volume.Id}): {LibC.StrError(errno)}");
    }

    /// <summary>Exports the pools this catalog imported (after their datasets were unmounted).</summary>
    private void ExportPools()
    {
        List<string> pools;
        lock (gate)
        {
            pools = importedPools.ToList();
            importedPools.Clear();
        }

        foreach (var pool in pools)
        {
            zfs?.Export(pool);
        }
    }
}
