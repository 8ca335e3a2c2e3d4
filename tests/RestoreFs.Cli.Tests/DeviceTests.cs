using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>The companions of an image: <c>.img.dev</c> (attach when followed) and <c>.img.nbd</c> (our NBD export).</summary>
[Collection(BackupCollection.Name)]
public sealed class DeviceTests(BackupFixture backup) : IDisposable
{
    private readonly TempDirectory work = new("restorefs-dev");

    [Fact]
    public void Dev_companion_attaches_once_and_the_ext4_partition_mounts_with_the_source_files()
    {
        string device;
        using (var mount = CliMount.Start(backup.Store, work.Combine("mnt"), "--no-vm"))
        {
            var companion = Path.Combine(BackupFixture.SnapshotDir(mount.MountPoint, "vm/100"), "drive-scsi0.img.dev");
            device = ProcessRunner.Run("readlink", ["-f", companion], TimeSpan.FromSeconds(60)).EnsureSuccess("readlink -f").StdOut.Trim();
            Assert.Matches("^/dev/(nbd|loop)[0-9]+$", device);
            Assert.Equal(device, ProcessRunner.Run("readlink", ["-f", companion]).EnsureSuccess("readlink -f again").StdOut.Trim());
            Assert.Equal(new FileInfo(backup.DiskImage).Length.ToString(),
                ProcessRunner.Run("blockdev", ["--getsize64", device]).EnsureSuccess("blockdev").StdOut.Trim());

            // The host kernel here parses no partition tables: mount partition 1 by its offset in the GPT.
            var disk = work.Combine("disk");
            Directory.CreateDirectory(disk);
            ProcessRunner.Run("mount", ["-t", "ext4", "-o", "ro,noload,offset=1048576", companion, disk], TimeSpan.FromSeconds(60))
                .EnsureSuccess("mount the ext4 partition");
            try
            {
                Assert.Equal("restored-vm\n", File.ReadAllText(Path.Combine(disk, "etc", "hostname")));
                Assert.Equal(BackupFixture.Sha256(Path.Combine(backup.SourceTree, "srv", "big.bin")),
                    BackupFixture.Sha256(Path.Combine(disk, "srv", "big.bin")));
                Assert.Equal(300, Directory.GetFiles(Path.Combine(disk, "srv", "many")).Length);
                Assert.Equal("../../etc/hostname", new FileInfo(Path.Combine(disk, "home", "admin", "host")).LinkTarget);
            }
            finally
            {
                ProcessRunner.Run("umount", [disk], TimeSpan.FromSeconds(30));
            }

            mount.Unmount().EnsureSuccess("restorefs umount");
        }

        // Unmounting detached the device: no block device is left pointing at a dead server.
        var name = Path.GetFileName(device);
        Assert.True(MountTable.WaitUntil(() => !File.Exists($"/sys/block/{name}/loop/backing_file") && !IsConnectedNbd(name),
            TimeSpan.FromSeconds(10)), $"{device} is still attached");
    }

    [Fact]
    public void Nbd_companion_serves_the_image_to_qemu_img_and_reports_zero_chunks_as_holes()
    {
        using var mount = CliMount.Start(backup.Store, work.Combine("mnt-nbd"), "--no-vm");
        var uri = File.ReadAllText(Path.Combine(BackupFixture.SnapshotDir(mount.MountPoint, "vm/100"), "drive-scsi1.img.nbd")).Trim();
        Assert.StartsWith("nbd+unix:///", uri);
        ProcessRunner.Run("qemu-img", ["compare", "-f", "raw", "-F", "raw", uri, backup.DataImage], TimeSpan.FromMinutes(2))
            .EnsureSuccess("qemu-img compare");
        var map = ProcessRunner.Run("nbdinfo", ["--map", uri], TimeSpan.FromMinutes(1)).EnsureSuccess("nbdinfo --map");
        // chunk 1 (4 MiB at 4 MiB) is all zero: a hole + zero extent.
        Assert.Matches(@"(?m)^\s*4194304\s+4194304\s+3\s", map.StdOut);
    }

    private static bool IsConnectedNbd(string name) =>
        name.StartsWith("nbd", StringComparison.Ordinal) && File.Exists($"/sys/block/{name}/pid");

    public void Dispose() => work.Dispose();
}

/// <summary>An ordinary user mounts through fusermount3 (the user is made by .ci/run, or here when missing).</summary>
[Collection(BackupCollection.Name)]
public sealed class UnprivilegedMountTests(BackupFixture backup) : IDisposable
{
    private const string User = "restorefs-test";
    private readonly TempDirectory work = new("restorefs-user");

    [Fact]
    public void A_non_root_user_mounts_through_fusermount3_and_reads_the_image()
    {
        if (ProcessRunner.Run("id", [User]).ExitCode != 0)
        {
            ProcessRunner.Run("useradd", ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", User]).EnsureSuccess("useradd");
        }

        var mountPoint = work.Combine("mnt");
        Directory.CreateDirectory(mountPoint);
        ProcessRunner.Run("chown", [User, mountPoint]).EnsureSuccess("chown");

        // Debian's udev rule makes /dev/fuse 0666; machines without udev (containers, CI) may have 0600.
        ProcessRunner.Run("chmod", ["0666", "/dev/fuse"]).EnsureSuccess("chmod /dev/fuse");
        ProcessRunner.Run("chmod", ["755", work.Path]).EnsureSuccess("chmod");
        var env = new Dictionary<string, string> { ["HOME"] = work.Path, ["DOTNET_CLI_HOME"] = work.Path };
        try
        {
            ProcessRunner.Run("runuser", ["-u", User, "--", RepoPaths.Cli, "mount", backup.Store, mountPoint, "--no-vm"],
                TimeSpan.FromSeconds(60), environment: env).EnsureSuccess("restorefs mount as " + User);
            Assert.Contains(File.ReadLines("/proc/self/mountinfo"), l => l.Contains(mountPoint, StringComparison.Ordinal) && l.Contains("fuse", StringComparison.Ordinal));
            var image = Path.Combine(BackupFixture.SnapshotDir(mountPoint, "vm/100"), "drive-scsi1.img");
            var sha = ProcessRunner.Run("runuser", ["-u", User, "--", "sha256sum", image], TimeSpan.FromMinutes(1), environment: env)
                .EnsureSuccess("sha256sum as " + User);
            Assert.StartsWith(BackupFixture.Sha256(backup.DataImage), sha.StdOut);
            ProcessRunner.Run("runuser", ["-u", User, "--", RepoPaths.Cli, "umount", mountPoint], TimeSpan.FromSeconds(60), environment: env)
                .EnsureSuccess("restorefs umount as " + User);
            Assert.False(MountTable.IsMounted(mountPoint));
        }
        finally
        {
            MountTable.LazyUnmount(mountPoint);
        }
    }

    public void Dispose() => work.Dispose();
}
