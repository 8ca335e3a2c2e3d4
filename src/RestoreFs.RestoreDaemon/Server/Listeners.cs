using System.Net;
using System.Net.Sockets;
using RestoreFs.RestoreApi;

namespace RestoreFs.RestoreDaemon.Server;

/// <summary>Where the daemon takes requests from: a listening socket (unix, TCP, vsock) or the virtio-serial port.</summary>
public static class Listeners
{
    /// <summary>Accepts connections; each one carries one request.</summary>
    public static async Task ServeSocketAsync(Socket listener, DaemonServer server, Action<string> log, CancellationToken ct)
    {
        GuestBoot.Listening();
        listener.Listen(256);
        while (!ct.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                break;
            }
            catch (SocketException e)
            {
                log($"accept failed: {e.Message}");
                await Task.Delay(100, ct).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
                continue;
            }

            _ = Task.Run(() => server.HandleAsync(new NetworkStream(client, ownsSocket: true), ct), CancellationToken.None);
        }
    }

    /// <summary>Accepts vsock connections (through libc: .NET's Socket does not take AF_VSOCK); one request each.</summary>
    public static async Task ServeVsockAsync(VsockSocket.VsockListener listener, DaemonServer server, Action<string> log, CancellationToken ct)
    {
        GuestBoot.Listening();
        using var wake = ct.Register(listener.Dispose);
        while (!ct.IsCancellationRequested)
        {
            Stream? client;
            try
            {
                client = await listener.AcceptAsync().ConfigureAwait(false);
            }
            catch (IOException e)
            {
                log(e.Message);
                await Task.Delay(100, ct).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
                continue;
            }

            if (client is null)
            {
                break;
            }

            _ = Task.Run(() => server.HandleAsync(client, ct), CancellationToken.None);
        }
    }

    /// <summary>
    /// Serves the multiplexed protocol on a character device (the guest end of the virtio-serial port), reopening it
    /// whenever the host side goes away: while no host is connected, reads return end of file.
    /// </summary>
    public static async Task ServeSerialAsync(string device, DaemonServer server, Action<string> log, CancellationToken ct)
    {
        GuestBoot.Listening();
        var idle = 0;
        while (!ct.IsCancellationRequested)
        {
            FileStream port;
            try
            {
                port = new FileStream(device, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, 0, FileOptions.None);
            }
            catch (IOException e)
            {
                log($"cannot open {device}: {e.Message}");
                await Task.Delay(500, ct).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
                continue;
            }

            var mux = MuxConnection.Serve(port);
            var served = 0;
            try
            {
                while (await mux.AcceptAsync(ct).ConfigureAwait(false) is { } stream)
                {
                    served++;
                    _ = Task.Run(() => server.HandleAsync(stream, ct), CancellationToken.None);
                }
            }
            catch (OperationCanceledException)
            {
            }

            await mux.DisposeAsync().ConfigureAwait(false);
            if (served > 0)
            {
                log($"host session on {device} ended after {served} request(s){(mux.Error is null ? "" : ": " + mux.Error.Message)}");
                idle = 0;
            }

            // No host connected: poll gently, faster right after a session so a reconnecting host is served soon.
            await Task.Delay(Math.Min(20 + idle++ * 10, 200), ct).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
    }

    /// <summary>The virtio-serial port device with the given name, from /sys/class/virtio-ports/*/name.</summary>
    public static string? FindSerialPort(string name)
    {
        const string ports = "/sys/class/virtio-ports";
        if (!Directory.Exists(ports))
        {
            return null;
        }

        foreach (var dir in Directory.GetDirectories(ports))
        {
            var file = Path.Combine(dir, "name");
            if (File.Exists(file) && File.ReadAllText(file).Trim() == name)
            {
                return "/dev/" + Path.GetFileName(dir);
            }
        }

        return null;
    }

    public static Socket Bind(EndPoint endPoint)
    {
        var socket = endPoint switch
        {
            UnixDomainSocketEndPoint => new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified),
            VsockEndPoint => throw new ArgumentException("vsock listens through VsockSocket.Listen"),
            _ => new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp),
        };
        if (endPoint is IPEndPoint)
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
        }

        socket.Bind(endPoint);
        return socket;
    }
}
