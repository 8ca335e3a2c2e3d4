using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using RestoreFs.RestoreApi;
using RestoreFs.RestoreDaemon.Disks;
using RestoreFs.RestoreDaemon.Native;
using RestoreFs.RestoreDaemon.Server;

namespace RestoreFs.RestoreDaemon;

/// <summary>The daemon's command line.</summary>
/// <param name="Disks">Test mode: block devices given as NAME=DEVICE instead of scanning the VM's virtio disks.</param>
/// <param name="LoopPartitions">Reach partitions through loop devices (hosts whose kernel shows no partitions).</param>
public sealed record DaemonOptions(
    string TicketFile,
    string Listen = "auto",
    bool Guest = false,
    IReadOnlyList<(string Name, string Device)>? Disks = null,
    string MountRoot = "/mnt",
    int IdleTimeoutSeconds = 600,
    bool LoopPartitions = false,
    bool Replay = false,
    string? GuestKeysFile = null)
{
    public const string Usage = """
        usage: restorefs-daemon --ticket-file FILE [--listen auto|serial:NAME|serial-path:DEVICE|vsock:PORT|unix:PATH|tcp:ADDR:PORT]
                                [--guest] [--disk NAME=DEVICE]... [--mount-root DIR] [--idle-timeout SECONDS]
                                [--loop-partitions] [--replay] [--guest-keys FILE]
        """;

    /// <summary>Parses the arguments; null for --help. Throws <see cref="ArgumentException"/> naming what is wrong.</summary>
    public static DaemonOptions? Parse(IReadOnlyList<string> args)
    {
        string? ticketFile = null;
        var o = new DaemonOptions("");
        var disks = new List<(string, string)>();
        for (var i = 0; i < args.Count; i++)
        {
            var arg = args[i];
            string Next() => i + 1 < args.Count ? args[++i] : throw new ArgumentException($"{arg} needs a value");
            switch (arg)
            {
                case "--ticket-file": ticketFile = Next(); break;
                case "--listen": o = o with { Listen = ParseListen(Next()) }; break;
                case "--guest": o = o with { Guest = true }; break;
                case "--loop-partitions": o = o with { LoopPartitions = true }; break;
                case "--replay": o = o with { Replay = true }; break;
                case "--guest-keys": o = o with { GuestKeysFile = Next() }; break;
                case "--mount-root": o = o with { MountRoot = Next() }; break;
                case "--idle-timeout":
                    var text = Next();
                    if (!int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var seconds) || seconds < 1)
                    {
                        throw new ArgumentException($"--idle-timeout wants a positive number of seconds, not '{text}'");
                    }

                    o = o with { IdleTimeoutSeconds = seconds };
                    break;
                case "--disk":
                    var spec = Next();
                    var eq = spec.IndexOf('=', StringComparison.Ordinal);
                    if (eq <= 0 || eq == spec.Length - 1)
                    {
                        throw new ArgumentException($"--disk wants NAME=DEVICE, not '{spec}'");
                    }

                    disks.Add((spec[..eq], spec[(eq + 1)..]));
                    break;
                case "-h" or "--help":
                    return null;
                default: throw new ArgumentException($"unknown argument '{arg}'");
            }
        }

        if (string.IsNullOrEmpty(ticketFile))
        {
            throw new ArgumentException("--ticket-file is required");
        }

        return o with { TicketFile = ticketFile, Disks = disks.Count > 0 ? disks : null };
    }

    /// <summary>Checks the form of a listen address (auto, serial:NAME, serial-path:DEV, vsock:PORT, unix:PATH, tcp:ADDR:PORT).</summary>
    public static string ParseListen(string listen)
    {
        if (listen == "auto")
        {
            return listen;
        }

        var colon = listen.IndexOf(':', StringComparison.Ordinal);
        var kind = colon < 0 ? listen : listen[..colon];
        var value = colon < 0 ? "" : listen[(colon + 1)..];
        var valid = kind switch
        {
            "serial" or "serial-path" or "unix" => value.Length > 0,
            "vsock" => uint.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out _),
            "tcp" => value.LastIndexOf(':') is var last and > 0
                     && IPAddress.TryParse(value[..last].Trim('[', ']'), out _)
                     && ushort.TryParse(value[(last + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out _),
            _ => false,
        };
        return valid ? listen : throw new ArgumentException($"bad listen address '{listen}' (auto, serial:NAME, serial-path:DEVICE, vsock:PORT, unix:PATH, tcp:ADDR:PORT)");
    }
}

/// <summary>
/// restorefs-daemon: runs inside the restore VM (started by its /init), finds the disks and serves the restore API.
/// On a host it can serve given block devices (<c>--disk NAME=DEVICE</c>) over a unix socket, for tests.
/// </summary>
public static class Program
{
    public const string SerialPortName = "org.restorefs.0";
    public const int VsockPort = 807;

    /// <summary>Written by the VM's /init once the late kernel modules (file systems, device-mapper) are loaded.</summary>
    public const string GuestModulesReadyFile = "/run/late-modules.done";

    public static async Task<int> Main(string[] args)
    {
        // Requests block in disk reads that wait for the host: let many run even on one vCPU.
        ThreadPool.SetMinThreads(32, 32);
        DaemonOptions options;
        try
        {
            var parsed = DaemonOptions.Parse(args);
            if (parsed is null)
            {
                Console.Out.WriteLine(DaemonOptions.Usage);
                return 0;
            }

            options = parsed;
        }
        catch (ArgumentException e)
        {
            await Console.Error.WriteLineAsync($"restorefs-daemon: {e.Message}\n{DaemonOptions.Usage}").ConfigureAwait(false);
            return 2;
        }

        if (ReadTicket(options.TicketFile) is not { } ticket)
        {
            return 1;
        }

        if (options.Guest)
        {
            GuestBoot.DaemonStarted();
            GuestSetup(options);
        }

        int code;
        using (var done = new CancellationTokenSource())
        {
            var reason = "stopped";
            void Stop(string why)
            {
                reason = why;
                done.Cancel();
            }

            IVolumeCatalog catalog;
            try
            {
                catalog = CreateCatalog(options);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or VolumeException)
            {
                Log($"cannot set up the disks: {e.Message}");
                return 1;
            }

            try
            {
                using var server = new DaemonServer(catalog,
                    new DaemonServerOptions(ticket, TimeSpan.FromSeconds(options.IdleTimeoutSeconds), TimeSpan.FromSeconds(3))
                    {
                        IoErrors = options.Guest ? KernelIoErrors.Open() : null,
                        Boot = options.Guest ? GuestBoot.Read : null,
                    }, Log,
                    () => Stop("shutdown requested"));
                if (options.Guest && catalog is DiskCatalog scan)
                {
                    // Runs at once when the scan is already done.
                    _ = scan.Scanned.ContinueWith(_ => GuestBoot.Scanned(), TaskScheduler.Default);
                }

                if (catalog is DiskCatalog disks && !disks.Scanned.IsCompleted)
                {
                    // The idle time counts from the end of the disk scan: a slow scan (TCG, LVM, a loaded host) must not
                    // power the VM off before the host had a chance to ask anything.
                    var scanning = server.Watchdog.Busy();
                    _ = disks.Scanned.ContinueWith(_ =>
                    {
                        server.Watchdog.Touch();
                        scanning.Dispose();
                    }, TaskScheduler.Default);
                }

                using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c =>
                {
                    c.Cancel = true;
                    Stop("SIGTERM");
                });
                using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c =>
                {
                    c.Cancel = true;
                    Stop("SIGINT");
                });
                code = await RunAsync(options.Listen, server, done.Token).ConfigureAwait(false);
                Log($"stopping ({reason}): unmounting volumes");
            }
            finally
            {
                (catalog as IDisposable)?.Dispose();
            }
        }

        if (options.Guest && code == 0)
        {
            PowerOff();
        }

        Log($"exiting with code {code}");
        return code;
    }

    /// <summary>The disks: virtio disks by serial in the VM, or the <c>--disk</c> devices. The one place that knows
    /// the concrete catalog.</summary>
    internal static IVolumeCatalog CreateCatalog(DaemonOptions o)
    {
        Directory.CreateDirectory(o.MountRoot);
        return new DiskCatalog(new DiskCatalogOptions(
            o.Disks ?? (o.Guest ? null : []),
            o.MountRoot,
            Log,
            o.LoopPartitions,
            ReadyFile: o.Guest ? GuestModulesReadyFile : null,
            Replay: o.Replay,
            GuestKeys: o.GuestKeysFile is { } keys ? ReadGuestKeys(keys) : null));
    }

    /// <summary>
    /// LUKS passphrases from the host (lines <c>&lt;uuid|*&gt; &lt;base64&gt;</c>); the file is removed after reading
    /// (in the VM it lives in the initramfs, i.e. RAM). Malformed lines are skipped with a log line naming the line
    /// number only.
    /// </summary>
    internal static Dictionary<string, byte[]> ReadGuestKeys(string file)
    {
        var keys = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        string[] lines;
        try
        {
            lines = File.ReadAllLines(file);
            File.Delete(file);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Log($"cannot read the guest keys {file}: {e.Message}");
            return keys;
        }

        for (var i = 0; i < lines.Length; i++)
        {
            var parts = lines[i].Split(' ');
            try
            {
                if (parts.Length == 2 && parts[0].Length > 0)
                {
                    keys.TryAdd(parts[0].ToLowerInvariant(), Convert.FromBase64String(parts[1]));
                    continue;
                }
            }
            catch (FormatException)
            {
            }

            Log($"guest keys: line {i + 1} is malformed, skipped");
        }

        Log($"{keys.Count} LUKS passphrase(s) given");
        return keys;
    }

    /// <summary>The ticket, read once; null (after a log line) when the file is missing, unreadable or empty.</summary>
    internal static string? ReadTicket(string file)
    {
        string ticket;
        try
        {
            ticket = File.ReadAllText(file).Trim();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Log($"cannot read the ticket file {file}: {e.Message}");
            return null;
        }

        if (ticket.Length == 0)
        {
            Log($"the ticket file {file} is empty");
            return null;
        }

        return ticket;
    }

    /// <summary>/init already mounted /proc, /sys and /dev and loads the modules: only what the daemon itself needs.</summary>
    private static void GuestSetup(DaemonOptions o)
    {
        foreach (var dir in new[] { o.MountRoot, "/run", "/tmp" })
        {
            try
            {
                Directory.CreateDirectory(dir);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                Log($"cannot create {dir}: {e.Message}");
            }
        }
    }

    private static void PowerOff()
    {
        Log("powering off");
        LibC.Sync();
        LibC.Reboot(0x4321FEDC); // LINUX_REBOOT_CMD_POWER_OFF; returns only when it failed
        Log($"reboot(POWER_OFF) failed: {LibC.StrError(LibC.Errno)}; trying poweroff -f");
        try
        {
            using var p = Process.Start(new ProcessStartInfo("poweroff", "-f") { UseShellExecute = false });
            p?.WaitForExit(10_000);
        }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException)
        {
            Log($"poweroff -f: {e.Message}");
        }
    }

    /// <summary>Serves until <paramref name="ct"/> is cancelled (stop, idle timeout, signal): 0, or 1 when listening failed.</summary>
    private static async Task<int> RunAsync(string listen, DaemonServer server, CancellationToken ct)
    {
        try
        {
            var serving = ServeAsync(listen, server, ct);
            await ((Task)Task.WhenAny(serving, Task.Delay(Timeout.Infinite, ct))).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            if (serving.IsFaulted)
            {
                await serving.ConfigureAwait(false);
            }

            return 0;
        }
        catch (Exception e) when (e is SocketException or IOException or ArgumentException or UnauthorizedAccessException)
        {
            Log($"cannot listen on {listen}: {e.Message}");
            return 1;
        }
    }

    /// <summary>What <c>--listen auto</c> picks: the virtio-serial port named <see cref="SerialPortName"/> when the
    /// VM has one (the host adds it only when it talks that way), else vsock when binding works, else TCP for QEMU
    /// user networking. The VM's /init passes the channel the host named on the kernel command line instead.</summary>
    internal static string ResolveAuto() =>
        Listeners.FindSerialPort(SerialPortName) is not null ? "serial:" + SerialPortName
        : File.Exists("/dev/vsock") && TryVsock() ? $"vsock:{VsockPort}"
        : $"tcp:0.0.0.0:{VsockPort}";

    private static async Task ServeAsync(string listen, DaemonServer server, CancellationToken ct)
    {
        if (listen == "auto")
        {
            listen = ResolveAuto();
            Log($"listening on {listen} (auto)");
        }
        else
        {
            Log($"listening on {listen}");
        }

        var colon = listen.IndexOf(':', StringComparison.Ordinal);
        var kind = colon < 0 ? listen : listen[..colon];
        var value = colon < 0 ? "" : listen[(colon + 1)..];
        switch (kind)
        {
            case "serial":
                string? port = null;
                for (var i = 0; i < 100 && (port = Listeners.FindSerialPort(value)) is null; i++)
                {
                    await Task.Delay(50, ct).ConfigureAwait(false);
                }

                await Listeners.ServeSerialAsync(port ?? throw new IOException($"no virtio-serial port named {value}"), server, Log, ct).ConfigureAwait(false);
                break;
            case "serial-path":
                await Listeners.ServeSerialAsync(value, server, Log, ct).ConfigureAwait(false);
                break;
            case "unix":
                File.Delete(value);
                using (var socket = Listeners.Bind(new UnixDomainSocketEndPoint(value)))
                {
                    File.SetUnixFileMode(value, UnixFileMode.UserRead | UnixFileMode.UserWrite);
                    await Listeners.ServeSocketAsync(socket, server, Log, ct).ConfigureAwait(false);
                }

                break;
            case "vsock":
                using (var listener = VsockSocket.Listen(VsockEndPoint.AnyCid, uint.Parse(value, CultureInfo.InvariantCulture)))
                {
                    await Listeners.ServeVsockAsync(listener, server, Log, ct).ConfigureAwait(false);
                }

                break;
            case "tcp":
                var last = value.LastIndexOf(':');
                var address = IPAddress.Parse(value[..last].Trim('[', ']'));
                using (var socket = Listeners.Bind(new IPEndPoint(address, int.Parse(value[(last + 1)..], CultureInfo.InvariantCulture))))
                {
                    await Listeners.ServeSocketAsync(socket, server, Log, ct).ConfigureAwait(false);
                }

                break;
            default:
                throw new ArgumentException($"unknown listen address '{listen}'");
        }
    }

    private static bool TryVsock()
    {
        try
        {
            using var probe = VsockSocket.Listen(VsockEndPoint.AnyCid, VsockPort);
            return true;
        }
        catch (IOException e)
        {
            Log($"no vsock: {e.Message}");
            return false;
        }
    }

    public static void Log(string message) =>
        Console.Error.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} restorefs-daemon: {message}");
}
