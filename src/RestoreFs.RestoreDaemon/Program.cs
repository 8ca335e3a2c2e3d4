using System.Globalization;
using System.Net;
using System.Net.Sockets;
using RestoreFs.RestoreApi;
using RestoreFs.RestoreDaemon.Disks;
using RestoreFs.RestoreDaemon.Native;
using RestoreFs.RestoreDaemon.Server;

namespace RestoreFs.RestoreDaemon;

/// <summary>
/// restorefs-daemon: runs inside the restore VM (started by its /init), finds the disks and serves the restore API.
/// On a host it can serve given block devices over a unix socket (for tests).
/// </summary>
public static class Program
{
    public const string SerialPortName = "org.restorefs.0";
    public const int VsockPort = 807;

    private const string Usage = """
        usage: restorefs-daemon --ticket-file FILE [--listen auto|serial:NAME|serial-path:DEVICE|vsock:PORT|unix:PATH|tcp:ADDR:PORT]
                                [--guest] [--disk NAME=DEVICE]... [--mount-root DIR] [--idle-timeout SECONDS]
                                [--loop-partitions]
        """;

    public static async Task<int> Main(string[] args)
    {
        // Requests block in disk reads that wait for the host: let many run even on one vCPU.
        ThreadPool.SetMinThreads(32, 32);
        string? ticketFile = null;
        var listen = "auto";
        var guest = false;
        var loops = false;
        var mountRoot = "/mnt";
        var idle = 600;
        var disks = new List<(string, string)>();
        try
        {
            for (var i = 0; i < args.Length; i++)
            {
                string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
                switch (args[i])
                {
                    case "--ticket-file": ticketFile = Next(); break;
                    case "--listen": listen = Next(); break;
                    case "--guest": guest = true; break;
                    case "--loop-partitions": loops = true; break;
                    case "--mount-root": mountRoot = Next(); break;
                    case "--idle-timeout": idle = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                    case "--disk":
                        var spec = Next();
                        var eq = spec.IndexOf('=', StringComparison.Ordinal);
                        if (eq <= 0)
                        {
                            throw new ArgumentException($"--disk wants NAME=DEVICE, not '{spec}'");
                        }

                        disks.Add((spec[..eq], spec[(eq + 1)..]));
                        break;
                    case "-h" or "--help":
                        Console.Out.WriteLine(Usage);
                        return 0;
                    default: throw new ArgumentException($"unknown argument '{args[i]}'");
                }
            }

            if (ticketFile is null)
            {
                throw new ArgumentException("--ticket-file is required");
            }
        }
        catch (Exception e) when (e is ArgumentException or FormatException or OverflowException)
        {
            await Console.Error.WriteLineAsync($"restorefs-daemon: {e.Message}\n{Usage}").ConfigureAwait(false);
            return 2;
        }

        string ticket;
        try
        {
            ticket = File.ReadAllText(ticketFile).Trim();
        }
        catch (IOException e)
        {
            Log($"cannot read the ticket: {e.Message}");
            return 1;
        }

        if (ticket.Length == 0)
        {
            Log($"the ticket file {ticketFile} is empty");
            return 1;
        }

        Directory.CreateDirectory(mountRoot);
        using var catalog = new DiskCatalog(new DiskCatalogOptions(disks.Count > 0 ? disks : guest ? null : [], mountRoot, Log, loops,
            ReadyFile: guest ? "/run/late-modules.done" : null));
        using var done = new CancellationTokenSource();
        using var server = new DaemonServer(catalog, new DaemonServerOptions(ticket, TimeSpan.FromSeconds(idle), TimeSpan.FromSeconds(3)), Log,
            () => done.Cancel());
        using var sigterm = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, c =>
        {
            c.Cancel = true;
            done.Cancel();
        });

        try
        {
            var serving = ServeAsync(listen, server, done.Token);
            await Task.WhenAny(serving, Task.Delay(Timeout.Infinite, done.Token)).ConfigureAwait(false);
            if (serving.IsFaulted)
            {
                await serving.ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is SocketException or IOException or ArgumentException)
        {
            Log($"cannot listen on {listen}: {e.Message}");
            return 1;
        }

        Log("stopping: unmounting volumes");
        catalog.Dispose();
        if (guest)
        {
            LibC.Sync();
            LibC.Reboot(0x4321FEDC); // LINUX_REBOOT_CMD_POWER_OFF
        }

        return 0;
    }

    private static async Task ServeAsync(string listen, DaemonServer server, CancellationToken ct)
    {
        if (listen == "auto")
        {
            listen = File.Exists("/dev/vsock") && TryVsock() ? $"vsock:{VsockPort}"
                : Listeners.FindSerialPort(SerialPortName) is not null ? "serial:" + SerialPortName
                : $"tcp:0.0.0.0:{VsockPort}";
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
                using (var socket = Listeners.Bind(new VsockEndPoint(VsockEndPoint.AnyCid, uint.Parse(value, CultureInfo.InvariantCulture))))
                {
                    await Listeners.ServeSocketAsync(socket, server, Log, ct).ConfigureAwait(false);
                }

                break;
            case "tcp":
                var last = value.LastIndexOf(':');
                using (var socket = Listeners.Bind(new IPEndPoint(IPAddress.Parse(value[..last]), int.Parse(value[(last + 1)..], CultureInfo.InvariantCulture))))
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
            using var probe = Listeners.Bind(new VsockEndPoint(VsockEndPoint.AnyCid, VsockPort));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    public static void Log(string message) =>
        Console.Error.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} restorefs-daemon: {message}");
}
