using System.Diagnostics;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreVm.Tests;

/// <summary>Log lines kept for assertions.</summary>
internal sealed class ListLogger : ILogger, ILoggerFactory
{
    private readonly List<(LogLevel Level, string Text)> lines = [];

    public IReadOnlyList<(LogLevel Level, string Text)> Lines
    {
        get
        {
            lock (lines)
            {
                return lines.ToList();
            }
        }
    }

    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        lock (lines)
        {
            lines.Add((logLevel, formatter(state, exception)));
        }
    }

    public ILogger CreateLogger(string categoryName) => this;

    public void AddProvider(ILoggerProvider provider)
    {
    }

    public void Dispose()
    {
    }
}

/// <summary>
/// A process that only looks like a restore VM: bash waiting on its stdin, its command line carrying QEMU's
/// <c>-name restorefs-vm,…</c> and <c>-pidfile</c> arguments. A stand-in for a QEMU that hangs or whose mount is gone.
/// </summary>
internal sealed class FakeVmProcess : IDisposable
{
    private readonly Process process;

    public FakeVmProcess(params string[] arguments)
    {
        var info = new ProcessStartInfo("bash") { RedirectStandardInput = true, UseShellExecute = false };
        foreach (var a in (string[])["-c", "read -t 120", "restorefs-fake-vm", .. arguments])
        {
            info.ArgumentList.Add(a);
        }

        process = Process.Start(info)!;
    }

    public static FakeVmProcess LikeVm(string vmDirectory) =>
        new("-name", $"{QemuLauncher.Marker},process={QemuLauncher.Marker}", "-pidfile", QemuLauncher.PidFile(vmDirectory));

    public int Pid => process.Id;

    public bool Exited => process.WaitForExit(TimeSpan.FromSeconds(5));

    public bool Running => !process.WaitForExit(TimeSpan.FromMilliseconds(300));

    public void Dispose()
    {
        if (!process.HasExited)
        {
            process.Kill();
        }

        process.Dispose();
    }
}

/// <summary>The state map's lock and corruption handling, and cleanup of unreachable VMs with real (stand-in) processes.</summary>
public sealed class StateMapTests : IDisposable
{
    private readonly TempDirectory dir = new("restorefs-statemap");

    private static VmEntry Entry(string name, int pid, string directory, int owner = 0, string? channel = null) => new()
    {
        Name = name, Pid = pid, Channel = channel ?? VmEntry.SerialPrefix + QemuLauncher.ChannelSocket(directory), Ticket = "ticket-" + name,
        Directory = directory, Started = DateTimeOffset.UtcNow.ToUnixTimeSeconds(), Disks = ["drive-scsi0"], Owner = owner,
    };

    [Fact]
    public async Task A_change_waits_for_the_lock_held_by_another_process_and_gives_up_after_its_timeout()
    {
        var map = new VmStateMap(dir.Path, new ListLogger());
        await map.UpdateAsync(e => { e.Add(Entry("a", 1, dir.Combine("a"))); return 0; }, CancellationToken.None);

        // Another process holds the flock: bash keeps the file description that flock(1) locked, and waits.
        var holder = Process.Start(new ProcessStartInfo("bash", ["-c", $"exec 9>>'{map.LockPath}'; flock -x 9; echo locked; read -t 120"])
        {
            RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false,
        })!;
        try
        {
            Assert.Equal("locked", await holder.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(10)));
            var watch = Stopwatch.StartNew();
            var e = await Assert.ThrowsAsync<IOException>(() =>
                map.UpdateAsync(l => { l.Clear(); return 0; }, CancellationToken.None, TimeSpan.FromSeconds(1)));
            Assert.InRange(watch.Elapsed.TotalSeconds, 0.9, 10);
            Assert.Contains(map.FilePath, e.Message);
            Assert.Single(map.Read()); // nothing was changed

            // A waiter gets the lock as soon as the holder is gone.
            var waiting = map.UpdateAsync(l => { l.Add(Entry("b", 2, dir.Combine("b"))); return 0; }, CancellationToken.None, TimeSpan.FromSeconds(30));
            await Task.Delay(300);
            Assert.False(waiting.IsCompleted);
            holder.Kill();
            await waiting.WaitAsync(TimeSpan.FromSeconds(10));
            Assert.Equal(["a", "b"], map.Read().Select(x => x.Name));
        }
        finally
        {
            if (!holder.HasExited)
            {
                holder.Kill();
            }

            holder.Dispose();
        }
    }

    [Fact]
    public async Task A_corrupt_map_is_set_aside_with_a_warning_and_the_next_write_is_valid_and_private()
    {
        var logs = new ListLogger();
        var map = new VmStateMap(dir.Path, logs);
        foreach (var garbage in new[] { "{ not json", "[{\"Name\": null}]", "[null]", "" })
        {
            await File.WriteAllTextAsync(map.FilePath, garbage);
            Assert.Empty(await map.ReadLockedAsync(CancellationToken.None));
            Assert.Equal(garbage, await File.ReadAllTextAsync(map.FilePath + ".corrupt"));
        }

        Assert.Equal(4, logs.Lines.Count(l => l.Level == LogLevel.Warning && l.Text.Contains("corrupt", StringComparison.Ordinal)));
        await map.UpdateAsync(e => { e.Add(Entry("fresh", 7, dir.Combine("fresh"))); return 0; }, CancellationToken.None);
        using var doc = JsonDocument.Parse(await File.ReadAllTextAsync(map.FilePath));
        Assert.Equal("fresh", doc.RootElement[0].GetProperty("Name").GetString());
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(map.FilePath));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(map.LockPath));
    }

    [Fact]
    public async Task Cleanup_with_Fake_vms_kills_the_unreachable_and_orphaned_ones_and_never_a_process_that_is_not_that_vm()
    {
        var logs = new ListLogger();
        await using var manager = new RestoreVmManager(
            new RestoreVmOptions { RuntimeDirectory = dir.Path, ImageDirectory = dir.Path, ProbeTimeout = TimeSpan.FromSeconds(1) }, logs);

        // A dead owner: a process that has exited.
        using var ended = Process.Start("true")!;
        ended.WaitForExit();

        var silentDir = dir.Combine("vm", "silent");
        var orphanDir = dir.Combine("vm", "orphan");
        var otherDir = dir.Combine("vm", "other");
        var pathDir = dir.Combine("vm", "path");
        foreach (var d in new[] { silentDir, orphanDir, otherDir, pathDir })
        {
            Directory.CreateDirectory(d);
        }

        using var silent = FakeVmProcess.LikeVm(silentDir);            // looks like our VM, its channel does not answer
        using var orphan = FakeVmProcess.LikeVm(orphanDir);            // looks like our VM, the mount serving its disks is gone
        using var reused = FakeVmProcess.LikeVm(dir.Combine("vm", "x")); // our marker, but another VM's pid file: a reused pid
        using var path = new FakeVmProcess(dir.Combine("restorefs-vm-in-a-path")); // the marker only inside an argument
        Assert.True(QemuProcessControl.IsOurVm(silent.Pid));
        Assert.False(QemuProcessControl.IsOurVm(path.Pid));

        await manager.Map.UpdateAsync(e =>
        {
            e.Add(Entry("silent", silent.Pid, silentDir, owner: Environment.ProcessId));
            e.Add(Entry("orphan", orphan.Pid, orphanDir, owner: ended.Id));
            e.Add(Entry("reused", reused.Pid, otherDir, owner: Environment.ProcessId));
            e.Add(Entry("path", path.Pid, pathDir, owner: Environment.ProcessId, channel: VmEntry.VsockPrefix + "4711"));
            return 0;
        }, CancellationToken.None);

        var answered = await manager.CleanupAsync(CancellationToken.None);

        Assert.Empty(answered);
        Assert.Empty(manager.Map.Read());
        Assert.True(silent.Exited, "the VM that does not answer was not killed");
        Assert.True(orphan.Exited, "the VM whose mount is gone was not killed");
        Assert.True(reused.Running, "a process with another VM's pid file was killed");
        Assert.True(path.Running, "a process that is not a VM was killed");
        Assert.All(new[] { silentDir, orphanDir, otherDir, pathDir }, d => Assert.False(Directory.Exists(d), d));
        var removed = logs.Lines.Where(l => l.Text.Contains("removed from the map", StringComparison.Ordinal)).Select(l => l.Text).ToList();
        Assert.Equal(4, removed.Count);
        Assert.Contains(removed, l => l.Contains("silent", StringComparison.Ordinal) && l.Contains("does not answer", StringComparison.Ordinal));
        Assert.Contains(removed, l => l.Contains("orphan", StringComparison.Ordinal) && l.Contains($"pid {ended.Id}) is gone", StringComparison.Ordinal));
        Assert.Contains(removed, l => l.Contains("reused", StringComparison.Ordinal) && l.Contains("QEMU is gone", StringComparison.Ordinal));
    }

    [Fact]
    public void Vsock_cids_follow_pbs_offset_by_uid_at_least_10_16_bits_and_the_next_one_when_taken()
    {
        Assert.Equal(10u, QemuLauncher.RequestCid([], 0));
        Assert.Equal(1001u, QemuLauncher.RequestCid([], 1000));
        Assert.Equal(2501u, QemuLauncher.RequestCid([1500, 1001], 1000));
        Assert.Equal(10u, QemuLauncher.RequestCid([65535], 0));     // wraps to 0, then the floor
        Assert.Equal(10u, QemuLauncher.RequestCid([65535], 5));     // 65541 & 0xFFFF = 5, below the floor
        Assert.Equal(20u, QemuLauncher.RequestCid([65535], 20));
        Assert.Equal(65531u, QemuLauncher.RequestCid([65530, 12], 0));
        Assert.Equal(11u, QemuLauncher.NextCid(10));
        Assert.Equal(10u, QemuLauncher.NextCid(65535));
        Assert.True(QemuLauncher.CidTaken("qemu-system-x86_64: -device vhost-vsock-pci,guest-cid=12: vhost-vsock: unable to set guest cid: Address already in use"));
        Assert.False(QemuLauncher.CidTaken("qemu-system-x86_64: -device vhost-vsock-pci,guest-cid=12: vhost-vsock: failed to open vhost device: No such file or directory"));

        var vsock = Entry("v", 1, "/d", channel: "vsock:1234");
        Assert.Equal(1234u, vsock.VsockCid);
        Assert.Null(vsock.SerialSocket);
        var serial = Entry("s", 1, "/d");
        Assert.Null(serial.VsockCid);
        Assert.Equal("/d/channel.sock", serial.SerialSocket);
    }

    public void Dispose() => dir.Dispose();
}
