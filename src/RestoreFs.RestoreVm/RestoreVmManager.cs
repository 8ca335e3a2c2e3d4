using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Logging;
using RestoreFs.RestoreApi;

namespace RestoreFs.RestoreVm;

public sealed record RestoreVmOptions
{
    public required string RuntimeDirectory { get; init; }

    /// <summary>Holds vmlinux, vmlinuz and initramfs.img from scripts/build-restore-image.sh.</summary>
    public required string ImageDirectory { get; init; }

    public TimeSpan StartTimeout { get; init; } = TimeSpan.FromSeconds(60);

    public bool Debug { get; init; }

    /// <summary>The daemon powers the VM off after this long without list/read/extract.</summary>
    public int IdleTimeoutSeconds { get; init; } = 600;

    public string Qemu { get; init; } = "qemu-system-x86_64";
}

/// <summary>A running VM this process talks to.</summary>
public sealed class VmSession(VmEntry entry, VmChannel channel, RestoreClient client) : IAsyncDisposable
{
    public VmEntry Entry => entry;

    public IRestoreClient Client => client;

    public bool Broken => channel.Broken;

    public async ValueTask DisposeAsync()
    {
        await client.DisposeAsync().ConfigureAwait(false);
        await channel.DisposeAsync().ConfigureAwait(false);
    }
}

/// <summary>
/// Starts, reuses, probes and stops restore VMs, one per snapshot, recorded in the <see cref="VmStateMap"/>. The
/// first VM decides KVM or TCG: KVM is tried when /dev/kvm opens, and a VM that dies or stays silent under it
/// marks KVM unusable (in the runtime directory) and starts again under TCG.
/// </summary>
public sealed class RestoreVmManager : IAsyncDisposable
{
    private readonly RestoreVmOptions options;
    private readonly ILogger log;
    private readonly ConcurrentDictionary<string, SemaphoreSlim> locks = new();
    private readonly ConcurrentDictionary<string, VmSession> sessions = new();
    private readonly ConcurrentDictionary<string, int> started = new();

    public RestoreVmManager(RestoreVmOptions options, ILoggerFactory logs)
    {
        this.options = options;
        log = logs.CreateLogger<RestoreVmManager>();
        Map = new VmStateMap(options.RuntimeDirectory, log);
    }

    public VmStateMap Map { get; }

    private string KvmMarker => Path.Combine(options.RuntimeDirectory, "kvm-unusable");

    /// <summary>Returns a live session for the snapshot: reused from this process, from the map, or a new VM.</summary>
    public async Task<VmSession> EnsureRunningAsync(string name, IReadOnlyList<VmDisk> disks, CancellationToken ct)
    {
        if (sessions.TryGetValue(name, out var ready) && !ready.Broken)
        {
            return ready;
        }

        var gate = locks.GetOrAdd(name, _ => new SemaphoreSlim(1, 1));
        await gate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (sessions.TryGetValue(name, out ready) && !ready.Broken)
            {
                return ready;
            }

            if (ready is not null)
            {
                sessions.TryRemove(name, out _);
                await ready.DisposeAsync().ConfigureAwait(false);
            }

            await CleanupAsync(ct).ConfigureAwait(false);
            var existing = Map.Read().FirstOrDefault(e => e.Name == name);
            if (existing is not null)
            {
                var reused = await TryConnectAsync(existing, ct).ConfigureAwait(false);
                if (reused is not null)
                {
                    log.LogInformation("Reusing restore VM {Name} (pid {Pid})", name, existing.Pid);
                    sessions[name] = reused;
                    return reused;
                }

                log.LogWarning("Restore VM {Name} (pid {Pid}) does not answer: restarting it", name, existing.Pid);
                await KillAsync(existing).ConfigureAwait(false);
            }

            var session = await StartAsync(name, disks, ct).ConfigureAwait(false);
            sessions[name] = session;
            started[name] = session.Entry.Pid;
            return session;
        }
        finally
        {
            gate.Release();
        }
    }

    /// <summary>Forgets a session whose channel failed, so that the next request restarts or reconnects.</summary>
    public async Task InvalidateAsync(string name)
    {
        if (sessions.TryRemove(name, out var session))
        {
            await session.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Removes map entries whose QEMU is gone.</summary>
    public async Task CleanupAsync(CancellationToken ct)
    {
        var removed = await Map.UpdateAsync(entries =>
        {
            var dead = entries.Where(e => !IsOurVm(e.Pid)).ToList();
            entries.RemoveAll(dead.Contains);
            return dead;
        }, ct).ConfigureAwait(false);
        foreach (var e in removed)
        {
            log.LogInformation("Restore VM {Name} (pid {Pid}) is gone: removed from the map", e.Name, e.Pid);
            TryDeleteDirectory(e.Directory);
        }
    }

    /// <summary>Stops one VM (asking its daemon first, then killing it) and removes it from the map.</summary>
    public async Task<bool> StopAsync(string name, CancellationToken ct)
    {
        var entry = Map.Read().FirstOrDefault(e => e.Name == name);
        if (entry is null)
        {
            return false;
        }

        if (sessions.TryRemove(name, out var session))
        {
            await TryStopAsync(session.Client, ct).ConfigureAwait(false);
            await session.DisposeAsync().ConfigureAwait(false);
        }
        else if (IsOurVm(entry.Pid) && await TryConnectAsync(entry, ct).ConfigureAwait(false) is { } other)
        {
            await TryStopAsync(other.Client, ct).ConfigureAwait(false);
            await other.DisposeAsync().ConfigureAwait(false);
        }

        await WaitForExitAsync(entry.Pid, TimeSpan.FromSeconds(5)).ConfigureAwait(false);
        await KillAsync(entry).ConfigureAwait(false);
        log.LogInformation("Stopped restore VM {Name} (pid {Pid})", name, entry.Pid);
        return true;
    }

    /// <summary>Live status of every VM in the map (null status when the daemon does not answer).</summary>
    public async Task<IReadOnlyList<(VmEntry Entry, DaemonStatus? Status)>> StatusAsync(CancellationToken ct)
    {
        await CleanupAsync(ct).ConfigureAwait(false);
        var result = new List<(VmEntry, DaemonStatus?)>();
        foreach (var entry in Map.Read())
        {
            DaemonStatus? status = null;
            if (sessions.TryGetValue(entry.Name, out var session))
            {
                status = await ProbeAsync(session.Client, keepTimeout: true, ct).ConfigureAwait(false);
            }
            else if (await TryConnectAsync(entry, ct, keepTimeout: true).ConfigureAwait(false) is { } probe)
            {
                await using (probe.ConfigureAwait(false))
                {
                    status = await ProbeAsync(probe.Client, keepTimeout: true, ct).ConfigureAwait(false);
                }
            }

            result.Add((entry, status));
        }

        return result;
    }

    private async Task<VmSession?> TryConnectAsync(VmEntry entry, CancellationToken ct, bool keepTimeout = false)
    {
        if (!IsOurVm(entry.Pid) || !entry.Channel.StartsWith("serial:", StringComparison.Ordinal))
        {
            return null;
        }

        try
        {
            var channel = await VmChannel.ConnectAsync(entry.Channel["serial:".Length..], QemuLauncher.ProxySocket(entry.Directory), log, ct)
                .ConfigureAwait(false);
            var client = new RestoreClient(channel.Transport, entry.Ticket, ownsTransport: false);
            if (await ProbeAsync(client, keepTimeout, ct).ConfigureAwait(false) is null)
            {
                await client.DisposeAsync().ConfigureAwait(false);
                await channel.DisposeAsync().ConfigureAwait(false);
                return null;
            }

            return new VmSession(entry, channel, client);
        }
        catch (IOException e)
        {
            log.LogDebug("Cannot reach restore VM {Name}: {Reason}", entry.Name, e.Message);
            return null;
        }
    }

    private static async Task<DaemonStatus?> ProbeAsync(IRestoreClient client, bool keepTimeout, CancellationToken ct)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(3));
        try
        {
            return await client.StatusAsync(keepTimeout, timeout.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or RestoreApiException or InvalidDataException)
        {
            return null;
        }
    }

    private async Task<VmSession> StartAsync(string name, IReadOnlyList<VmDisk> disks, CancellationToken ct)
    {
        foreach (var file in new[] { "vmlinux", "vmlinuz", "initramfs.img" })
        {
            if (!File.Exists(Path.Combine(options.ImageDirectory, file)))
            {
                throw new IOException($"the restore image is incomplete: {Path.Combine(options.ImageDirectory, file)} is missing (run make restore-image)");
            }
        }

        var kvm = !File.Exists(KvmMarker) && KvmOpens();
        Exception? last = null;
        foreach (var (machine, accel) in Attempts(kvm))
        {
            try
            {
                return await StartOnceAsync(name, disks, machine, accel, ct).ConfigureAwait(false);
            }
            catch (VmStartException e)
            {
                last = e;
                log.LogWarning("Restore VM {Name} failed to start ({Machine}, {Accel}): {Reason}", name, machine, accel, e.Message);
                if (accel == "kvm")
                {
                    await File.WriteAllTextAsync(KvmMarker, e.Message + "\n", ct).ConfigureAwait(false);
                    log.LogWarning("KVM is unusable here; restore VMs run under TCG from now on");
                }
            }
        }

        throw new IOException($"the restore VM for {name} did not start: {last?.Message}", last);
    }

    private static IEnumerable<(VmMachine, string)> Attempts(bool kvm)
    {
        if (kvm)
        {
            yield return (VmMachine.Microvm, "kvm");
        }

        yield return (VmMachine.Microvm, "tcg");
        yield return (VmMachine.Pc, "tcg");
    }

    private static bool KvmOpens()
    {
        try
        {
            using var f = new FileStream("/dev/kvm", FileMode.Open, FileAccess.ReadWrite);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private async Task<VmSession> StartOnceAsync(string name, IReadOnlyList<VmDisk> disks, VmMachine machine, string accel, CancellationToken ct)
    {
        var watch = Stopwatch.StartNew();
        var vmDir = Path.Combine(options.RuntimeDirectory, "vm", $"{Environment.ProcessId}-{Guid.NewGuid():N}"[..24]);
        Directory.CreateDirectory(vmDir);
        File.SetUnixFileMode(vmDir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var ticket = Guid.NewGuid().ToString();
        var initrd = Initramfs.AppendTicket(Path.Combine(options.ImageDirectory, "initramfs.img"), System.Text.Encoding.ASCII.GetBytes(ticket), vmDir);
        var launch = new VmLaunch(name, options.ImageDirectory, initrd, vmDir, disks, machine, accel, QemuLauncher.HostTscKhz(), Debug: options.Debug,
            IdleTimeoutSeconds: options.IdleTimeoutSeconds);
        log.LogInformation("Starting restore VM {Name}: {Disks} disk(s), {Machine} under {Accel}", name, disks.Count, machine, accel);
        var info = new ProcessStartInfo(options.Qemu) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in QemuLauncher.Arguments(launch))
        {
            info.ArgumentList.Add(a);
        }

        int pid;
        try
        {
            using var qemu = Process.Start(info) ?? throw new VmStartException($"{options.Qemu} did not start");
            var stderr = qemu.StandardError.ReadToEndAsync(ct);
            await qemu.WaitForExitAsync(ct).ConfigureAwait(false);
            if (qemu.ExitCode != 0)
            {
                throw new VmStartException($"{options.Qemu} exited with {qemu.ExitCode}: {(await stderr.ConfigureAwait(false)).Trim()}");
            }

            pid = int.Parse((await File.ReadAllTextAsync(QemuLauncher.PidFile(vmDir), ct).ConfigureAwait(false)).Trim(), System.Globalization.CultureInfo.InvariantCulture);
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new IOException($"cannot run {options.Qemu}: {e.Message} (install qemu-system-x86)", e);
        }

        var entry = new VmEntry
        {
            Name = name, Pid = pid, Channel = "serial:" + QemuLauncher.ChannelSocket(vmDir), Ticket = ticket, Directory = vmDir,
            Started = DateTimeOffset.UtcNow.ToUnixTimeSeconds(), Disks = disks.Select(d => d.Serial).ToList(), Owner = Environment.ProcessId,
            Accelerator = accel,
        };
        var deadline = accel == "kvm" ? TimeSpan.FromSeconds(10) : options.StartTimeout;
        var attempt = 0;
        while (true)
        {
            if (!IsOurVm(pid))
            {
                TryDelete(initrd);
                throw new VmStartException($"the VM exited before answering; console: {ConsoleTail(vmDir)}");
            }

            if (watch.Elapsed > deadline)
            {
                await KillAsync(entry).ConfigureAwait(false);
                throw new VmStartException($"no answer within {deadline.TotalSeconds:0} s; console: {ConsoleTail(vmDir)}");
            }

            if (File.Exists(QemuLauncher.ChannelSocket(vmDir)) && await TryConnectAsync(entry, ct).ConfigureAwait(false) is { } session)
            {
                TryDelete(initrd); // the kernel has it in memory: the ticket leaves the disk
                await Map.UpdateAsync(entries =>
                {
                    entries.RemoveAll(e => e.Name == name);
                    entries.Add(entry);
                    return 0;
                }, ct).ConfigureAwait(false);
                log.LogInformation("Restore VM {Name} (pid {Pid}) answered after {Seconds:0.0} s", name, pid, watch.Elapsed.TotalSeconds);
                return session;
            }

            await Task.Delay(Math.Min(25 * ++attempt, 250), ct).ConfigureAwait(false);
        }
    }

    private static string ConsoleTail(string vmDir)
    {
        try
        {
            var lines = File.ReadAllLines(QemuLauncher.ConsoleLog(vmDir));
            return lines.Length == 0 ? "(empty)" : string.Join(" | ", lines.TakeLast(5));
        }
        catch (IOException)
        {
            return "(no console log)";
        }
    }

    private static async Task TryStopAsync(IRestoreClient client, CancellationToken ct)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(3));
        try
        {
            await client.StopAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or RestoreApiException)
        {
        }
    }

    private async Task KillAsync(VmEntry entry)
    {
        if (IsOurVm(entry.Pid))
        {
            try
            {
                Process.GetProcessById(entry.Pid).Kill();
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception)
            {
            }

            await WaitForExitAsync(entry.Pid, TimeSpan.FromSeconds(5)).ConfigureAwait(false);
        }

        await Map.UpdateAsync(entries => entries.RemoveAll(e => e.Name == entry.Name && e.Pid == entry.Pid), CancellationToken.None).ConfigureAwait(false);
        TryDeleteDirectory(entry.Directory);
    }

    private static async Task WaitForExitAsync(int pid, TimeSpan limit)
    {
        var watch = Stopwatch.StartNew();
        while (IsOurVm(pid) && watch.Elapsed < limit)
        {
            await Task.Delay(50).ConfigureAwait(false);
        }
    }

    /// <summary>True when the pid is alive and is one of our QEMUs (its command line carries the marker).</summary>
    public static bool IsOurVm(int pid)
    {
        try
        {
            var cmdline = File.ReadAllBytes($"/proc/{pid}/cmdline");
            var text = System.Text.Encoding.UTF8.GetString(cmdline);
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var state = stat[(stat.LastIndexOf(')') + 2)..][0];
            return state != 'Z' && text.Contains(QemuLauncher.Marker, StringComparison.Ordinal);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or IndexOutOfRangeException)
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

    private static void TryDeleteDirectory(string path)
    {
        try
        {
            if (Directory.Exists(path))
            {
                Directory.Delete(path, true);
            }
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Stops the VMs this process started (their disks die with it) and closes the others' channels.</summary>
    public async ValueTask DisposeAsync()
    {
        foreach (var (name, pid) in started)
        {
            var entry = Map.Read().FirstOrDefault(e => e.Name == name && e.Pid == pid);
            if (entry is not null)
            {
                await StopAsync(name, CancellationToken.None).ConfigureAwait(false);
            }
            else if (IsOurVm(pid))
            {
                // Lost from the map (a corrupt map was set aside): still ours to stop.
                log.LogWarning("Restore VM {Name} (pid {Pid}) is missing from the map; killing it", name, pid);
                await KillAsync(new VmEntry { Name = name, Pid = pid, Channel = "", Ticket = "", Directory = "", Started = 0, Disks = [] })
                    .ConfigureAwait(false);
            }
        }

        foreach (var session in sessions.Values)
        {
            await session.DisposeAsync().ConfigureAwait(false);
        }

        sessions.Clear();
    }
}

public sealed class VmStartException(string message) : Exception(message);
