using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// Partitions the restore VM's kernel does not show by itself, on three disks made by scripts/make-odd-table-disks.sh:
/// a GPT of 4 KiB logical sectors (a disk copied from a 4Kn drive; the VM's virtual disks have 512-byte sectors) and
/// a GPT behind a wiped protective MBR (Linux ignores a GPT without the MBR's boot signature). Our partition reader
/// finds both; the daemon gives each partition a read-only device of its own, on which LVM finds its physical volume
/// too (the 4 KiB disk's second partition). A third disk's primary GPT is damaged: Linux ignores the table (it reads the
/// backup only when booted with "gpt"), our reader takes the backup. Real FUSE mount, real restore VM.
/// </summary>
public sealed class OddTableFixture() : DiskImageMountFixture("restorefs-oddtable", ["sfdisk", "sgdisk", "mkfs.ext4"],
    "make-odd-table-disks.sh", [], TimeSpan.FromMinutes(3), [("vm/340", "2026-06-01T00:00:00Z", ["gpt4k.img", "nombr.img", "badgpt.img"])]);

public sealed class OddTableTests(OddTableFixture f) : IClassFixture<OddTableFixture>
{
    private string Files(string disk) => Path.Combine(f.MountPoint, "snapshots", f.Group, f.Time, "files", disk + ".img");

    [Fact]
    public void Each_disk_shows_what_its_table_holds()
    {
        static string[] Names(string dir) => [.. Directory.GetFileSystemEntries(dir).Select(Path.GetFileName).Order(StringComparer.Ordinal)!];
        Assert.Equal(["lvm", "part"], Names(Files("drive-scsi0")));
        Assert.Equal(["1"], Names(Path.Combine(Files("drive-scsi0"), "part"))); // partition 2 is the PV: its LV is under lvm/
        Assert.Equal(["data"], Names(Path.Combine(Files("drive-scsi0"), "lvm", "vgodd")));
        Assert.Equal(["part"], Names(Files("drive-scsi1")));
        Assert.Equal(["1"], Names(Path.Combine(Files("drive-scsi1"), "part")));
        Assert.Equal(["part"], Names(Files("drive-scsi2")));
        Assert.Equal(["1"], Names(Path.Combine(Files("drive-scsi2"), "part")));
    }

    [Theory]
    [InlineData("drive-scsi0", "part/1", "GPT of 4 KiB sectors")]
    [InlineData("drive-scsi0", "lvm/vgodd/data", "LVM on a GPT of 4 KiB sectors")]
    [InlineData("drive-scsi1", "part/1", "GPT behind a wiped MBR")]
    [InlineData("drive-scsi2", "part/1", "GPT with a damaged primary copy")]
    public void The_volume_equals_its_source(string disk, string path, string what)
    {
        var copy = f.AssertVolumeEquals(Path.Combine(Files(disk), path), "tree", $"{disk}/{path} ({what})");
        Assert.Equal("olá\n", File.ReadAllText(Path.Combine(copy, "home/ana/notícias.txt")));
    }
}
