using System.Diagnostics;
using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>The mount as users meet it: real kernel FUSE mount through the CLI, real ls/stat/find/cp/rsync.</summary>
[Collection(BackupCollection.Name)]
public sealed class MountTests(BackupFixture backup) : IDisposable
{
    private readonly TempDirectory work = new("restorefs-mnt");

    private CliMount Mount(params string[] extra) => CliMount.Start(backup.Store, work.Combine("mnt"), ["--no-vm", .. extra]);

    [Fact]
    public void Ls_stat_and_find_show_the_snapshot_tree()
    {
        using var mount = Mount();
        var ls = ProcessRunner.Run("ls", ["-R", mount.Snapshots]).EnsureSuccess("ls -R");
        Assert.Contains("drive-scsi0.img", ls.StdOut);
        Assert.Contains("qemu-server.conf", ls.StdOut);
        Assert.Contains("index.json", ls.StdOut);
        Assert.Contains(BackupFixture.Time, ls.StdOut);

        var snap = BackupFixture.SnapshotDir(mount.MountPoint, "vm/100");
        var stat = ProcessRunner.Run("stat", ["-c", "%s %Y %A", Path.Combine(snap, "drive-scsi1.img")]).EnsureSuccess("stat");
        var fields = stat.StdOut.Trim().Split(' ');
        Assert.Equal(backup.DataBytes.Length.ToString(), fields[0]);
        Assert.Equal(DateTimeOffset.Parse(BackupFixture.Time).ToUnixTimeSeconds().ToString(), fields[1]);
        Assert.Equal("-r--r--r--", fields[2]);

        var find = ProcessRunner.Run("find", [mount.Snapshots, "-name", "*.img"]).EnsureSuccess("find");
        var images = find.StdOut.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(Path.GetFileName).Order().ToList();
        Assert.Equal(["drive-scsi0.img", "drive-scsi0.img", "drive-scsi1.img"], images);
    }

    [Fact]
    public void Cp_and_rsync_of_images_and_config_are_byte_exact()
    {
        using var mount = Mount();
        var snap = BackupFixture.SnapshotDir(mount.MountPoint, "vm/100");
        var copy = work.Combine("copy.img");
        ProcessRunner.Run("cp", [Path.Combine(snap, "drive-scsi0.img"), copy], TimeSpan.FromMinutes(2)).EnsureSuccess("cp");
        Assert.Equal(BackupFixture.Sha256(backup.DiskImage), BackupFixture.Sha256(copy));

        var target = work.Combine("rsynced");
        Directory.CreateDirectory(target);
        ProcessRunner.Run("rsync", ["-a", Path.Combine(snap, "drive-scsi1.img"), Path.Combine(snap, "qemu-server.conf"), target + "/"],
            TimeSpan.FromMinutes(2)).EnsureSuccess("rsync");
        Assert.Equal(BackupFixture.Sha256(backup.DataImage), BackupFixture.Sha256(Path.Combine(target, "drive-scsi1.img")));
        Assert.Equal(File.ReadAllText(backup.ConfigFile), File.ReadAllText(Path.Combine(target, "qemu-server.conf")));
        Assert.Contains("\"backup-id\"", File.ReadAllText(Path.Combine(snap, "index.json")));
    }

    [Fact]
    public void Eight_threads_of_random_reads_are_byte_exact()
    {
        using var mount = Mount();
        var path = Path.Combine(BackupFixture.SnapshotDir(mount.MountPoint, "vm/100"), "drive-scsi1.img");
        var source = backup.DataBytes;
        var failures = 0;
        Parallel.For(0, 8, new ParallelOptions { MaxDegreeOfParallelism = 8 }, t =>
        {
            var random = new Random(1000 + t);
            using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess);
            for (var i = 0; i < 150; i++)
            {
                var offset = random.NextInt64(source.Length);
                var length = random.Next(1, 3 * 1024 * 1024);
                var buffer = new byte[length];
                var total = 0;
                while (total < length)
                {
                    var n = RandomAccess.Read(handle, buffer.AsSpan(total), offset + total);
                    if (n == 0)
                    {
                        break;
                    }

                    total += n;
                }

                var expected = (int)Math.Min(length, source.Length - offset);
                if (total != expected || !buffer.AsSpan(0, total).SequenceEqual(source.AsSpan((int)offset, expected)))
                {
                    Interlocked.Increment(ref failures);
                }
            }
        });
        Assert.Equal(0, failures);
    }

    [Fact]
    public void Encrypted_snapshot_is_listed_without_key_but_refuses_reads_and_reads_with_key()
    {
        using (var mount = Mount())
        {
            var image = Path.Combine(BackupFixture.SnapshotDir(mount.MountPoint, "vm/200"), "drive-scsi0.img");
            Assert.True(File.Exists(image));
            var cat = ProcessRunner.Run("cat", [image]);
            Assert.NotEqual(0, cat.ExitCode);
            Assert.Contains("Permission denied", cat.StdErr);
        }

        using var keyed = CliMount.Start(backup.Store, work.Combine("mnt-key"), "--no-vm", "--keyfile", backup.KeyFile);
        var copy = work.Combine("decrypted.img");
        File.Copy(Path.Combine(BackupFixture.SnapshotDir(keyed.MountPoint, "vm/200"), "drive-scsi0.img"), copy);
        Assert.Equal(BackupFixture.Sha256(backup.DataImage), BackupFixture.Sha256(copy));
    }

    [Fact]
    public void Two_mounts_at_once_and_unmount_ends_both_cleanly()
    {
        using var first = Mount();
        using var second = CliMount.Start(backup.Store, work.Combine("mnt2"), "--no-vm");
        var a = Path.Combine(BackupFixture.SnapshotDir(first.MountPoint, "vm/100"), "drive-scsi1.img");
        var b = Path.Combine(BackupFixture.SnapshotDir(second.MountPoint, "vm/100"), "drive-scsi1.img");
        Assert.Equal(BackupFixture.Sha256(a), BackupFixture.Sha256(b));
        first.Unmount().EnsureSuccess("restorefs umount");
        Assert.False(MountTable.IsMounted(first.MountPoint));
        Assert.True(MountTable.IsMounted(second.MountPoint));
        Assert.Equal(BackupFixture.Sha256(backup.DataImage), BackupFixture.Sha256(b));
    }

    [Fact]
    public void Unmount_while_a_reader_is_active_does_not_hang()
    {
        using var mount = Mount();
        var image = Path.Combine(BackupFixture.SnapshotDir(mount.MountPoint, "vm/100"), "drive-scsi0.img");
        using var reader = Process.Start(new ProcessStartInfo("bash", ["-c", $"while true; do cat '{image}' > /dev/null || exit 0; done"])
        {
            UseShellExecute = false,
        })!;
        Thread.Sleep(500);
        var stopwatch = Stopwatch.StartNew();
        mount.Unmount().EnsureSuccess("restorefs umount");
        Assert.True(stopwatch.Elapsed < TimeSpan.FromSeconds(30), $"umount took {stopwatch.Elapsed}");
        Assert.True(reader.WaitForExit(TimeSpan.FromSeconds(20)), "the reader hung after unmount");
        Assert.False(MountTable.IsMounted(mount.MountPoint));
    }

    [Fact]
    public void A_killed_driver_leaves_a_stale_mount_that_the_next_mount_clears()
    {
        var mountPoint = work.Combine("mnt-kill");
        using (CliMount.Start(backup.Store, mountPoint, "--no-vm"))
        {
            var pid = FindServingPid(mountPoint);
            Process.GetProcessById(pid).Kill();
            MountTable.WaitUntil(() => !Directory.Exists($"/proc/{pid}"), TimeSpan.FromSeconds(10));
            var ls = ProcessRunner.Run("ls", [mountPoint]);
            Assert.Contains("not connected", ls.StdErr);

            using var again = CliMount.Start(backup.Store, mountPoint, "--no-vm");
            var image = Path.Combine(BackupFixture.SnapshotDir(mountPoint, "vm/100"), "drive-scsi1.img");
            Assert.Equal(BackupFixture.Sha256(backup.DataImage), BackupFixture.Sha256(image));
        }
    }

    [Fact]
    public void Reading_never_writes_to_the_datastore()
    {
        var before = BackupFixture.TreeHash(backup.Store);
        using (var mount = Mount())
        {
            ProcessRunner.Run("bash", ["-c", $"cat {mount.Snapshots}/vm/*/*/*.img {mount.Snapshots}/vm/100/*/qemu-server.conf > /dev/null; ls -lR {mount.Snapshots} > /dev/null"],
                TimeSpan.FromMinutes(2));
        }

        Assert.Equal(before, BackupFixture.TreeHash(backup.Store));
    }

    internal static int FindServingPid(string mountPoint)
    {
        var full = Path.GetFullPath(mountPoint);
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out var pid))
            {
                continue;
            }

            try
            {
                var cmdline = File.ReadAllText(Path.Combine(dir, "cmdline")).Split('\0');
                if (cmdline.Contains("mount") && cmdline.Contains("--foreground") && cmdline.Contains(full))
                {
                    return pid;
                }
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }
        }

        throw new InvalidOperationException($"no restorefs process serves {full}");
    }

    public void Dispose() => work.Dispose();
}
