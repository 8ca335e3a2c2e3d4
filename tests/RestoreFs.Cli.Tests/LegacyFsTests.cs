using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// The older Linux file systems of long-lived servers — ReiserFS 3.6, JFS, F2FS — on one GPT disk (made by
/// scripts/make-legacy-disk.sh: mkfs on the host, filled inside a VM booted from the restore image), backed up with the
/// CLI and read through files/: real FUSE mount, real restore VM loading each module when a volume needs it.
/// </summary>
public sealed class LegacyFsFixture() : DiskImageMountFixture("restorefs-legacy", ["mkfs.reiserfs", "mkfs.jfs", "mkfs.f2fs"],
    "make-legacy-disk.sh", [Path.Combine(RepoPaths.Root, "build", "restore-image")], TimeSpan.FromMinutes(10), "legacy.img", "vm/330",
    "2026-05-01T00:00:00Z");

public sealed class LegacyFsTests(LegacyFsFixture f) : IClassFixture<LegacyFsFixture>
{
    [Theory]
    [InlineData("1", "reiserfs")]
    [InlineData("2", "jfs")]
    [InlineData("3", "f2fs")]
    public void Rsync_of_each_file_system_equals_its_source(string partition, string type)
    {
        var copy = f.AssertVolumeEquals(Path.Combine(f.Disk, "part", partition), "tree", type);
        Assert.Equal("Grüße aus Nürnberg\n", File.ReadAllText(Path.Combine(copy, "home/tux/mail/Grüße.txt")));
    }
}
