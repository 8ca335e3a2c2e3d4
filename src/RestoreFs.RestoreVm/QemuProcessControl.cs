using System.Diagnostics;
using System.Globalization;
using Microsoft.Extensions.Logging;

namespace RestoreFs.RestoreVm;

/// <summary>
/// The QEMU processes of restore VMs: a VM's private directory, the launch (retried with the next vsock CID while the
/// one asked for is taken), the wait until the booted VM answers, and killing it. A pid counts as one of our VMs only
/// when <c>/proc</c> shows its command line (see <see cref="IsOurVm(int, string?)"/>). What to start, reuse or stop is
/// <see cref="RestoreVmManager"/>'s decision.
/// </summary>
public sealed class QemuProcessControl
{
    private readonly RestoreVmOptions options;
    private readonly ILogger log;

    internal QemuProcessControl(RestoreVmOptions options, ILogger log)
    {
        this.options = options;
        this.log = log;
    }

    /// <summary>Creates a new private (0700) directory for one VM below the runtime directory.</summary>
    internal string CreateDirectory()
    {
        var vmDir = Path.Combine(options.RuntimeDirectory, "vm", $"{Environment.ProcessId}-{Guid.NewGuid():N}"[..24]);
        Directory.CreateDirectory(Path.GetDirectoryName(vmDir)!);
        Directory.CreateDirectory(vmDir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        return vmDir;
    }

    /// <summary>
    /// Runs QEMU (which daemonizes once the machine is set up) and returns the pid from its pid file and the CID it got.
    /// While QEMU says the vsock CID is taken, the next one is tried (up to 32 attempts). The initramfs copy
    /// <paramref name="initrd"/> (it holds the ticket) is deleted once QEMU returned.
    /// </summary>
    internal async Task<(int Pid, uint? Cid)> LaunchAsync(string name, string initrd, string vmDir, IReadOnlyList<VmDisk> disks, VmMachine machine,
        string accel, uint? cid, CancellationToken ct)
    {
        try
        {
            for (var attempt = 1; ; attempt++)
            {
                var launch = new VmLaunch(name, options.ImageDirectory, initrd, vmDir, disks, machine, accel, QemuLauncher.HostTscKhz(), cid,
                    options.Debug, options.IdleTimeoutSeconds, GuestKeys: options.GuestKeys is { Length: > 0 });
                var (code, error) = await RunQemuAsync(QemuLauncher.Arguments(launch), ct).ConfigureAwait(false);
                if (code == 0)
                {
                    break;
                }

                if (cid is { } taken && QemuLauncher.CidTaken(error) && attempt < 32)
                {
                    cid = QemuLauncher.NextCid(taken);
                    log.LogInformation("vsock CID {Taken} is taken; trying {Cid}", taken, cid);
                    continue;
                }

                throw new VmStartException($"{options.Qemu} exited with {code}: {error.Trim()}");
            }
        }
        finally
        {
            // With -daemonize QEMU returns once the machine is set up: the initramfs (and the ticket in it) is in
            // guest memory, so the copy leaves the disk now.
            TryDelete(initrd);
        }

        var pid = int.Parse((await File.ReadAllTextAsync(QemuLauncher.PidFile(vmDir), ct).ConfigureAwait(false)).Trim(), CultureInfo.InvariantCulture);
        return (pid, cid);
    }

    /// <summary>
    /// Waits until <paramref name="tryConnect"/> reaches the booting VM (tried once its channel exists), logging progress
    /// every 5 s. A VM that exits, or does not answer within <paramref name="deadline"/> of <paramref name="watch"/>'s
    /// start (then it is killed), fails with <see cref="VmStartException"/> carrying the end of its console log.
    /// </summary>
    internal async Task<TSession> WaitUntilAnswersAsync<TSession>(VmEntry entry, TimeSpan deadline, Stopwatch watch, Func<Task<TSession?>> tryConnect,
        CancellationToken ct)
        where TSession : class
    {
        var attempts = 0;
        var nextProgress = TimeSpan.FromSeconds(5);
        while (true)
        {
            if (!IsAlive(entry))
            {
                throw new VmStartException($"the VM exited before answering; console: {ConsoleTail(entry.Directory)}");
            }

            if (watch.Elapsed > deadline)
            {
                var console = ConsoleTail(entry.Directory);
                Kill(entry);
                await WaitForExitAsync(entry, TimeSpan.FromSeconds(5)).ConfigureAwait(false);
                throw new VmStartException($"no answer within {deadline.TotalSeconds:0} s; console: {console}");
            }

            if (watch.Elapsed > nextProgress)
            {
                log.LogInformation("Restore VM {Name} (pid {Pid}) still booting after {Seconds:0} s; console: {Console}", entry.Name, entry.Pid,
                    watch.Elapsed.TotalSeconds, ConsoleTail(entry.Directory, 1));
                nextProgress += TimeSpan.FromSeconds(5);
            }

            if ((entry.VsockCid is not null || File.Exists(QemuLauncher.ChannelSocket(entry.Directory))) && await tryConnect().ConfigureAwait(false) is { } up)
            {
                return up;
            }

            await Task.Delay(Math.Min(25 * ++attempts, 250), ct).ConfigureAwait(false);
        }
    }

    private async Task<(int Code, string Error)> RunQemuAsync(IReadOnlyList<string> arguments, CancellationToken ct)
    {
        var info = new ProcessStartInfo(options.Qemu)
        {
            RedirectStandardError = true, RedirectStandardOutput = true, RedirectStandardInput = true, UseShellExecute = false,
        };
        // Children get an explicit, minimal environment: nothing of ours (keys, passphrases) reaches them.
        var path = Environment.GetEnvironmentVariable("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin";
        info.Environment.Clear();
        info.Environment["PATH"] = path;
        info.Environment["LANG"] = "C.UTF-8";
        foreach (var a in arguments)
        {
            info.ArgumentList.Add(a);
        }

        try
        {
            using var qemu = Process.Start(info) ?? throw new VmStartException($"{options.Qemu} did not start");
            qemu.StandardInput.Close();
            var stdout = qemu.StandardOutput.ReadToEndAsync(ct);
            var stderr = qemu.StandardError.ReadToEndAsync(ct);
            await qemu.WaitForExitAsync(ct).ConfigureAwait(false);
            var error = await stderr.ConfigureAwait(false);
            await stdout.ConfigureAwait(false);
            return (qemu.ExitCode, error);
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new IOException($"cannot run {options.Qemu}: {e.Message} (install qemu-system-x86)", e);
        }
    }

    /// <summary>The effective uid, from /proc/self/status (offsets the CIDs of different users).</summary>
    internal static uint CurrentUid()
    {
        var line = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("Uid:", StringComparison.Ordinal));
        var fields = line?.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
        return fields is { Length: >= 3 } && uint.TryParse(fields[2], CultureInfo.InvariantCulture, out var uid) ? uid : 0;
    }

    private static string ConsoleTail(string vmDir, int lines = 5)
    {
        try
        {
            var all = File.ReadAllLines(QemuLauncher.ConsoleLog(vmDir));
            return all.Length == 0 ? "(empty)" : string.Join(" | ", all.TakeLast(lines));
        }
        catch (IOException)
        {
            return "(no console log)";
        }
    }

    /// <summary>SIGKILL, only when /proc/PID/cmdline shows this very VM (<c>-name restorefs-vm,…</c> and its pid file).</summary>
    internal void Kill(VmEntry entry)
    {
        if (!IsAlive(entry))
        {
            return;
        }

        try
        {
            using var process = Process.GetProcessById(entry.Pid);
            process.Kill();
            log.LogDebug("Killed restore VM {Name} (pid {Pid})", entry.Name, entry.Pid);
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            // gone meanwhile
        }
    }

    /// <summary>Waits up to <paramref name="limit"/> until the entry's pid is no longer that VM.</summary>
    internal static async Task WaitForExitAsync(VmEntry entry, TimeSpan limit)
    {
        var watch = Stopwatch.StartNew();
        while (IsAlive(entry) && watch.Elapsed < limit)
        {
            await Task.Delay(50).ConfigureAwait(false);
        }
    }

    /// <summary>True when the entry's pid is alive and is that VM's QEMU (our marker and its own pid file).</summary>
    public static bool IsAlive(VmEntry entry) => IsOurVm(entry.Pid, entry.Directory.Length > 0 ? entry.Directory : null);

    /// <summary>True when the pid is alive and is one of our QEMUs (its command line carries <c>-name restorefs-vm,…</c>).</summary>
    public static bool IsOurVm(int pid) => IsOurVm(pid, null);

    /// <summary>As <see cref="IsOurVm(int)"/>, and when <paramref name="vmDirectory"/> is given, started with the pid
    /// file in that directory.</summary>
    public static bool IsOurVm(int pid, string? vmDirectory)
    {
        if (pid <= 0)
        {
            return false;
        }

        try
        {
            var argv = System.Text.Encoding.UTF8.GetString(File.ReadAllBytes($"/proc/{pid}/cmdline")).Split('\0');
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var state = stat[(stat.LastIndexOf(')') + 2)..][0];
            return state != 'Z' && QemuLauncher.IsVmCommandLine(argv, vmDirectory);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or IndexOutOfRangeException or ArgumentOutOfRangeException)
        {
            return false;
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Removes a VM's directory, releasing its disk overlays first.</summary>
    internal void DeleteDirectory(string path)
    {
        if (path.Length > 0)
        {
            options.Overlays?.Release(path);
        }

        try
        {
            if (path.Length > 0 && Directory.Exists(path))
            {
                Directory.Delete(path, true);
            }
        }
        catch (IOException)
        {
        }
    }
}
