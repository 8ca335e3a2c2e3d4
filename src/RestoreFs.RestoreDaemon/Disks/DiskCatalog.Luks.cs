namespace RestoreFs.RestoreDaemon.Disks;

public sealed partial class DiskCatalog
{
    /// <summary>
    /// With passphrases given, LUKS volumes are opened during the scan so that an LVM volume group inside one (the
    /// encrypted install of Debian and Ubuntu: a LUKS partition holding the VG with root, home and swap) joins the LVM
    /// scan and its LVs are listed under <c>lvm/</c>. A LUKS volume holding a file system stays listed as itself; its
    /// first mount uses the mapping opened here. One that cannot be opened keeps its place and says why when entered.
    /// </summary>
    private void ScanLuks(List<DiskScan> disks, List<PvCandidate> pvs)
    {
        if (options.GuestKeys is not { Count: > 0 })
        {
            return;
        }

        var encrypted = disks.SelectMany(d => d.Volumes.Where(v => v.FsType == FsProbe.Luks && v.Error is null && v.Device.Length > 0)
            .Select(v => (Disk: d, Volume: v))).ToList();
        foreach (var group in encrypted.GroupBy(e => e.Volume.Device, StringComparer.Ordinal))
        {
            var (mapped, error) = OpenLuks(group.First().Volume);
            if (mapped is null)
            {
                log(error!);
                continue;
            }

            string? inner;
            try
            {
                using var stream = OpenRead(mapped);
                inner = FsProbe.Detect(stream, 0, DeviceSize(stream, mapped));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                log($"cannot read the opened LUKS volume {mapped}: {e.Message}");
                continue;
            }

            if (inner != FsProbe.LvmMember)
            {
                continue;
            }

            log($"{group.First().Volume.Id} (LUKS, opened as {mapped}) holds an LVM physical volume");
            foreach (var (disk, volume) in group)
            {
                // As any PV, the encrypted volume is not listed itself; its LVs are (never mapped onto the image).
                disk.Volumes.Remove(volume);
                pvs.Add(new PvCandidate(disk, mapped, volume with { Device = mapped, FsType = FsProbe.LvmMember, Placement = null }));
            }
        }
    }

    /// <summary>A disk's state for answers given while the scan still runs (replacing what was published of it).</summary>
    private void Publish(DiskScan disk)
    {
        lock (gate)
        {
            scanned.RemoveAll(s => s.Name == disk.Name);
            scanned.Add(disk.ToInfo());
        }
    }
}
