using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace RestoreFs.Nbd;

/// <summary>
/// A read-only NBD server (fixed newstyle handshake, structured replies, <c>base:allocation</c>) on a unix socket or
/// TCP on 127.0.0.1. One export per image; several connections per export, several requests in flight each.
/// A malformed request gets the protocol's error or a clean disconnect; other clients are not affected.
/// </summary>
public sealed class NbdServer : IAsyncDisposable
{
    private readonly NbdServerOptions options;
    private readonly ILoggerFactory logs;
    private readonly ILogger log;
    private readonly ConcurrentDictionary<string, (IBlockSource Source, string? Description)> exports = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<int, Task> connections = new();
    private readonly CancellationTokenSource stopping = new();
    private Socket? listener;
    private Task? acceptLoop;
    private int nextConnection;

    public NbdServer(NbdServerOptions options, ILoggerFactory logs)
    {
        this.options = options;
        this.logs = logs;
        log = logs.CreateLogger<NbdServer>();
    }

    /// <summary>The TCP port (when listening on TCP).</summary>
    public int Port { get; private set; }

    public string? SocketPath => options.UnixSocketPath;

    public IReadOnlyCollection<string> ExportNames => exports.Keys.ToList();

    public void AddExport(string name, IBlockSource source, string? description = null)
    {
        if (string.IsNullOrEmpty(name) || System.Text.Encoding.UTF8.GetByteCount(name) > 4096)
        {
            throw new ArgumentException("an export name has 1 to 4096 bytes");
        }

        exports[name] = (source, description);
    }

    public bool RemoveExport(string name) => exports.TryRemove(name, out _);

    internal bool TryGetExport(string name, out IBlockSource source, out string? description)
    {
        if (exports.TryGetValue(name, out var e))
        {
            (source, description) = e;
            return true;
        }

        source = null!;
        description = null;
        return false;
    }

    internal IEnumerable<(string Name, string? Description)> ListExports() => exports.Select(e => (e.Key, e.Value.Description));

    internal int MaxRequestBytes => options.MaxRequestBytes;

    internal long MaxInFlightBytes => Math.Max(options.MaxInFlightBytes, options.MaxRequestBytes);

    public Task StartAsync(CancellationToken ct)
    {
        if (options.UnixSocketPath is { } path)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
            if (File.Exists(path))
            {
                File.Delete(path);
            }

            listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            listener.Bind(new UnixDomainSocketEndPoint(path));
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        }
        else
        {
            listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            listener.Bind(new IPEndPoint(IPAddress.Loopback, options.TcpPort ?? 0));
            Port = ((IPEndPoint)listener.LocalEndPoint!).Port;
        }

        listener.Listen(64);
        acceptLoop = Task.Run(AcceptLoopAsync, ct);
        return Task.CompletedTask;
    }

    /// <summary>The URI of an export: <c>nbd+unix:///NAME?socket=PATH</c> or <c>nbd://127.0.0.1:PORT/NAME</c>.</summary>
    public string UriFor(string export) =>
        options.UnixSocketPath is { } path
            ? $"nbd+unix:///{Uri.EscapeDataString(export).Replace("%2F", "/", StringComparison.Ordinal)}?socket={path}"
            : $"nbd://127.0.0.1:{Port}/{Uri.EscapeDataString(export).Replace("%2F", "/", StringComparison.Ordinal)}";

    private async Task AcceptLoopAsync()
    {
        while (!stopping.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener!.AcceptAsync(stopping.Token).ConfigureAwait(false);
            }
            catch (Exception) when (stopping.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException e)
            {
                log.LogWarning("NBD accept failed: {Reason}", e.Message);
                continue;
            }

            var id = Interlocked.Increment(ref nextConnection);
            var connection = new NbdConnection(this, client, id, logs.CreateLogger<NbdConnection>());
            connections[id] = Task.Run(async () =>
            {
                try
                {
                    await connection.RunAsync(stopping.Token).ConfigureAwait(false);
                }
                finally
                {
                    connections.TryRemove(id, out _);
                    client.Dispose();
                }
            });
        }
    }

    public async ValueTask DisposeAsync()
    {
        await stopping.CancelAsync().ConfigureAwait(false);
        listener?.Dispose();
        if (acceptLoop is not null)
        {
            await acceptLoop.ConfigureAwait(false);
        }

        await Task.WhenAll(connections.Values).WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        if (options.UnixSocketPath is { } path && File.Exists(path))
        {
            File.Delete(path);
        }

        stopping.Dispose();
    }
}
