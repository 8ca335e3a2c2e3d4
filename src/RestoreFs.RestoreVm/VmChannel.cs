using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using RestoreFs.RestoreApi;

namespace RestoreFs.RestoreVm;

/// <summary>
/// The host end of a restore VM's channel. QEMU's virtio-serial chardev takes one connection at a time, so the first
/// process to connect owns it and serves every other local client through a proxy socket (0600, in the VM's private
/// directory) whose connections become streams of the multiplexed channel. Later clients use the proxy.
/// </summary>
public sealed class VmChannel : IAsyncDisposable
{
    private readonly MuxConnection? mux;
    private readonly Socket? proxy;
    private readonly CancellationTokenSource stop = new();
    private readonly Task? serving;

    private string? proxyPath;

    private VmChannel(IRestoreTransport transport, MuxConnection? mux, Socket? proxy, ILogger log)
    {
        Transport = transport;
        this.mux = mux;
        this.proxy = proxy;
        if (proxy is not null && mux is not null)
        {
            serving = Task.Run(() => ServeProxyAsync(proxy, mux, log, stop.Token));
        }
    }

    public IRestoreTransport Transport { get; }

    /// <summary>True when this process holds the channel (and serves the proxy).</summary>
    public bool Owner => mux is not null;

    /// <summary>Set when an owned channel broke (the VM died or powered off).</summary>
    public bool Broken => mux is not null && mux.Closed.IsCompleted;

    public static async Task<VmChannel> ConnectAsync(string channelSocket, string proxySocket, ILogger log, CancellationToken ct)
    {
        if (File.Exists(proxySocket))
        {
            try
            {
                var probe = await SocketTransport.Unix(proxySocket).OpenStreamAsync(ct).ConfigureAwait(false);
                await probe.DisposeAsync().ConfigureAwait(false);
                return new VmChannel(SocketTransport.Unix(proxySocket), null, null, log);
            }
            catch (IOException)
            {
                try
                {
                    File.Delete(proxySocket); // its owner is gone
                }
                catch (IOException)
                {
                }
            }
        }

        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(channelSocket), ct).ConfigureAwait(false);
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new IOException($"cannot connect to the VM channel {channelSocket}: {e.Message}", e);
        }

        var connection = await MuxConnection.ConnectAsync(new NetworkStream(socket, ownsSocket: true), ct).ConfigureAwait(false);
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            File.Delete(proxySocket);
            listener.Bind(new UnixDomainSocketEndPoint(proxySocket));
            File.SetUnixFileMode(proxySocket, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            listener.Listen(128);
        }
        catch (Exception e) when (e is SocketException or IOException)
        {
            log.LogWarning("No proxy for the VM channel at {Proxy}: {Reason}", proxySocket, e.Message);
            listener.Dispose();
            listener = null;
        }

        return new VmChannel(new MuxTransport(connection), connection, listener, log) { proxyPath = listener is null ? null : proxySocket };
    }

    private static async Task ServeProxyAsync(Socket listener, MuxConnection mux, ILogger log, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested && !mux.Closed.IsCompleted)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(ct).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                break;
            }

            _ = Task.Run(async () =>
            {
                await using var local = new NetworkStream(client, ownsSocket: true);
                Stream remote;
                try
                {
                    remote = await mux.OpenStreamAsync(ct).ConfigureAwait(false);
                }
                catch (IOException e)
                {
                    log.LogDebug("Proxy: channel closed: {Reason}", e.Message);
                    return;
                }

                await using (remote.ConfigureAwait(false))
                {
                    var up = Task.Run(async () =>
                    {
                        await local.CopyToAsync(remote, ct).ConfigureAwait(false);
                        await ((MuxStream)remote).CloseWriteAsync(ct).ConfigureAwait(false);
                    }, ct);
                    try
                    {
                        await remote.CopyToAsync(local, ct).ConfigureAwait(false);
                        client.Shutdown(SocketShutdown.Send);
                        await up.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
                    }
                    catch (Exception e) when (e is IOException or SocketException or OperationCanceledException)
                    {
                        log.LogDebug("Proxy stream ended: {Reason}", e.Message);
                    }
                }
            }, CancellationToken.None);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await stop.CancelAsync().ConfigureAwait(false);
        proxy?.Dispose();
        if (proxyPath is not null)
        {
            try
            {
                File.Delete(proxyPath);
            }
            catch (IOException)
            {
                // The VM's directory went with the VM.
            }
        }

        if (serving is not null)
        {
            await serving.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }

        await Transport.DisposeAsync().ConfigureAwait(false);
        stop.Dispose();
    }
}
