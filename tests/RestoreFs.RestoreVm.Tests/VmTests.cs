using System.Diagnostics;
using System.Text;
using RestoreFs.RestoreApi;
using RestoreFs.TestSupport;
using Xunit.Abstractions;

namespace RestoreFs.RestoreVm.Tests;

/// <summary>The restore image booted in real QEMU with disks over NBD: every level, files, reads, extract, refusals.</summary>
public sealed class VmTests(VmFixture f, ITestOutputHelper output) : IClassFixture<VmFixture>
{
    private const string Multi = VmFixture.LongSerial;

    private IRestoreClient Client => f.Session.Client;

    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    private async Task<List<ArchiveEntry>> List(string path, IRestoreClient? client = null)
    {
        var list = new List<ArchiveEntry>();
        await foreach (var e in (client ?? Client).ListAsync(B(path), CancellationToken.None))
        {
            list.Add(e);
        }

        return list;
    }

    private static IEnumerable<string> Names(IEnumerable<ArchiveEntry> entries) => entries.Select(e => Encoding.UTF8.GetString(e.Name));

    [Fact]
    public async Task The_vm_answers_status_with_its_disks_cut_serials_included()
    {
        output.WriteLine($"boot to first answer: {f.BootTime.TotalSeconds:0.0} s");
        var status = await Client.StatusAsync(true, CancellationToken.None);
        // virtio cuts serials at 20 bytes.
        Assert.Equal(["bare", "drive-scsi0-with-a-l", "garbage", "ntfs"], status.Disks.Select(d => d.Name).Order(StringComparer.Ordinal));
        var multi = status.Disks.Single(d => d.Name.StartsWith("drive", StringComparison.Ordinal));
        Assert.Contains("drive-scsi0-with-a-l/lvm/vgtest/data", multi.Volumes);
        Assert.Equal(3, multi.Volumes.Count);
        Assert.InRange(status.Timeout, 1, 600);
    }

    [Fact]
    public async Task Every_level_lists_and_vfat_and_lvm_xfs_mount_in_the_vm()
    {
        Assert.Equal(["lvm", "part"], Names(await List($"{Multi}.img.fidx")));
        var parts = await List($"{Multi}.img.fidx/part");
        Assert.Equal(["1", "2"], Names(parts));
        Assert.All(parts, p => Assert.True(p.Error is null, p.Error));
        Assert.Equal(["vgtest"], Names(await List($"{Multi}.img.fidx/lvm")));
        var lv = Assert.Single(await List($"{Multi}.img.fidx/lvm/vgtest"));
        Assert.Null(lv.Error);

        var vfat = await List($"{Multi}.img.fidx/part/2");
        Assert.Contains("readme.txt", Names(vfat));
        Assert.Contains("EFI", Names(vfat));
        var xfs = await List($"{Multi}.img.fidx/lvm/vgtest/data/data");
        Assert.Equal(["deep", "hello.txt"], Names(xfs).Order(StringComparer.Ordinal));
        Assert.Equal(["raw"], Names(await List("bare.img.fidx")));
        Assert.Equal(["root"], Names(await List("bare.img.fidx/raw")).Where(n => n != "lost+found"));
        Assert.Empty(await List("garbage.img.fidx"));
    }

    [Fact]
    public async Task Files_read_at_odd_offsets_from_ext4_vfat_and_lvm_xfs()
    {
        foreach (var (path, source) in new[]
        {
            ($"{Multi}.img.fidx/part/1/srv/random.bin", "ext4/srv/random.bin"),
            ($"{Multi}.img.fidx/part/2/EFI/BOOT/bootx64.efi", "vfat/EFI/BOOT/bootx64.efi"),
            ($"{Multi}.img.fidx/lvm/vgtest/data/data/deep/er/blob.bin", "xfs/data/deep/er/blob.bin"),
            ("ntfs.img.fidx/raw/Users/admin/data.bin", "ntfs/Users/admin/data.bin"),
        })
        {
            var expected = await File.ReadAllBytesAsync(Path.Combine(f.Expected, source));
            var random = new Random(path.Length);
            await Task.WhenAll(Enumerable.Range(0, 16).Select(async _ =>
            {
                var offset = random.Next(0, expected.Length - 1);
                var buffer = new byte[random.Next(1, 1 << 20)];
                var n = await Client.ReadAsync(B(path), offset, buffer, CancellationToken.None);
                Assert.Equal(Math.Min(buffer.Length, expected.Length - offset), n);
                Assert.True(buffer.AsSpan(0, n).SequenceEqual(expected.AsSpan(offset, n)), $"{path} @{offset}");
            }));
        }
    }

    [Fact]
    public async Task Extract_of_a_tree_equals_the_source()
    {
        var target = f.Dir.Combine("extracted");
        Directory.CreateDirectory(target);
        var archive = f.Dir.Combine("tree.tar.zst");
        await using (var body = await Client.ExtractAsync(B($"{Multi}.img.fidx/part/1/home"), ExtractFormat.Tar, true, CancellationToken.None))
        await using (var file = File.Create(archive))
        {
            await body.CopyToAsync(file);
        }

        ProcessRunner.Run(Requires.Tool("tar"), ["--zstd", "-xpf", archive, "-C", target]).EnsureSuccess("tar -x");
        var diff = ProcessRunner.Run(Requires.Tool("diff"), ["-r", "--no-dereference", Path.Combine(f.Expected, "ext4/home"), Path.Combine(target, "home")]);
        Assert.True(diff.ExitCode == 0, diff.StdOut + diff.StdErr);
    }

    [Fact]
    public async Task Wrong_ticket_and_dotdot_are_refused()
    {
        var entry = f.Session.Entry;
        await using var wrong = new RestoreClient(SocketTransport.Unix(QemuLauncher.ProxySocket(entry.Directory)), "not-the-ticket");
        var watch = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<RestoreApiException>(() => List("bare.img.fidx", wrong));
        Assert.Equal(401, e.StatusCode);
        Assert.True(watch.Elapsed >= TimeSpan.FromSeconds(2.9), $"refused after {watch.Elapsed}");
        var up = await Assert.ThrowsAsync<RestoreApiException>(() => List($"{Multi}.img.fidx/part/1/../2"));
        Assert.Equal(400, up.StatusCode);

        // The proxy with the right ticket works: a second local client of the same VM.
        await using var right = new RestoreClient(SocketTransport.Unix(QemuLauncher.ProxySocket(entry.Directory)), entry.Ticket);
        Assert.Contains("raw", Names(await List("bare.img.fidx", right)));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(QemuLauncher.ProxySocket(entry.Directory)));
    }

    [Fact]
    public void The_ticket_is_neither_on_the_command_line_nor_left_on_disk_and_the_vm_files_are_private()
    {
        var entry = f.Session.Entry;
        var argv = File.ReadAllText($"/proc/{entry.Pid}/cmdline").Split('\0');
        Assert.True(QemuLauncher.IsVmCommandLine(argv, entry.Directory));
        Assert.DoesNotContain(argv, a => a.Contains(entry.Ticket, StringComparison.Ordinal));
        Assert.Empty(Directory.GetFiles(entry.Directory, "initramfs-*")); // deleted once QEMU had it in memory
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(entry.Directory));
        Assert.True(File.Exists(QemuLauncher.ConsoleLog(entry.Directory)));
        Assert.Equal(entry.Pid, int.Parse(File.ReadAllText(QemuLauncher.PidFile(entry.Directory)).Trim(), System.Globalization.CultureInfo.InvariantCulture));

        // Only the 0600 map holds the ticket.
        var map = f.Manager.Map;
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(map.FilePath));
        var holders = Directory.EnumerateFiles(f.Dir.Combine("run"), "*", SearchOption.AllDirectories)
            .Where(p => ReadRegular(p)?.Contains(entry.Ticket, StringComparison.Ordinal) == true)
            .ToList();
        Assert.Equal([map.FilePath], holders);
    }

    /// <summary>A regular file's text; null for sockets (the channel and proxy) and whatever cannot be read.</summary>
    private static string? ReadRegular(string path)
    {
        try
        {
            using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            using var reader = new StreamReader(file);
            return reader.ReadToEnd();
        }
        catch (IOException)
        {
            return null;
        }
    }

    [Fact]
    public async Task A_second_manager_on_the_same_map_probes_and_reuses_the_vm_through_the_proxy_and_leaves_it_running()
    {
        var entry = f.Session.Entry;
        await using (var other = f.NewManager(f.Dir.Combine("run")))
        {
            var live = await other.CleanupAsync(CancellationToken.None);
            Assert.True(live.ContainsKey(entry.Name));
            var session = await other.EnsureRunningAsync(entry.Name, f.Disks, CancellationToken.None);
            Assert.Equal(entry.Pid, session.Entry.Pid);
            Assert.Equal(["lvm", "part"], Names(await List($"{Multi}.img.fidx", session.Client)));
            var status = Assert.Single(await other.StatusAsync(CancellationToken.None), s => s.Entry.Name == entry.Name);
            Assert.NotNull(status.Status);
        }

        // It did not start the VM, so disposing it stopped nothing.
        Assert.True(QemuProcessControl.IsAlive(entry));
        Assert.NotEmpty((await Client.StatusAsync(true, CancellationToken.None)).Disks);
    }

    [Fact]
    public async Task An_idle_vm_powers_off_and_a_killed_one_is_restarted()
    {
        await using var manager = f.NewManager(f.Dir.Combine("run-idle"), idle: 3);
        var session = await manager.EnsureRunningAsync("idle-test", f.Disks.Take(1).ToList(), CancellationToken.None);
        var pid = session.Entry.Pid;
        Assert.True(QemuProcessControl.IsOurVm(pid));
        var watch = Stopwatch.StartNew();
        while (QemuProcessControl.IsOurVm(pid) && watch.Elapsed < TimeSpan.FromSeconds(30))
        {
            await Task.Delay(200);
        }

        Assert.False(QemuProcessControl.IsOurVm(pid), "the idle VM is still running");
        Assert.InRange(watch.Elapsed.TotalSeconds, 1, 30);

        // The kernel drops an exiting process's memory (its command line reads empty) before its sockets, so the
        // channel reports the power-off a moment after the process stops looking like our VM.
        var closing = Stopwatch.StartNew();
        while (!session.Broken && closing.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(20);
        }

        Assert.True(session.Broken, "the channel of the powered-off VM is still open");

        // The map drops it on the next use, which starts a new VM.
        var again = await manager.EnsureRunningAsync("idle-test", f.Disks.Take(1).ToList(), CancellationToken.None);
        Assert.NotEqual(pid, again.Entry.Pid);
        Assert.Single(manager.Map.Read());

        // kill -9: the channel breaks, the next EnsureRunning restarts it.
        Process.GetProcessById(again.Entry.Pid).Kill();
        var deadline = Stopwatch.StartNew();
        while (!again.Broken && deadline.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(50);
        }

        var third = await manager.EnsureRunningAsync("idle-test", f.Disks.Take(1).ToList(), CancellationToken.None);
        Assert.NotEqual(again.Entry.Pid, third.Entry.Pid);
        Assert.Equal(["lvm", "part"], Names(await List($"{Multi}.img.fidx", third.Client)));
    }
}
