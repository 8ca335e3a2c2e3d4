using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// Partitions the restore VM's kernel does not show by itself, on two disks made by scripts/make-odd-table-disks.sh:
/// a GPT of 4 KiB logical sectors (a disk copied from a 4Kn drive; the VM's virtual disks have 512-byte sectors) and
/// a GPT behind a wiped protective MBR (Linux ignores a GPT without the MBR's boot signature). Our partition reader
/// finds both; the daemon gives each partition a read-only device of its own. Real FUSE mount, real restore VM.
/// </summary>
public sealed class OddTableFixture() : DiskImageMountFixture("restorefs-oddtable", ["sfdisk", "sgdisk", "mkfs.ext4"],
    "make-odd-table-disks.sh", [], TimeSpan.FromMinutes(3), [("vm/340", "2026-06-01T00:00:00Z", ["gpt4k.img", "nombr.img"])]);

public sealed class OddTableTests(OddTableFixture f) : IClassFixture<OddTableFixture>
{
    private static ProcessResult Run(string tool, params string[] args) =>
        ProcessRunner.Run(Requires.Tool(tool), args, TimeSpan.FromMinutes(3)).EnsureSuccess(tool + " " + string.Join(' ', args));

    [Theory]
    [InlineData("drive-scsi0", "GPT of 4 KiB sectors")]
    [InlineData("drive-scsi1", "GPT behind a wiped MBR")]
    public void The_partition_lists_and_its_files_equal_their_source(string disk, string what)
    {
        var files = Path.Combine(f.MountPoint, "snapshots", f.Group, f.Time, "files", disk + ".img");
        Assert.Equal(["part"], Directory.GetFileSystemEntries(files).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        var volume = Path.Combine(files, "part", "1");
        Assert.False(File.Exists(volume + ".error"), $"{what}: {(File.Exists(volume + ".error") ? File.ReadAllText(volume + ".error") : "")}");
        var copy = f.Dir.Combine("out-" + disk);
        Run("rsync", "-a", "--exclude=/lost+found", volume + "/", copy + "/");
        // Nothing to change (contents by checksum, modes, times, owners, symbolic links) means equal; the root's own
        // time is the file system's.
        var changes = string.Join('\n', Run("rsync", "-ai", "--dry-run", "--checksum", "--delete", copy + "/", Path.Combine(f.Expected, "tree") + "/").StdOut
            .Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.EndsWith(" ./", StringComparison.Ordinal)));
        Assert.True(changes.Length == 0, $"{what} differs:\n{changes}");
        Assert.Equal("olá\n", File.ReadAllText(Path.Combine(copy, "home/ana/notícias.txt")));
    }
}
