using System.Text.Json;
using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// The test disks (GPT: ext4, vfat, LVM/xfs; a bare ext4) backed up with restorefs backup, mounted with the CLI, and
/// read through files/ — real FUSE mount, real restore VM (QEMU, TCG here), real NBD. The CLI runs with its own
/// runtime directory so its VM state map is this fixture's alone.
/// </summary>
public sealed class FilesFixture : IDisposable
{
    public const string Time = "2026-01-01T00:00:00Z";

    public FilesFixture()
    {
        Requires.Root();
        Requires.Tool("qemu-system-x86_64");
        Directory.CreateDirectory(Runtime);
        ProcessRunner.Run("bash", [RepoPaths.Script("make-test-disks.sh"), Dir.Combine("disks")], TimeSpan.FromMinutes(3)).EnsureSuccess("make-test-disks.sh");
        Cli(TimeSpan.FromMinutes(3), "backup", "--store", Store, "--group", "vm/100", "--time", Time,
            $"drive-scsi0={Dir.Combine("disks", "multi.img")}", $"drive-scsi1={Dir.Combine("disks", "bare.img")}");
        Cli(TimeSpan.FromMinutes(3), "backup", "--store", Store, "--group", "vm/101", "--time", Time, $"drive-scsi0={Dir.Combine("disks", "bare.img")}");
        Directory.CreateDirectory(MountPoint);
        Cli(TimeSpan.FromSeconds(60), "mount", Store, MountPoint);
    }

    public TempDirectory Dir { get; } = new("restorefs-files");

    public string Store => Dir.Combine("store");

    public string MountPoint => Dir.Combine("mnt");

    public string Runtime => Dir.Combine("run");

    public string Expected => Dir.Combine("disks", "expected");

    public string Files(string group) => Path.Combine(MountPoint, "snapshots", group, Time, "files");

    public Dictionary<string, string> Env => new() { ["XDG_RUNTIME_DIR"] = Runtime };

    public ProcessResult Cli(TimeSpan timeout, params string[] args) =>
        ProcessRunner.Run(RepoPaths.Cli, args, timeout, environment: Env).EnsureSuccess("restorefs " + string.Join(' ', args));

    public List<(string Name, int Pid)> Vms()
    {
        using var doc = JsonDocument.Parse(Cli(TimeSpan.FromSeconds(60), "vm", "status", "--json").StdOut);
        return doc.RootElement.EnumerateArray().Select(e => (e.GetProperty("snapshot").GetString()!, e.GetProperty("pid").GetInt32())).ToList();
    }

    public static bool Alive(int pid) => File.Exists($"/proc/{pid}/cmdline") && File.ReadAllText($"/proc/{pid}/cmdline").Contains("restorefs-vm");

    public void Dispose()
    {
        var pids = File.Exists(Path.Combine(Runtime, "restorefs", "restore-vms.json")) ? Vms().Select(v => v.Pid).ToList() : [];
        if (MountTable.IsMounted(MountPoint))
        {
            ProcessRunner.Run(RepoPaths.Cli, ["umount", MountPoint], TimeSpan.FromSeconds(60), environment: Env);
            MountTable.LazyUnmount(MountPoint);
        }

        foreach (var pid in pids.Where(Alive))
        {
            System.Diagnostics.Process.GetProcessById(pid).Kill();
        }

        Dir.Dispose();
    }
}

public sealed class FilesTests(FilesFixture f) : IClassFixture<FilesFixture>
{
    private static ProcessResult Run(string tool, params string[] args) =>
        ProcessRunner.Run(Requires.Tool(tool), args, TimeSpan.FromMinutes(3)).EnsureSuccess(tool + " " + string.Join(' ', args));

    private string Disk0 => Path.Combine(f.Files("vm/100"), "drive-scsi0.img");

    [Fact]
    public void Rsync_of_each_file_system_equals_the_source_and_find_counts_match()
    {
        var ext4 = f.Dir.Combine("out-ext4");
        Run("rsync", "-a", "--exclude=lost+found", Path.Combine(Disk0, "part/1") + "/", ext4 + "/");
        // rsync itself compares: nothing to change (contents, modes, mtimes, symlinks, owners) means equal.
        // (The root's own mtime is the file system's, not the source directory's: not compared.)
        var changes = string.Join('\n', Run("rsync", "-ai", "--dry-run", "--checksum", "--delete", ext4 + "/", Path.Combine(f.Expected, "ext4") + "/").StdOut
            .Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.EndsWith(" ./", StringComparison.Ordinal)));
        Assert.True(changes.Length == 0, "differences:\n" + changes);
        var find = Run("find", Path.Combine(Disk0, "part/1"), "-not", "-path", "*lost+found*").StdOut.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length;
        var expected = Run("find", Path.Combine(f.Expected, "ext4")).StdOut.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length;
        Assert.Equal(expected, find);

        var xfs = f.Dir.Combine("out-xfs");
        Run("cp", "-a", Path.Combine(Disk0, "lvm/vgtest/data") + "/.", xfs);
        Assert.Equal("", string.Join('\n', Run("rsync", "-ai", "--dry-run", "--checksum", "--delete", xfs + "/", Path.Combine(f.Expected, "xfs") + "/").StdOut
            .Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.EndsWith(" ./", StringComparison.Ordinal))));

        // vfat keeps no owners or modes: compare contents.
        Run("diff", "-r", Path.Combine(Disk0, "part/2"), Path.Combine(f.Expected, "vfat"));
        Assert.Equal("a bare file system\n", File.ReadAllText(Path.Combine(f.Files("vm/100"), "drive-scsi1.img/raw/root/note.txt")));
        Assert.Equal("../../etc/hostname", new FileInfo(Path.Combine(Disk0, "part/1/home/admin/hostname-link")).LinkTarget);
        Assert.Contains("grüße", File.ReadAllText(Path.Combine(Disk0, "part/1/home/admin/Grüße.txt")));
        Run("grep", "-r", "-q", "small file 300", Path.Combine(Disk0, "part/1/srv"));
    }

    [Fact]
    public void The_vm_reports_where_its_boot_went_in_order()
    {
        // Any listing of files/ needs the VM; its status then carries the boot's steps on the guest's clock.
        Assert.NotEmpty(Directory.GetFileSystemEntries(Path.Combine(Disk0, "part/1")));
        using var doc = JsonDocument.Parse(f.Cli(TimeSpan.FromSeconds(60), "vm", "status", "--json").StdOut);
        var vm = doc.RootElement.EnumerateArray().Single(e => e.GetProperty("snapshot").GetString()!.Contains("vm/100", StringComparison.Ordinal));
        var boot = vm.GetProperty("boot");
        double Step(string name) => boot.GetProperty(name).GetDouble();
        var steps = new[] { "init", "modules", "daemon", "listening" }.Select(Step).ToArray();
        Assert.True(steps[0] > 0 && steps[0] < 600, $"/init at {steps[0]} s");
        for (var i = 1; i < steps.Length; i++)
        {
            Assert.True(steps[i] >= steps[i - 1], $"boot steps out of order: {string.Join(", ", steps)}");
        }

        Assert.True(Step("scanned") >= Step("daemon"), $"scan done at {Step("scanned")} s, before the daemon started at {Step("daemon")} s");
    }

    [Fact]
    public void A_killed_vm_is_restarted_between_two_reads_and_vm_stop_all_restarts_on_access()
    {
        // A mount of its own: nothing it lists is cached yet, so the read after the kill needs the VM.
        using var run = new TempDirectory("restorefs-files-run");
        var env = new Dictionary<string, string> { ["XDG_RUNTIME_DIR"] = run.Path };
        var mnt = f.Dir.Combine("mnt-kill");
        Directory.CreateDirectory(mnt);
        List<(string Name, int Pid)> Vms()
        {
            using var doc = JsonDocument.Parse(ProcessRunner.Run(RepoPaths.Cli, ["vm", "status", "--json"], TimeSpan.FromSeconds(60), environment: env)
                .EnsureSuccess("vm status").StdOut);
            return doc.RootElement.EnumerateArray().Select(e => (e.GetProperty("snapshot").GetString()!, e.GetProperty("pid").GetInt32())).ToList();
        }

        ProcessRunner.Run(RepoPaths.Cli, ["mount", f.Store, mnt], TimeSpan.FromSeconds(60), environment: env).EnsureSuccess("mount");
        try
        {
            var disk = Path.Combine(mnt, "snapshots", "vm/100", FilesFixture.Time, "files", "drive-scsi0.img");
            Assert.Equal("test-vm\n", File.ReadAllText(Path.Combine(disk, "part/1/etc/hostname")));
            var vm = Assert.Single(Vms());
            System.Diagnostics.Process.GetProcessById(vm.Pid).Kill(); // SIGKILL, like kill -9

            // A file on a volume not listed before (the LVM level is never listed ahead): the VM must answer again.
            Assert.Equal("on lvm and xfs\n", File.ReadAllText(Path.Combine(disk, "lvm/vgtest/data/data/hello.txt")));
            var restarted = Vms().Single(v => v.Name == vm.Name);
            Assert.NotEqual(vm.Pid, restarted.Pid);

            ProcessRunner.Run(RepoPaths.Cli, ["vm", "stop", "--all"], TimeSpan.FromSeconds(60), environment: env).EnsureSuccess("vm stop --all");
            Assert.False(FilesFixture.Alive(restarted.Pid));
            // Two levels further down: listed on demand only, so the access starts the VM again.
            Assert.Equal(File.ReadAllBytes(Path.Combine(f.Expected, "xfs/data/deep/er/blob.bin")),
                File.ReadAllBytes(Path.Combine(disk, "lvm/vgtest/data/data/deep/er/blob.bin")));
            Assert.Contains(Vms(), v => v.Name == vm.Name);
        }
        finally
        {
            ProcessRunner.Run(RepoPaths.Cli, ["umount", mnt], TimeSpan.FromSeconds(60), environment: env);
            if (MountTable.IsMounted(mnt))
            {
                MountTable.LazyUnmount(mnt);
            }
        }
    }

    [Fact]
    public void Unmounting_stops_the_vms_that_mount_started_and_only_those()
    {
        var mine = f.Vms(); // the fixture's mount and its VMs share another runtime directory: untouched below
        using var run = new TempDirectory("restorefs-files-run");
        var env = new Dictionary<string, string> { ["XDG_RUNTIME_DIR"] = run.Path };
        var mnt = f.Dir.Combine("mnt-second");
        Directory.CreateDirectory(mnt);
        ProcessRunner.Run(RepoPaths.Cli, ["mount", f.Store, mnt], TimeSpan.FromSeconds(60), environment: env).EnsureSuccess("mount");
        try
        {
            Assert.Equal("a bare file system\n",
                File.ReadAllText(Path.Combine(mnt, "snapshots", "vm/101", FilesFixture.Time, "files", "drive-scsi0.img/raw/root/note.txt")));
            using var doc = JsonDocument.Parse(ProcessRunner.Run(RepoPaths.Cli, ["vm", "status", "--json"], TimeSpan.FromSeconds(60), environment: env)
                .EnsureSuccess("vm status").StdOut);
            var vm = Assert.Single(doc.RootElement.EnumerateArray());
            var pid = vm.GetProperty("pid").GetInt32();
            Assert.True(vm.GetProperty("answering").GetBoolean());
            Assert.True(FilesFixture.Alive(pid));

            ProcessRunner.Run(RepoPaths.Cli, ["umount", mnt], TimeSpan.FromSeconds(60), environment: env).EnsureSuccess("umount");
            Assert.False(FilesFixture.Alive(pid), "the VM outlived its mount");
            Assert.Contains("no restore VMs running",
                ProcessRunner.Run(RepoPaths.Cli, ["vm", "status"], TimeSpan.FromSeconds(60), environment: env).EnsureSuccess("vm status").StdOut);
            Assert.All(mine, v => Assert.True(FilesFixture.Alive(v.Pid), $"{v.Name}: another mount's VM was stopped"));
        }
        finally
        {
            if (MountTable.IsMounted(mnt))
            {
                ProcessRunner.Run(RepoPaths.Cli, ["umount", mnt], TimeSpan.FromSeconds(60), environment: env);
                MountTable.LazyUnmount(mnt);
            }
        }
    }

    [Fact]
    public void Two_snapshots_browsed_at_once_run_two_vms_and_a_corrupt_map_is_recovered()
    {
        Assert.Contains("root", Directory.GetDirectories(Path.Combine(f.Files("vm/101"), "drive-scsi0.img/raw")).Select(Path.GetFileName));
        Assert.Contains("part", Directory.GetDirectories(Disk0).Select(Path.GetFileName));
        var vms = f.Vms();
        Assert.Equal(2, vms.Count);

        File.WriteAllText(Path.Combine(f.Runtime, "restorefs", "restore-vms.json"), "{{{ not json");
        var status = ProcessRunner.Run(RepoPaths.Cli, ["vm", "status"], TimeSpan.FromSeconds(60), environment: f.Env).EnsureSuccess("vm status");
        Assert.Contains("corrupt", status.StdOut + status.StdErr);
        // files/ keeps working (sessions of the mount), and new VMs are recorded again.
        Assert.Equal("a bare file system\n", File.ReadAllText(Path.Combine(f.Files("vm/101"), "drive-scsi0.img/raw/root/note.txt")));
    }

    [Fact]
    public void A_damaged_chunk_under_a_file_fails_that_files_reads_only()
    {
        // Find random.bin (3 MB of seeded pseudo-random bytes) in the disk image, and damage the chunk holding its start.
        var image = File.ReadAllBytes(f.Dir.Combine("disks", "multi.img"));
        var source = File.ReadAllBytes(Path.Combine(f.Expected, "ext4/srv/random.bin"));
        var at = image.AsSpan().IndexOf(source.AsSpan(0, 4096));
        Assert.True(at > 0, "random.bin not found in multi.img");
        using var copy = new TempDirectory("restorefs-files-damage");
        var store = copy.Combine("store");
        Run("cp", "-a", f.Store, store);
        var fidx = Directory.EnumerateFiles(Path.Combine(store, "vm", "100"), "drive-scsi0.img.fidx", SearchOption.AllDirectories).Single();
        var digest = DamageTests.ReadDigests(fidx)[at / (4 << 20)];
        var chunk = DamageTests.ChunkPath(store, digest);
        var bytes = File.ReadAllBytes(chunk);
        bytes[bytes.Length / 2] ^= 0x5A;
        File.WriteAllBytes(chunk, bytes);

        var env = new Dictionary<string, string> { ["XDG_RUNTIME_DIR"] = copy.Combine("run") };
        Directory.CreateDirectory(copy.Combine("run"));
        var mnt = copy.Combine("mnt");
        Directory.CreateDirectory(mnt);
        ProcessRunner.Run(RepoPaths.Cli, ["mount", store, mnt], TimeSpan.FromSeconds(60), environment: env).EnsureSuccess("mount");
        try
        {
            var disk = Path.Combine(mnt, "snapshots", "vm/100", FilesFixture.Time, "files", "drive-scsi0.img");
            var error = Assert.ThrowsAny<IOException>(() => File.ReadAllBytes(Path.Combine(disk, "part/1/srv/random.bin")));
            Assert.Contains("Input/output error", error.Message);
            // Files elsewhere still read, and the listing of the damaged file's directory is whole.
            Assert.Equal("on lvm and xfs\n", File.ReadAllText(Path.Combine(disk, "lvm/vgtest/data/data/hello.txt")));
            Assert.Equal(["many", "random.bin"], Directory.GetFileSystemEntries(Path.Combine(disk, "part/1/srv")).Select(Path.GetFileName).Order());
            // A directory whose blocks or inodes lie in the damaged chunk fails with EIO, or lists whole with the
            // unreadable entries failing: never a silently short listing.
            string[] many;
            try
            {
                many = Directory.GetFiles(Path.Combine(disk, "part/1/srv/many"));
            }
            catch (IOException e)
            {
                Assert.Contains("Input/output error", e.Message);
                return;
            }

            Assert.Equal(300, many.Length);
            foreach (var file in many)
            {
                try
                {
                    Assert.Equal($"small file {Path.GetFileNameWithoutExtension(file)[1..]}\n", File.ReadAllText(file));
                }
                catch (IOException e)
                {
                    Assert.Contains("Input/output error", e.Message);
                }
            }
        }
        finally
        {
            ProcessRunner.Run(RepoPaths.Cli, ["umount", mnt], TimeSpan.FromSeconds(60), environment: env);
            if (MountTable.IsMounted(mnt))
            {
                MountTable.LazyUnmount(mnt);
            }
        }
    }
}
