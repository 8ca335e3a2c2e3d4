using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// A ZFS pool in a guest disk (made by scripts/make-zfs-disk.sh inside a VM booted from the restore image: the host has
/// no ZFS), backed up with the CLI and read through files/ — real FUSE mount, real restore VM, pool imported read-only.
/// </summary>
public sealed class ZfsFixture : DiskImageMountFixture
{
    public ZfsFixture()
        : base("restorefs-zfs", [], "make-zfs-disk.sh", [Path.Combine(RepoPaths.Root, "build", "restore-image")], TimeSpan.FromMinutes(10),
            "zfs.img", "vm/310", "2026-03-01T00:00:00Z")
    {
        StoreHashBefore = JournalReplayTests.StoreHash(Store); // mounted, nothing read through the mount yet
    }

    public string StoreHashBefore { get; }

    public string Pool => Path.Combine(Disk, "zfs", "tank");
}

public sealed class ZfsTests(ZfsFixture f) : IClassFixture<ZfsFixture>
{
    private static ProcessResult Run(string tool, params string[] args) =>
        ProcessRunner.Run(Requires.Tool(tool), args, TimeSpan.FromMinutes(3)).EnsureSuccess(tool + " " + string.Join(' ', args));

    [Fact]
    public void Every_dataset_and_the_volume_are_listed_by_name()
    {
        var entries = Directory.GetFileSystemEntries(f.Pool).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(["tank", "tank+data", "tank+data+www", "tank+hidden", "tank+hidden.error", "tank+home", "tank+home+alice", "tank+vol"], entries);
        // A volume ZFS makes no device for is named with the reason (and not waited for).
        Assert.Contains("volmode=none", File.ReadAllText(Path.Combine(f.Pool, "tank+hidden.error")), StringComparison.Ordinal);
        // tank/data is a container (canmount=off): an empty file system of its own, shown as such.
        Assert.Empty(Directory.GetFileSystemEntries(Path.Combine(f.Pool, "tank+data")));
    }

    [Theory]
    [InlineData("tank", "/home")]
    [InlineData("tank+home", "/alice")]
    [InlineData("tank+home+alice", null)]
    [InlineData("tank+data+www", null)]
    [InlineData("tank+vol", "/lost+found")]
    public void Rsync_of_each_dataset_equals_its_source(string entry, string? mountPointInside)
    {
        var volume = Path.Combine(f.Pool, entry);
        Assert.False(File.Exists(volume + ".error"), $"{entry}: {(File.Exists(volume + ".error") ? File.ReadAllText(volume + ".error") : "")}");
        var copy = f.Dir.Combine("out-" + entry);
        // A child dataset's mount point (made by ZFS when it mounted the child in the guest) is not part of the source.
        string[] exclude = mountPointInside is null ? [] : ["--exclude=" + mountPointInside];
        Run("rsync", [.. new[] { "-aH", "--numeric-ids" }, .. exclude, volume + "/", copy + "/"]);
        var changes = string.Join('\n', Run("rsync", [.. new[] { "-aiH", "--numeric-ids", "--dry-run", "--checksum", "--delete" }, .. exclude, copy + "/", Path.Combine(f.Expected, entry) + "/"]).StdOut
            .Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.EndsWith(" ./", StringComparison.Ordinal)));
        Assert.True(changes.Length == 0, $"{entry} differs:\n{changes}");
        Assert.True(Directory.EnumerateFileSystemEntries(copy, "*", SearchOption.AllDirectories).Count() >= 2, $"{entry} is empty");
    }

    [Fact]
    public void Hard_links_are_one_inode_and_the_store_is_never_written()
    {
        var bob = Path.Combine(f.Pool, "tank+home", "bob");
        var a = new FileInfo(Path.Combine(bob, "notes.txt"));
        Assert.Equal("bob's file\n", File.ReadAllText(a.FullName));
        var stat = Run("stat", "-c", "%i %h", a.FullName, Path.Combine(bob, "notes-hardlink.txt")).StdOut.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2, stat.Length);
        Assert.Equal(stat[0], stat[1]);
        Assert.EndsWith(" 2", stat[0], StringComparison.Ordinal);
        Assert.Equal(f.StoreHashBefore, JournalReplayTests.StoreHash(f.Store));
    }
}
