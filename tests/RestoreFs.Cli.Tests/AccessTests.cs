using System.Diagnostics;
using System.Text;
using RestoreFs.Cli.Hosting;
using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// The access model on a shared host, tried as a local user would: a root mount is private unless --allow-other,
/// looking never attaches or starts anything, only the owner causes side effects, secrets stay out of /proc, and a
/// stale pid file never makes umount signal a stranger.
/// </summary>
[Collection(BackupCollection.Name)]
public sealed class AccessTests(BackupFixture backup) : IDisposable
{
    private const string User = "restorefs-test";
    private readonly TempDirectory work = new("restorefs-access");

    private static void EnsureUser()
    {
        Requires.Root();
        if (ProcessRunner.Run("id", [User]).ExitCode != 0)
        {
            ProcessRunner.Run("useradd", ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", User]).EnsureSuccess("useradd");
        }
    }

    /// <summary>Runs a command as the unprivileged test user (real uid, gid, no supplementary groups).</summary>
    private static ProcessResult AsUser(params string[] command) =>
        ProcessRunner.Run("setpriv", ["--reuid", User, "--regid", User, "--clear-groups", "--", .. command], TimeSpan.FromMinutes(1));

    private CliMount Mount(string name, params string[] extra)
    {
        ProcessRunner.Run("chmod", ["755", work.Path]).EnsureSuccess("chmod");
        return CliMount.Start(backup.Store, work.Combine(name), extra);
    }

    private static int DaemonPid(string mountPoint) =>
        PidFile.Parse(PidFile.ReadText(RuntimePaths.MountPidFile(mountPoint)))?.Pid ?? throw new InvalidOperationException("no pid file");

    /// <summary>Loop devices over files below the mount point, and whether the mount's NBD server has started.</summary>
    private static (IReadOnlyList<string> Loops, bool NbdStarted) SideEffects(string mountPoint) =>
        (StaleMount.LoopDevicesUnder(Path.GetFullPath(mountPoint)),
            File.Exists(Path.Combine(RuntimePaths.Directory, $"nbd-{DaemonPid(mountPoint)}.sock")));

    [Fact]
    public void A_root_mount_is_private_to_root_by_default()
    {
        EnsureUser();
        using var mount = Mount("mnt-private", "--no-vm");
        var snap = BackupFixture.SnapshotDir(mount.MountPoint, "vm/100");

        var ls = AsUser("ls", mount.Snapshots);
        Assert.NotEqual(0, ls.ExitCode);
        Assert.Contains("Permission denied", ls.StdErr);
        Assert.NotEqual(0, AsUser("head", "-c", "16", Path.Combine(snap, "drive-scsi1.img")).ExitCode);
        Assert.NotEqual(0, AsUser("cat", Path.Combine(snap, "qemu-server.conf")).ExitCode);
        Assert.NotEqual(0, AsUser("ls", Path.Combine(snap, "files")).ExitCode);

        // The owner reads everything.
        Assert.Equal(File.ReadAllText(backup.ConfigFile), File.ReadAllText(Path.Combine(snap, "qemu-server.conf")));
    }

    [Fact]
    public void With_allow_other_a_user_reads_images_but_cannot_attach_or_start_a_vm()
    {
        EnsureUser();
        using var mount = Mount("mnt-other", "--allow-other");
        var snap = BackupFixture.SnapshotDir(mount.MountPoint, "vm/100");
        var sha = AsUser("sha256sum", Path.Combine(snap, "drive-scsi1.img")).EnsureSuccess("sha256sum as " + User);
        Assert.StartsWith(BackupFixture.Sha256(backup.DataImage), sha.StdOut);
        Assert.Equal(File.ReadAllText(backup.ConfigFile), AsUser("cat", Path.Combine(snap, "qemu-server.conf")).EnsureSuccess("cat").StdOut);

        // Following the companion as the user: refused, nothing attached.
        var follow = AsUser("readlink", "-f", Path.Combine(snap, "drive-scsi1.img.dev"));
        Assert.DoesNotMatch("^/dev/(loop|nbd)", follow.StdOut.Trim());
        Assert.NotEqual(0, AsUser("head", "-c", "1", Path.Combine(snap, "drive-scsi1.img.dev")).ExitCode);
        var disk = Path.Combine(snap, "files", "drive-scsi0.img");
        if (Directory.Exists(Path.Combine(snap, "files")))
        {
            var files = AsUser("ls", disk);
            Assert.NotEqual(0, files.ExitCode);
            Assert.Contains("Permission denied", files.StdErr);
        }

        var (loops, nbd) = SideEffects(mount.MountPoint);
        Assert.Empty(loops);
        Assert.False(nbd, "a user without privilege started the NBD server");
        Assert.DoesNotContain(Process.GetProcesses(), p => IsQemuOf(p, mount.MountPoint));
    }

    [Fact]
    public void Looking_at_a_snapshot_attaches_nothing_and_following_the_companion_attaches()
    {
        Requires.Root();
        using var mount = Mount("mnt-look");
        var snap = BackupFixture.SnapshotDir(mount.MountPoint, "vm/100");
        ProcessRunner.Run("ls", ["-l", snap]).EnsureSuccess("ls -l");
        ProcessRunner.Run("ls", ["-lR", "--ignore=files", mount.Snapshots]).EnsureSuccess("ls -lR");
        ProcessRunner.Run("ls", ["-la", mount.MountPoint]).EnsureSuccess("ls -la");
        ProcessRunner.Run("stat", [Path.Combine(snap, "drive-scsi0.img.dev"), Path.Combine(snap, "drive-scsi0.img.nbd")]).EnsureSuccess("stat");
        ProcessRunner.Run("readlink", [Path.Combine(snap, "drive-scsi0.img.dev")]).EnsureSuccess("readlink");
        // Walkers see files/ and its disks, but stop before a disk's contents: entering those is what starts a VM.
        ProcessRunner.Run("find", [mount.MountPoint, "-maxdepth", "6"]).EnsureSuccess("find");
        ProcessRunner.Run("find", [snap, "-maxdepth", "2", "-ls"]).EnsureSuccess("find -ls");
        ProcessRunner.Run("rsync", ["-a", "--dry-run", "--exclude=/files/*/", snap + "/", work.Combine("dry") + "/"], TimeSpan.FromMinutes(2))
            .EnsureSuccess("rsync --dry-run");

        var (loops, nbd) = SideEffects(mount.MountPoint);
        Assert.Empty(loops);
        Assert.False(nbd, "looking started the NBD server");
        Assert.DoesNotContain(Process.GetProcesses(), p => IsQemuOf(p, mount.MountPoint));

        // One level of readlink shows where the link leads, into the hidden .dev tree (never listed).
        var target = new FileInfo(Path.Combine(snap, "drive-scsi0.img.dev")).LinkTarget!;
        Assert.Equal($"../../../../.dev/vm/100/{BackupFixture.Time}/drive-scsi0.img", target);
        Assert.DoesNotContain(".dev", Directory.GetFileSystemEntries(mount.MountPoint).Select(Path.GetFileName));

        var device = ProcessRunner.Run("readlink", ["-f", Path.Combine(snap, "drive-scsi0.img.dev")]).EnsureSuccess("readlink -f").StdOut.Trim();
        Assert.Matches("^/dev/(nbd|loop)[0-9]+$", device);
        if (device.Contains("loop", StringComparison.Ordinal))
        {
            Assert.Contains(device, SideEffects(mount.MountPoint).Loops);
        }
    }

    [Fact]
    public void The_passphrase_reaches_no_environ_or_command_line()
    {
        Requires.Root();
        const string secret = "Tr0ub4dor-and-3-horses-for-restorefs";
        var pass = work.Combine("pass");
        File.WriteAllText(pass, secret + "\n");
        var key = work.Combine("scrypt-key.json");
        BackupFixture.Cli("key", "create", "--passphrase-file", pass, key).EnsureSuccess("key create");
        var environment = new Dictionary<string, string> { ["PBS_ENCRYPTION_PASSWORD"] = secret };

        // Background mode, passphrase from the environment.
        var mountPoint = work.Combine("mnt-secret");
        Directory.CreateDirectory(mountPoint);
        ProcessRunner.Run(RepoPaths.Cli, ["mount", backup.Store, mountPoint, "--no-vm", "--keyfile", key], TimeSpan.FromSeconds(60),
            environment: environment).EnsureSuccess("mount with an environment passphrase");
        try
        {
            var pid = DaemonPid(mountPoint);
            AssertNoSecret(pid, secret);
            var snap = BackupFixture.SnapshotDir(mountPoint, "vm/100");
            ProcessRunner.Run("readlink", ["-f", Path.Combine(snap, "drive-scsi0.img.dev")]).EnsureSuccess("attach");
            foreach (var p in Directory.EnumerateDirectories("/proc").Select(Path.GetFileName).Where(n => n!.All(char.IsAsciiDigit)))
            {
                if (int.Parse(p!) != Environment.ProcessId)
                {
                    AssertNoSecret(int.Parse(p!), secret);
                }
            }
        }
        finally
        {
            ProcessRunner.Run(RepoPaths.Cli, ["umount", mountPoint], TimeSpan.FromSeconds(60));
            MountTable.LazyUnmount(mountPoint);
        }

        // Background mode, passphrase typed at the prompt on a terminal (script(1) gives the CLI a pty).
        var typed = ProcessRunner.Run("script", ["-q", "-e", "-c", $"'{RepoPaths.Cli}' mount '{backup.Store}' '{mountPoint}' --no-vm --keyfile '{key}'", "/dev/null"],
            TimeSpan.FromSeconds(90), stdin: Encoding.UTF8.GetBytes(secret + "\r"));
        try
        {
            Assert.True(MountTable.IsMounted(mountPoint), $"the prompted mount did not come up: {typed.StdOut} {typed.StdErr}");
            foreach (var p in Directory.EnumerateDirectories("/proc").Select(Path.GetFileName).Where(n => n!.All(char.IsAsciiDigit)))
            {
                if (int.Parse(p!) != Environment.ProcessId)
                {
                    AssertNoSecret(int.Parse(p!), secret);
                }
            }
        }
        finally
        {
            ProcessRunner.Run(RepoPaths.Cli, ["umount", mountPoint], TimeSpan.FromSeconds(60));
            MountTable.LazyUnmount(mountPoint);
        }

        // Foreground mode: the variable is in the process's own initial environment, and is scrubbed there.
        var psi = new ProcessStartInfo(RepoPaths.Cli, ["mount", backup.Store, mountPoint, "--no-vm", "--foreground", "--keyfile", key])
        {
            UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true,
        };
        psi.Environment["PBS_ENCRYPTION_PASSWORD"] = secret;
        using var foreground = Process.Start(psi)!;
        try
        {
            Assert.True(MountTable.WaitUntil(() => MountTable.IsMounted(mountPoint), TimeSpan.FromSeconds(60)), "the foreground mount did not come up");
            AssertNoSecret(foreground.Id, secret);
        }
        finally
        {
            ProcessRunner.Run(RepoPaths.Cli, ["umount", mountPoint], TimeSpan.FromSeconds(60));
            MountTable.LazyUnmount(mountPoint);
            if (!foreground.WaitForExit(30_000))
            {
                foreground.Kill();
            }
        }
    }

    private static void AssertNoSecret(int pid, string secret)
    {
        foreach (var file in new[] { "environ", "cmdline" })
        {
            byte[] data;
            try
            {
                data = File.ReadAllBytes($"/proc/{pid}/{file}");
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                continue; // the process ended meanwhile
            }

            Assert.False(data.AsSpan().IndexOf(Encoding.UTF8.GetBytes(secret)) >= 0, $"the passphrase is in /proc/{pid}/{file}");
        }
    }

    [Fact]
    public void Umount_never_signals_the_stranger_a_stale_pid_file_names_and_cleans_up_after_a_killed_mount()
    {
        Requires.Root();
        var mountPoint = work.Combine("mnt-stale");
        Directory.CreateDirectory(mountPoint);
        var pidFile = RuntimePaths.MountPidFile(mountPoint);

        using var stranger = Process.Start(new ProcessStartInfo("sleep", ["120"]) { UseShellExecute = false })!;
        try
        {
            foreach (var content in new[] { $"{stranger.Id}\n", $"{stranger.Id} 12345\n" })
            {
                File.WriteAllText(pidFile, content);
                ProcessRunner.Run(RepoPaths.Cli, ["umount", mountPoint], TimeSpan.FromSeconds(60));
                Thread.Sleep(200);
                Assert.False(stranger.HasExited, $"umount signalled pid {stranger.Id} named by a stale pid file ({content.Trim()})");
            }
        }
        finally
        {
            stranger.Kill();
        }

        // A mount killed with -9: the next umount detaches its loop device and its stale mount.
        using (var mount = CliMount.Start(backup.Store, mountPoint, "--no-vm"))
        {
            var snap = BackupFixture.SnapshotDir(mountPoint, "vm/100");
            var device = ProcessRunner.Run("readlink", ["-f", Path.Combine(snap, "drive-scsi1.img.dev")]).EnsureSuccess("attach").StdOut.Trim();
            var pid = DaemonPid(mountPoint);
            ProcessRunner.Run("kill", ["-9", pid.ToString()]).EnsureSuccess("kill -9");
            Assert.True(MountTable.WaitUntil(() => !Directory.Exists($"/proc/{pid}"), TimeSpan.FromSeconds(10)));
            ProcessRunner.Run(RepoPaths.Cli, ["umount", mountPoint], TimeSpan.FromSeconds(60)).EnsureSuccess("umount after kill -9");
            Assert.False(MountTable.IsMounted(mountPoint), "the stale mount is still there");
            if (device.Contains("loop", StringComparison.Ordinal))
            {
                Assert.False(File.Exists($"/sys/block/{Path.GetFileName(device)}/loop/backing_file"), $"{device} is still attached");
            }
        }
    }

    [Fact]
    public void Key_create_never_follows_a_symlink_nor_overwrites_and_is_private_from_the_first_byte()
    {
        var key = work.Combine("k.json");
        BackupFixture.Cli("key", "create", "--kdf", "none", key).EnsureSuccess("key create");
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(key));
        var before = File.ReadAllText(key);
        Assert.NotEqual(0, ProcessRunner.Run(RepoPaths.Cli, ["key", "create", "--kdf", "none", key]).ExitCode);
        Assert.Equal(before, File.ReadAllText(key));

        var victim = work.Combine("victim");
        File.WriteAllText(victim, "keep me");
        var link = work.Combine("link.json");
        File.CreateSymbolicLink(link, victim);
        Assert.NotEqual(0, ProcessRunner.Run(RepoPaths.Cli, ["key", "create", "--kdf", "none", link]).ExitCode);
        Assert.Equal("keep me", File.ReadAllText(victim));

        BackupFixture.Cli("key", "create", "--kdf", "none", "--force", key).EnsureSuccess("key create --force");
        Assert.NotEqual(before, File.ReadAllText(key));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(key));
    }

    [Fact]
    public void A_run_time_directory_that_is_a_symlink_is_refused_with_a_clear_error()
    {
        var runtime = work.Combine("xdg");
        Directory.CreateDirectory(runtime);
        Directory.CreateDirectory(work.Combine("elsewhere"));
        File.CreateSymbolicLink(Path.Combine(runtime, "restorefs"), work.Combine("elsewhere"));
        var result = ProcessRunner.Run(RepoPaths.Cli, ["vm", "status"], TimeSpan.FromSeconds(60),
            environment: new Dictionary<string, string> { ["XDG_RUNTIME_DIR"] = runtime });
        Assert.NotEqual(0, result.ExitCode);
        Assert.Contains("not a directory", result.StdErr);
    }

    private static bool IsQemuOf(Process p, string mountPoint)
    {
        try
        {
            var cmdline = File.ReadAllText($"/proc/{p.Id}/cmdline");
            return cmdline.Contains("qemu-system", StringComparison.Ordinal) &&
                   cmdline.Contains($"nbd-{DaemonPid(mountPoint)}.sock", StringComparison.Ordinal);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidOperationException)
        {
            return false;
        }
    }

    public void Dispose() => work.Dispose();
}
