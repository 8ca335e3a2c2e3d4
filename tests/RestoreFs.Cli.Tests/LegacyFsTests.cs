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
    private static ProcessResult Run(string tool, params string[] args) =>
        ProcessRunner.Run(Requires.Tool(tool), args, TimeSpan.FromMinutes(3)).EnsureSuccess(tool + " " + string.Join(' ', args));

    [Theory]
    [InlineData("1", "reiserfs")]
    [InlineData("2", "jfs")]
    [InlineData("3", "f2fs")]
    public void Rsync_of_each_file_system_equals_its_source(string partition, string type)
    {
        var volume = Path.Combine(f.Disk, "part", partition);
        Assert.False(File.Exists(volume + ".error"), $"{type}: {(File.Exists(volume + ".error") ? File.ReadAllText(volume + ".error") : "")}");
        var copy = f.Dir.Combine("out-" + type);
        Run("rsync", "-a", "--exclude=/lost+found", volume + "/", copy + "/");
        // Nothing to change (contents by checksum, modes, times, owners, symbolic links) means equal; the root's own time
        // is the file system's.
        var changes = string.Join('\n', Run("rsync", "-ai", "--dry-run", "--checksum", "--delete", copy + "/", Path.Combine(f.Expected, "tree") + "/").StdOut
            .Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.EndsWith(" ./", StringComparison.Ordinal)));
        Assert.True(changes.Length == 0, $"{type} differs:\n{changes}");
        Assert.Equal("Grüße aus Nürnberg\n", File.ReadAllText(Path.Combine(copy, "home/tux/mail/Grüße.txt")));
    }
}
