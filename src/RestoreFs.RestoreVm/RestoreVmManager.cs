using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using RestoreFs.RestoreApi;

namespace RestoreFs.RestoreVm;

/// <summary>How the host talks to the daemon in the VM.</summary>
public enum VmChannelKind
{
    /// <summary>vsock where <c>/dev/vhost-vsock</c> exists, else virtio-serial.</summary>
    Auto,

    /// <summary>A virtio-serial port on a unix socket (0700 directory), multiplexed: needs no host module.</summary>
    Serial,

    /// <summary><c>vhost-vsock</c>, a connection per request to the VM's CID, port 807 (PBS's way).</summary>
    Vsock,
}

public sealed record RestoreVmOptions
{
    public required string RuntimeDirectory { get; init; }

    /// <summary>Holds vmlinux, vmlinuz and initramfs.img from scripts/build-restore-image.sh.</summary>
    public required string ImageDirectory { get; init; }

    /// <summary>How long a boot may take before it is given up (and tried once more on the pc machine).</summary>
    public TimeSpan StartTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>How long a boot under KVM may take: KVM that does not work here must fail fast.</summary>
    public TimeSpan KvmStartTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>How long a health check (status) of a running VM may take before the VM counts as unreachable.</summary>
    public TimeSpan ProbeTimeout { get; init; } = TimeSpan.FromSeconds(5);

    public VmChannelKind Channel { get; init; } = VmChannelKind.Auto;

    public bool Debug { get; init; }

    /// <summary>The daemon powers the VM off after this long without list/read/extract.</summary>
    public int IdleTimeoutSeconds { get; init; } = 600;

    /// <summary>Restore VMs one manager runs at once; 0 sizes it to the host's memory (see <see cref="RestoreVmManager.DefaultMaxVms"/>).</summary>
    public int MaxVms { get; init; }

    public string Qemu { get; init; } = "qemu-system-x86_64";

    /// <summary>When set, each VM session's disks are throwaway copy-on-write overlays (journal replay); null: read-only disks.</summary>
    public IVmDiskOverlays? Overlays { get; init; }

    /// <summary>LUKS passphrases for the guest (the <c>--guest-passphrase-file</c> format), handed over in the initramfs copy.</summary>
    public byte[]? GuestKeys { get; init; }
}

/// <summary>
/// Gives a VM session writable disks backed by throwaway overlays (a journal replay writes there, never into the
/// backup). <see cref="Open"/> is called once per VM start with that VM's private directory; <see cref="Release"/>
/// when the VM is gone (its directory is removed), and frees the overlays.
/// </summary>
public interface IVmDiskOverlays
{
    IReadOnlyList<VmDisk> Open(string vmDirectory, IReadOnlyList<VmDisk> disks);

    void Release(string vmDirectory);
}

/// <summary>A running VM this process talks to.</summary>
public sealed class VmSession : IAsyncDisposable
{
    private readonly VmChannel? channel;
    private readonly RestoreClient client;

    internal VmSession(VmEntry entry, VmChannel? channel, RestoreClient client)
    {
        Entry = entry;
        this.channel = channel;
        this.client = client;
    }

    public VmEntry Entry { get; }

    public IRestoreClient Client => client;

    /// <summary>The VM is gone: its multiplexed channel closed (virtio-serial), or its QEMU exited (vsock).</summary>
    public bool Broken => channel is not null ? channel.Broken : !QemuProcessControl.IsAlive(Entry);

    public async ValueTask DisposeAsync()
    {
        await client.DisposeAsync().ConfigureAwait(false);
        if (channel is not null)
        {
            await channel.DisposeAsync().ConfigureAwait(false);
        }
    }
}

/// <summary>
/// Starts, reuses, probes and stops restore VMs, one per snapshot, recorded in the <see cref="VmStateMap"/> (PBS's
/// ensure_running / cleanup_map / status / stop). KVM is tried when /dev/kvm opens; a VM that dies or stays silent
/// under it marks KVM unusable (in the runtime directory) and starts again under TCG. A microvm that does not answer
/// in time is retried once on the pc machine.
/// </summary>
public sealed class RestoreVmManager : IAsyncDisposable
{
    private readonly RestoreVmOptions options;
    private readonly ILogger log;
    private readonly QemuProcessControl process;
    private readonly ConcurrentDictionary<string, SemaphoreSlim> locks = new();
    private readonly ConcurrentDictionary<string, VmSession> sessions = new();
    private readonly ConcurrentDictionary<string, VmEntry> started = new();
    private readonly Lazy<VmChannelKind> channelKind;
    private readonly ConcurrentDictionary<string, long> lastUse = new();
    private readonly Lazy<int> defaultLimit = new(DefaultMaxVms);
    private int accelLogged;

    public RestoreVmManager(RestoreVmOptions options, ILoggerFactory logs)
    {
        this.options = options;
        log = logs.CreateLogger<RestoreVmManager>();
        process = new QemuProcessControl(options, log);
        Map = new VmStateMap(options.RuntimeDirectory, log);
        channelKind = new Lazy<VmChannelKind>(ChooseChannel);
    }

    public VmStateMap Map { get; }

    /// <summary>The channel new VMs get (decided once, logged).</summary>
    public VmChannelKind Channel => channelKind.Value;

    private string KvmMarker => Path.Combine(options.RuntimeDirectory, "kvm-unusable");

    /// <summary>Whether this process holds a working session with the named VM (using it starts nothing).</summary>
    public bool HasLiveSession(string name) => sessions.TryGetValue(name, out var s) && !s.Broken;

    /// <summary>Returns a live session for the snapshot: reused from this process, from the map, or a new VM.</summary>
    public async Task<VmSession> EnsureRunningAsync(string name, IReadOnlyList<VmDisk> disks, CancellationToken ct)
    {
        lastUse[name] = Environment.TickCount64;
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

            var live = await CleanupAsync(ct).ConfigureAwait(false);
            var existing = Map.Read().FirstOrDefault(e => e.Name == name);
            uint? cid = null;
            if (existing is not null)
            {
                // keep-timeout=false: this status re-arms the VM's idle timer.
                var connected = live.ContainsKey(name) ? await TryConnectAsync(existing, keepTimeout: false, ct).ConfigureAwait(false) : null;
                if (connected?.Session is { } reused)
                {
                    log.LogInformation("Reusing restore VM {Name} (pid {Pid}, {Channel})", name, existing.Pid, existing.Channel);
                    sessions[name] = reused;
                    return reused;
                }

                log.LogWarning("Restore VM {Name} (pid {Pid}) does not answer: restarting it", name, existing.Pid);
                cid = existing.VsockCid; // PBS restarts a stale VM with the same CID
                await KillAsync(existing).ConfigureAwait(false);
            }

            await MakeRoomAsync(name, ct).ConfigureAwait(false);
            var session = await StartAsync(name, disks, cid, ct).ConfigureAwait(false);
            sessions[name] = session;
            started[name] = session.Entry;
            return session;
        }
        finally
        {
            gate.Release();
        }
    }

    /// <summary>
    /// Restore VMs a mount may run at once by default: half the host's available memory in VMs of the usual size,
    /// at least 1, at most 16.
    /// </summary>
    public static int DefaultMaxVms()
    {
        long availableKb = 0;
        try
        {
            var line = File.ReadLines("/proc/meminfo").FirstOrDefault(l => l.StartsWith("MemAvailable:", StringComparison.Ordinal));
            if (line is not null)
            {
                availableKb = long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
            }
        }
        catch (Exception e) when (e is IOException or FormatException)
        {
        }

        var perVm = (QemuLauncher.MemoryMiB(1, debug: false) + 64) * 1024L; // guest RAM + QEMU's own
        return (int)Math.Clamp(availableKb / 2 / perVm, 1, 16);
    }

    private int Limit => options.MaxVms > 0 ? options.MaxVms : defaultLimit.Value;

    /// <summary>
    /// Before starting <paramref name="name"/>: at the limit, the least recently used VM of this manager is stopped, unless
    /// it was used in the last few seconds (then every VM is busy and the caller gets EAGAIN-like
    /// <see cref="VmLimitException"/>).
    /// </summary>
    private async Task MakeRoomAsync(string name, CancellationToken ct)
    {
        while (true)
        {
            var running = sessions.Where(kv => kv.Key != name && !kv.Value.Broken).Select(kv => kv.Key).ToList();
            if (running.Count < Limit)
            {
                return;
            }

            var oldest = running.OrderBy(n => lastUse.GetValueOrDefault(n)).First();
            var idleMs = Environment.TickCount64 - lastUse.GetValueOrDefault(oldest);
            if (idleMs < 3000)
            {
                log.LogWarning("Not starting a restore VM for {Name}: {Count} VMs run (the limit) and all were used in the last seconds", name, running.Count);
                throw new VmLimitException($"{running.Count} restore VMs are running (the limit, --max-vms) and all are in use; try again shortly");
            }

            log.LogInformation("Stopping restore VM {Oldest} (idle {Seconds:0} s) to make room for {Name} (limit {Limit})", oldest, idleMs / 1000.0, name, Limit);
            await StopAsync(oldest, ct).ConfigureAwait(false);
            sessions.TryRemove(oldest, out _);
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

    /// <summary>
    /// PBS's cleanup_map: probes every VM in the map (status with keep-timeout, so that the probe does not keep it
    /// alive) and removes the unreachable ones with a log line each: QEMU gone; the mount that served its disks gone
    /// (killed); no answer within the probe timeout (killed). Returns the status of every VM that answered.
    /// </summary>
    public async Task<IReadOnlyDictionary<string, DaemonStatus>> CleanupAsync(CancellationToken ct)
    {
        var entries = await Map.ReadLockedAsync(ct).ConfigureAwait(false);
        var verdicts = await Task.WhenAll(entries.Select(async e => (Entry: e, Verdict: await JudgeAsync(e, ct).ConfigureAwait(false))))
            .ConfigureAwait(false);
        var answered = new Dictionary<string, DaemonStatus>(StringComparer.Ordinal);
        var gone = new List<(VmEntry Entry, string Reason)>();
        foreach (var (entry, (status, reason, kill)) in verdicts)
        {
            if (status is not null)
            {
                answered[entry.Name] = status;
                continue;
            }

            if (kill)
            {
                process.Kill(entry);
            }

            gone.Add((entry, reason!));
        }

        if (gone.Count > 0)
        {
            await Map.UpdateAsync(list => list.RemoveAll(x => gone.Any(g => g.Entry.Name == x.Name && g.Entry.Pid == x.Pid)), ct)
                .ConfigureAwait(false);
            foreach (var (entry, reason) in gone)
            {
                log.LogInformation("Restore VM {Name} (pid {Pid}, {Channel}) was not reachable, removed from the map: {Reason}",
                    entry.Name, entry.Pid, entry.Channel, reason);
                if (sessions.TryGetValue(entry.Name, out var session) && session.Entry.Pid == entry.Pid && sessions.TryRemove(entry.Name, out _))
                {
                    await session.DisposeAsync().ConfigureAwait(false);
                }

                await QemuProcessControl.WaitForExitAsync(entry, TimeSpan.FromSeconds(5)).ConfigureAwait(false);
                process.DeleteDirectory(entry.Directory);
            }
        }

        return answered;
    }

    private async Task<(DaemonStatus? Status, string? Reason, bool Kill)> JudgeAsync(VmEntry entry, CancellationToken ct)
    {
        if (!QemuProcessControl.IsAlive(entry))
        {
            return (null, "its QEMU is gone", false);
        }

        if (entry.Owner > 0 && entry.Owner != Environment.ProcessId && !Directory.Exists($"/proc/{entry.Owner}"))
        {
            return (null, $"the process that served its disks (pid {entry.Owner}) is gone; stopping it", true);
        }

        DaemonStatus? status;
        if (sessions.TryGetValue(entry.Name, out var session) && session.Entry.Pid == entry.Pid && !session.Broken)
        {
            status = await ProbeAsync(session.Client, keepTimeout: true, ct).ConfigureAwait(false);
        }
        else
        {
            var probe = await TryConnectAsync(entry, keepTimeout: true, ct).ConfigureAwait(false);
            status = probe?.Status;
            if (probe is { } p)
            {
                await p.Session.DisposeAsync().ConfigureAwait(false);
            }
        }

        ct.ThrowIfCancellationRequested();
        return status is null ? (null, $"it does not answer status (probe timeout {options.ProbeTimeout.TotalSeconds:0.#} s); stopping it", true) : (status, null, false);
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
        else if (await TryConnectAsync(entry, keepTimeout: true, ct).ConfigureAwait(false) is { } other)
        {
            await TryStopAsync(other.Session.Client, ct).ConfigureAwait(false);
            await other.Session.DisposeAsync().ConfigureAwait(false);
        }

        await QemuProcessControl.WaitForExitAsync(entry, TimeSpan.FromSeconds(5)).ConfigureAwait(false);
        await KillAsync(entry).ConfigureAwait(false);
        log.LogInformation("Stopped restore VM {Name} (pid {Pid})", name, entry.Pid);
        return true;
    }

    /// <summary>Stops every VM of this user; returns their names.</summary>
    public async Task<IReadOnlyList<string>> StopAllAsync(CancellationToken ct)
    {
        await CleanupAsync(ct).ConfigureAwait(false);
        var stopped = new List<string>();
        foreach (var entry in Map.Read())
        {
            if (await StopAsync(entry.Name, ct).ConfigureAwait(false))
            {
                stopped.Add(entry.Name);
            }
        }

        return stopped;
    }

    /// <summary>Live status of every VM in the map (after removing the unreachable ones).</summary>
    public async Task<IReadOnlyList<(VmEntry Entry, DaemonStatus? Status)>> StatusAsync(CancellationToken ct)
    {
        var live = await CleanupAsync(ct).ConfigureAwait(false);
        return Map.Read().Select(e => (e, live.GetValueOrDefault(e.Name))).ToList();
    }

    private async Task<(VmSession Session, DaemonStatus Status)?> TryConnectAsync(VmEntry entry, bool keepTimeout, CancellationToken ct)
    {
        if (!QemuProcessControl.IsAlive(entry))
        {
            return null;
        }

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(options.ProbeTimeout);
        VmChannel? channel = null;
        RestoreClient? client = null;
        try
        {
            if (entry.SerialSocket is { } socket)
            {
                channel = await VmChannel.ConnectAsync(socket, QemuLauncher.ProxySocket(entry.Directory), log, timeout.Token).ConfigureAwait(false);
                client = new RestoreClient(channel.Transport, entry.Ticket, ownsTransport: false);
            }
            else if (entry.VsockCid is { } cid)
            {
                client = new RestoreClient(SocketTransport.Vsock(cid, QemuLauncher.VsockPort), entry.Ticket);
            }
            else
            {
                log.LogWarning("Restore VM {Name} has an unknown channel {Channel}", entry.Name, entry.Channel);
                return null;
            }

            var status = await ProbeAsync(client, keepTimeout, timeout.Token).ConfigureAwait(false);
            if (status is not null)
            {
                var session = new VmSession(entry, channel, client);
                channel = null;
                client = null;
                return (session, status);
            }
        }
        catch (Exception e) when (e is IOException or OperationCanceledException && !ct.IsCancellationRequested)
        {
            log.LogDebug("Cannot reach restore VM {Name}: {Reason}", entry.Name, e.Message);
        }
        finally
        {
            if (client is not null)
            {
                await client.DisposeAsync().ConfigureAwait(false);
            }

            if (channel is not null)
            {
                await channel.DisposeAsync().ConfigureAwait(false);
            }
        }

        return null;
    }

    private async Task<DaemonStatus?> ProbeAsync(IRestoreClient client, bool keepTimeout, CancellationToken ct)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(options.ProbeTimeout);
        try
        {
            return await client.StatusAsync(keepTimeout, timeout.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or RestoreApiException or InvalidDataException && !ct.IsCancellationRequested)
        {
            return null;
        }
    }

    private VmChannelKind ChooseChannel()
    {
        var kind = options.Channel;
        if (kind == VmChannelKind.Auto)
        {
            kind = File.Exists("/dev/vhost-vsock") ? VmChannelKind.Vsock : VmChannelKind.Serial;
        }

        if (kind == VmChannelKind.Vsock)
        {
            log.LogInformation("Restore VMs talk over vsock (vhost-vsock-pci, port {Port}, a CID per VM)", QemuLauncher.VsockPort);
        }
        else
        {
            log.LogInformation("Restore VMs talk over virtio-serial on a unix socket in their private directory, multiplexed{Why}",
                options.Channel == VmChannelKind.Serial ? "" : " (no /dev/vhost-vsock here)");
        }

        return kind;
    }

    private async Task<VmSession> StartAsync(string name, IReadOnlyList<VmDisk> disks, uint? cid, CancellationToken ct)
    {
        foreach (var file in new[] { "vmlinux", "vmlinuz", "initramfs.img" })
        {
            if (!File.Exists(Path.Combine(options.ImageDirectory, file)))
            {
                throw new IOException($"the restore image is incomplete: {Path.Combine(options.ImageDirectory, file)} is missing (run make restore-image)");
            }
        }

        var kvm = KvmUsable();
        Exception? last = null;
        string? kvmFailure = null;
        foreach (var (machine, accel) in Attempts(kvm))
        {
            try
            {
                var session = await StartOnceAsync(name, disks, machine, accel, cid, ct).ConfigureAwait(false);
                if (kvmFailure is not null)
                {
                    // TCG started what KVM could not: KVM is what fails here (not the disks or the image).
                    await File.WriteAllTextAsync(KvmMarker, kvmFailure + "\n", CancellationToken.None).ConfigureAwait(false);
                    log.LogWarning("KVM is unusable here (noted in {Marker}); restore VMs run under TCG from now on", KvmMarker);
                }

                return session;
            }
            catch (VmStartException e)
            {
                last = e;
                log.LogWarning("Restore VM {Name} failed to start ({Machine}, {Accel}): {Reason}", name, machine, accel, e.Message);
                if (accel == "kvm")
                {
                    kvmFailure = e.Message;
                }
            }
        }

        throw new IOException($"the restore VM for {name} did not start: {last?.Message}", last);
    }

    private bool KvmUsable()
    {
        var marked = File.Exists(KvmMarker);
        var usable = !marked && KvmOpens();
        if (Interlocked.Exchange(ref accelLogged, 1) == 0)
        {
            if (usable)
            {
                log.LogInformation("/dev/kvm opens: the first restore VM tries KVM (TCG if it fails within {Seconds:0} s)", options.KvmStartTimeout.TotalSeconds);
            }
            else
            {
                log.LogInformation("Restore VMs run under TCG: {Why}", marked ? $"KVM failed here before ({KvmMarker})" : "/dev/kvm cannot be opened");
            }
        }

        return usable;
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

    /// <summary>The ticket: 32 random bytes, hex. Only the map (0600) and the VM ever see it.</summary>
    private static string NewTicket() => Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));

    private async Task<VmSession> StartOnceAsync(string name, IReadOnlyList<VmDisk> disks, VmMachine machine, string accel, uint? cidRequest,
        CancellationToken ct)
    {
        var watch = Stopwatch.StartNew();
        var vmDir = process.CreateDirectory();
        var ticket = NewTicket();
        var vsock = Channel == VmChannelKind.Vsock;
        uint? cid = vsock ? cidRequest ?? QemuLauncher.RequestCid(Map.Read().Select(e => e.VsockCid).OfType<uint>(), QemuProcessControl.CurrentUid()) : null;
        int pid;
        try
        {
            var initrd = Initramfs.AppendTicket(Path.Combine(options.ImageDirectory, "initramfs.img"), System.Text.Encoding.ASCII.GetBytes(ticket), vmDir,
                options.GuestKeys);
            var vmDisks = options.Overlays?.Open(vmDir, disks) ?? disks;
            log.LogInformation("Starting restore VM {Name}: {Disks} disk(s), {Machine} under {Accel}, {Channel}", name, disks.Count, machine, accel,
                vsock ? $"vsock CID {cid}" : "virtio-serial");
            (pid, cid) = await process.LaunchAsync(name, initrd, vmDir, vmDisks, machine, accel, cid, ct).ConfigureAwait(false);
        }
        catch
        {
            process.DeleteDirectory(vmDir);
            throw;
        }

        var entry = new VmEntry
        {
            Name = name, Pid = pid, Channel = cid is { } c ? VmEntry.VsockPrefix + c : VmEntry.SerialPrefix + QemuLauncher.ChannelSocket(vmDir),
            Ticket = ticket, Directory = vmDir, Started = DateTimeOffset.UtcNow.ToUnixTimeSeconds(), Disks = disks.Select(d => d.Serial).ToList(),
            Owner = Environment.ProcessId, Accelerator = accel,
        };
        var deadline = accel == "kvm" ? options.KvmStartTimeout : options.StartTimeout;
        VmSession session;
        BootTimes? boot = null;
        try
        {
            session = await process.WaitUntilAnswersAsync(entry, deadline, watch,
                async () =>
                {
                    var connected = await TryConnectAsync(entry, keepTimeout: false, ct).ConfigureAwait(false);
                    boot = connected?.Status.Boot;
                    return connected?.Session;
                }, ct).ConfigureAwait(false);
        }
        catch (VmStartException)
        {
            process.DeleteDirectory(vmDir);
            throw;
        }

        await Map.UpdateAsync(entries =>
        {
            entries.RemoveAll(e => e.Name == name);
            entries.Add(entry);
            return 0;
        }, ct).ConfigureAwait(false);
        var answered = watch.Elapsed.TotalSeconds;
        if (boot is { } b)
        {
            // Where the cold start went: the guest's steps on its own clock, and before its clock started (QEMU's start,
            // loading the kernel and initramfs) plus the host's own part, as the rest.
            log.LogInformation(
                "Restore VM {Name} (pid {Pid}) answered after {Seconds:0.00} s: QEMU start and host side {Host:0.00} s; on the guest's clock " +
                "/init at {Init:0.00} s, early modules in at {Modules:0.00} s, daemon started at {Daemon:0.00} s, listening at {Listening:0.00} s, " +
                "disks scanned at {Scanned:0.00} s, answered at {Now:0.00} s",
                name, pid, answered, answered - b.Now, b.Init, b.Modules, b.Daemon, b.Listening, b.Scanned, b.Now);
        }
        else
        {
            log.LogInformation("Restore VM {Name} (pid {Pid}) answered after {Seconds:0.00} s", name, pid, answered);
        }

        return session;
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

    /// <summary>Kills the VM's QEMU (only if the pid is still that VM), then drops it from the map and its directory.</summary>
    private async Task KillAsync(VmEntry entry)
    {
        process.Kill(entry);
        await QemuProcessControl.WaitForExitAsync(entry, TimeSpan.FromSeconds(5)).ConfigureAwait(false);
        await Map.UpdateAsync(entries => entries.RemoveAll(e => e.Name == entry.Name && e.Pid == entry.Pid), CancellationToken.None).ConfigureAwait(false);
        process.DeleteDirectory(entry.Directory);
    }

    /// <summary>Stops the VMs this process started (their disks die with it) and closes the others' sessions.</summary>
    public async ValueTask DisposeAsync()
    {
        foreach (var (name, entry) in started)
        {
            if (Map.Read().Any(e => e.Name == name && e.Pid == entry.Pid))
            {
                await StopAsync(name, CancellationToken.None).ConfigureAwait(false);
            }
            else if (QemuProcessControl.IsAlive(entry))
            {
                // Lost from the map (a corrupt map was set aside): still ours to stop.
                log.LogWarning("Restore VM {Name} (pid {Pid}) is missing from the map; killing it", name, entry.Pid);
                await KillAsync(entry).ConfigureAwait(false);
            }
        }

        started.Clear();
        foreach (var session in sessions.Values)
        {
            await session.DisposeAsync().ConfigureAwait(false);
        }

        sessions.Clear();
    }
}

public sealed class VmStartException(string message) : Exception(message);

/// <summary>The mount runs as many restore VMs as it may, all in use.</summary>
public sealed class VmLimitException(string message) : Exception(message);
