using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// LVM-thin, as Debian's and Proxmox's installers lay it out: a GPT disk whose partition holds a VG with a thin pool,
/// two thin LVs (ext4, xfs), a thin snapshot of the ext4 one and a linear LV beside the pool (made on the host without device-mapper by
/// scripts/make-thin-disk.sh), backed up with the CLI and read through files/ — real FUSE mount, real restore VM.
/// </summary>
public sealed class ThinLvmFixture() : DiskImageMountFixture("restorefs-thin", ["thin_restore"], "make-thin-disk.sh", [], TimeSpan.FromMinutes(3),
    "thin.img", "vm/300", "2026-02-01T00:00:00Z");

public sealed class ThinLvmTests(ThinLvmFixture f) : IClassFixture<ThinLvmFixture>
{
    [Theory]
    [InlineData("home")]
    [InlineData("srv")]
    [InlineData("home-snap")]
    [InlineData("root")]
    public void Rsync_of_each_thin_volume_equals_its_source(string lv)
    {
        var copy = f.AssertVolumeEquals(Path.Combine(f.Disk, "lvm/vgthin", lv), lv, lv);
        Assert.True(Directory.EnumerateFileSystemEntries(copy, "*", SearchOption.AllDirectories).Count() >= 2, $"{lv} is empty");
    }

    [Fact]
    public void The_snapshot_keeps_the_state_before_the_origin_changed_and_the_pool_is_not_a_volume()
    {
        var lvm = Path.Combine(f.Disk, "lvm/vgthin");
        Assert.Equal(["home", "home-snap", "root", "srv"], Directory.GetFileSystemEntries(lvm).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Equal("bob was here\n", File.ReadAllText(Path.Combine(lvm, "home-snap/bob/old.txt")));
        Assert.False(File.Exists(Path.Combine(lvm, "home/bob/old.txt")));
        Assert.StartsWith("alice's notes, version 2", File.ReadAllText(Path.Combine(lvm, "home/alice/docs/notes.txt")), StringComparison.Ordinal);
        Assert.Equal("alice's notes, version 1\n", File.ReadAllText(Path.Combine(lvm, "home-snap/alice/docs/notes.txt")));
    }
}
