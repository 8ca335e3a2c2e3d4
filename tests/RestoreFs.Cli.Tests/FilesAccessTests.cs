using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// files/ on an --allow-other mount, tried by a local user whose uid equals a guest owner's: guest metadata is shown
/// exactly and decides nothing. Both a 0000 file and a 0600 file owned by "their" guest uid read the same way
/// (readable: the mount lets others in), and only the owner could have started the VM. Real VM, real FUSE mount.
/// </summary>
public sealed class FilesAccessTests : IDisposable
{
    private const string User = "restorefs-test";
    private readonly TempDirectory work = new("restorefs-filesacc");

    [Fact]
    public void Guest_modes_and_owners_show_exactly_and_a_matching_uid_gains_nothing()
    {
        Requires.Root();
        Requires.Tool("qemu-system-x86_64");
        Requires.Tool("mkfs.ext4");
        if (ProcessRunner.Run("id", [User]).ExitCode != 0)
        {
            ProcessRunner.Run("useradd", ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", User]).EnsureSuccess("useradd");
        }

        var uid = ProcessRunner.Run("id", ["-u", User]).EnsureSuccess("id").StdOut.Trim();
        var tree = work.Combine("tree");
        Directory.CreateDirectory(Path.Combine(tree, "home"));
        File.WriteAllText(Path.Combine(tree, "home", "id_rsa"), "PRIVATE KEY of the guest user\n");
        File.WriteAllText(Path.Combine(tree, "shadow"), "root:$6$guest-hash:19000::::::\n");
        File.WriteAllText(Path.Combine(tree, "nobody-may"), "mode 0000\n");
        ProcessRunner.Run("chown", [$"{uid}:{uid}", Path.Combine(tree, "home", "id_rsa")]).EnsureSuccess("chown");
        ProcessRunner.Run("chmod", ["0600", Path.Combine(tree, "home", "id_rsa")]).EnsureSuccess("chmod");
        ProcessRunner.Run("chown", ["0:42", Path.Combine(tree, "shadow")]).EnsureSuccess("chown");
        ProcessRunner.Run("chmod", ["0640", Path.Combine(tree, "shadow")]).EnsureSuccess("chmod");
        ProcessRunner.Run("chmod", ["0000", Path.Combine(tree, "nobody-may")]).EnsureSuccess("chmod");
        var image = work.Combine("disk.img");
        ProcessRunner.Run("truncate", ["-s", "64M", image]).EnsureSuccess("truncate");
        ProcessRunner.Run("mkfs.ext4", ["-q", "-F", "-d", tree, image], TimeSpan.FromMinutes(2)).EnsureSuccess("mkfs.ext4 -d");

        var store = work.Combine("store");
        var runtime = work.Combine("run");
        Directory.CreateDirectory(runtime);
        var env = new Dictionary<string, string> { ["XDG_RUNTIME_DIR"] = runtime };
        ProcessRunner.Run(RepoPaths.Cli, ["backup", "--store", store, "--group", "vm/300", "--time", "2026-02-01T00:00:00Z", $"drive-scsi0={image}"],
            TimeSpan.FromMinutes(3), environment: env).EnsureSuccess("backup");
        var mountPoint = work.Combine("mnt");
        Directory.CreateDirectory(mountPoint);
        ProcessRunner.Run("chmod", ["755", work.Path]).EnsureSuccess("chmod");
        ProcessRunner.Run(RepoPaths.Cli, ["mount", store, mountPoint, "--allow-other"], TimeSpan.FromSeconds(60), environment: env)
            .EnsureSuccess("mount --allow-other");
        try
        {
            var raw = Path.Combine(mountPoint, "snapshots", "vm", "300", "2026-02-01T00:00:00Z", "files", "drive-scsi0.img", "raw");

            // Before the owner looked inside, the user cannot start the VM.
            var early = AsUser("ls", raw);
            Assert.NotEqual(0, early.ExitCode);
            Assert.Contains("Permission denied", early.StdErr);

            // The owner enters the disk (starts the VM); then the user sees the guest's metadata exactly.
            ProcessRunner.Run("ls", ["-la", raw], TimeSpan.FromMinutes(5)).EnsureSuccess("ls as the owner");
            var stat = AsUser("stat", "-c", "%n %a %u %g", Path.Combine(raw, "home", "id_rsa"), Path.Combine(raw, "shadow"), Path.Combine(raw, "nobody-may"))
                .EnsureSuccess("stat as " + User).StdOut.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l[(l.LastIndexOf('/') + 1)..]).ToList();
            Assert.Equal([$"id_rsa 600 {uid} {uid}", "shadow 640 0 42", "nobody-may 0 0 0"], stat);

            // Readable by the user on an --allow-other mount — all alike, whatever the numbers say.
            Assert.Equal("PRIVATE KEY of the guest user\n", AsUser("cat", Path.Combine(raw, "home", "id_rsa")).EnsureSuccess("cat id_rsa").StdOut);
            Assert.Equal("mode 0000\n", AsUser("cat", Path.Combine(raw, "nobody-may")).EnsureSuccess("cat 0000 file").StdOut);
            Assert.Equal("root:$6$guest-hash:19000::::::\n", AsUser("cat", Path.Combine(raw, "shadow")).EnsureSuccess("cat shadow").StdOut);

            // Read-only for everybody.
            Assert.NotEqual(0, AsUser("sh", "-c", $"echo x >> '{Path.Combine(raw, "home", "id_rsa")}'").ExitCode);

            // cp -a as root keeps the exact modes and owners.
            var copy = work.Combine("copy");
            ProcessRunner.Run("cp", ["-a", raw, copy], TimeSpan.FromMinutes(3)).EnsureSuccess("cp -a");
            Assert.Equal(UnixFileMode.None, File.GetUnixFileMode(Path.Combine(copy, "nobody-may")));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(copy, "home", "id_rsa")));
        }
        finally
        {
            ProcessRunner.Run(RepoPaths.Cli, ["umount", mountPoint], TimeSpan.FromSeconds(90), environment: env);
            MountTable.LazyUnmount(mountPoint);
        }
    }

    private static ProcessResult AsUser(params string[] command) =>
        ProcessRunner.Run("setpriv", ["--reuid", User, "--regid", User, "--clear-groups", "--", .. command], TimeSpan.FromMinutes(2));

    public void Dispose() => work.Dispose();
}
