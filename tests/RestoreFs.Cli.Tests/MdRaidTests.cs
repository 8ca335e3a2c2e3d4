using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// Linux software RAID across the two disks of one VM (made by scripts/make-md-disk.sh with mdadm inside a VM booted
/// from the restore image: the host kernel has no md): RAID1 with metadata 1.0, 1.2 (holding LVM) and 0.90, a RAID0
/// and a RAID5 of three members (two on the first disk); beside them an LVM RAID1 volume (dm-raid) and a btrfs RAID1
/// over both disks, and on the first disk a LUKS partition holding an LVM volume group (Debian's encrypted install),
/// unlocked with the mount's passphrase file. Backed up whole (vm/320) and with only the first disk (vm/321, as when a disk is left out of the backup), read
/// through files/ — real FUSE mount, real restore VMs, arrays started read-only by mdadm.
/// </summary>
public sealed class MdRaidFixture() : DiskImageMountFixture("restorefs-md", [], "make-md-disk.sh",
    [Path.Combine(RepoPaths.Root, "build", "restore-image")], TimeSpan.FromMinutes(10),
    [("vm/320", "2026-04-01T00:00:00Z", ["md-a.img", "md-b.img"]), ("vm/321", "2026-04-01T00:00:00Z", ["md-a.img"])], "raid and crypt")
{
    public string Files(string group, string disk) => Path.Combine(MountPoint, "snapshots", group, Time, "files", disk + ".img");
}

public sealed class MdRaidTests(MdRaidFixture f) : IClassFixture<MdRaidFixture>
{
    private static List<string?> Names(string dir) => Directory.GetFileSystemEntries(dir).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();

    /// <summary>The volume equals its source tree (<see cref="DiskImageMountFixture.AssertVolumeEquals"/>), and is not
    /// empty; a missing volume fails with what its disk's .error files say.</summary>
    private void AssertEqual(string volume, string expected, string label)
    {
        Assert.True(Directory.Exists(volume), $"{label} is missing; what its disk says:\n{DiskErrors(volume)}");
        var copy = f.AssertVolumeEquals(volume, expected, label);
        Assert.True(Directory.EnumerateFileSystemEntries(copy, "*", SearchOption.AllDirectories).Any(), $"{label} is empty");
    }

    /// <summary>The .error files of the volume's disk (part/N, md/ARRAY, lvm/VG/LV): the disk, its buckets and their
    /// directories are listed, no deeper.</summary>
    private static string DiskErrors(string volume)
    {
        var disk = volume;
        while (!disk.EndsWith(".img", StringComparison.Ordinal))
        {
            disk = Path.GetDirectoryName(disk)!;
        }

        var buckets = Directory.EnumerateDirectories(disk).ToList();
        return string.Join('\n', buckets.Concat(buckets.Where(b => b.EndsWith("/lvm", StringComparison.Ordinal)).SelectMany(Directory.EnumerateDirectories))
            .SelectMany(d => Directory.EnumerateFiles(d, "*.error"))
            .Select(e => $"{Path.GetRelativePath(disk, e)}: {File.ReadAllText(e).Trim()}"));
    }

    [Fact]
    public void Each_disk_shows_the_arrays_it_has_a_member_of_and_not_the_members()
    {
        foreach (var disk in new[] { "drive-scsi0", "drive-scsi1" })
        {
            // The md members are not volumes of their own (as LVM physical volumes are not): part/ has only the btrfs.
            Assert.Equal(["lvm", "md", "part"], Names(f.Files("vm/320", disk)));
            Assert.Equal(["8"], Names(Path.Combine(f.Files("vm/320", disk), "part")));
            Assert.Equal(["boot", "data-part1", "md3", "scratch"], Names(Path.Combine(f.Files("vm/320", disk), "md")));
            // The encrypted VG is on the first disk only; its LUKS partition is a PV, not listed itself.
            Assert.Equal(disk == "drive-scsi0" ? ["vgcrypt", "vgmirror", "vgraid"] : ["vgmirror", "vgraid"], Names(Path.Combine(f.Files("vm/320", disk), "lvm")));
            Assert.Equal(["root"], Names(Path.Combine(f.Files("vm/320", disk), "lvm", "vgraid")));
            Assert.Equal(["mirrored"], Names(Path.Combine(f.Files("vm/320", disk), "lvm", "vgmirror")));
        }
    }

    [Theory]
    [InlineData("drive-scsi0", "md/boot", "boot")]       // RAID1, superblock 1.0 at the end
    [InlineData("drive-scsi0", "md/md3", "md3")]         // RAID1, superblock 0.90 at the end, no name
    [InlineData("drive-scsi0", "md/scratch", "scratch")] // RAID0: every other 64 KiB from the other disk
    [InlineData("drive-scsi0", "lvm/vgraid/root", "root")] // LVM on RAID1 with superblock 1.2
    [InlineData("drive-scsi0", "md/data-part1", "data")] // RAID5 with a partition table
    [InlineData("drive-scsi0", "lvm/vgmirror/mirrored", "mirrored")] // LVM's own RAID1 (dm-raid)
    [InlineData("drive-scsi1", "lvm/vgmirror/mirrored", "mirrored")]
    [InlineData("drive-scsi0", "part/8", "btrfs")]       // btrfs RAID1 over both disks: mounted with both devices named
    [InlineData("drive-scsi1", "part/8", "btrfs")]
    [InlineData("drive-scsi0", "lvm/vgcrypt/home", "crypthome")] // LVM inside LUKS
    [InlineData("drive-scsi1", "md/boot", "boot")]
    [InlineData("drive-scsi1", "md/scratch", "scratch")]
    [InlineData("drive-scsi1", "lvm/vgraid/root", "root")]
    public void Rsync_of_each_array_equals_its_source(string disk, string volume, string expected) =>
        AssertEqual(Path.Combine(f.Files("vm/320", disk), volume), expected, $"vm/320/{disk}/{volume}");

    [Fact]
    public void With_one_disk_backed_up_the_mirrors_and_the_raid5_work_degraded_and_the_stripe_says_why_it_cannot_start()
    {
        var disk = f.Files("vm/321", "drive-scsi0");
        AssertEqual(Path.Combine(disk, "md/boot"), "boot", "vm/321/md/boot");
        AssertEqual(Path.Combine(disk, "md/md3"), "md3", "vm/321/md/md3");
        AssertEqual(Path.Combine(disk, "lvm/vgraid/root"), "root", "vm/321/lvm/vgraid/root");
        AssertEqual(Path.Combine(disk, "md/data-part1"), "data", "vm/321/md/data-part1"); // a third of its blocks rebuilt from parity
        AssertEqual(Path.Combine(disk, "lvm/vgmirror/mirrored"), "mirrored", "vm/321/lvm/vgmirror/mirrored"); // one leg
        AssertEqual(Path.Combine(disk, "part/8"), "btrfs", "vm/321/part/8"); // btrfs mounted degraded
        var error = File.ReadAllText(Path.Combine(disk, "md/scratch.error"));
        Assert.Contains("md array scratch (raid0, metadata 1.2, 1 of 2 member(s) in this backup) cannot be started", error, StringComparison.Ordinal);
        Assert.Contains("partition 3", error, StringComparison.Ordinal);
        Assert.Empty(Directory.GetFileSystemEntries(Path.Combine(disk, "md/scratch"))); // shown, empty, beside its reason
    }
}
