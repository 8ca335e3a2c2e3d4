using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using RestoreFs.RestoreApi;
using RestoreFs.RestoreDaemon.Disks;
using RestoreFs.RestoreDaemon.Handlers;

namespace RestoreFs.RestoreDaemon.Server;

public sealed record DaemonServerOptions(string Ticket, TimeSpan IdleTimeout, TimeSpan AuthFailureDelay, int MaxExtractions = 8, int MaxReadBytes = 16 << 20)
{
    /// <summary>The kernel's disk read errors (in the VM): a listing during which its volume could not be read ends
    /// with an error entry instead of looking complete.</summary>
    internal KernelIoErrors? IoErrors { get; init; }

    /// <summary>The boot's steps, for status (a daemon inside a restore VM); null elsewhere.</summary>
    internal Func<BootTimes?>? Boot { get; init; }
}

/// <summary>
/// The restore daemon's API: <c>/api2/json/{status,list,read,extract,xattrs,seek,stop}</c> over HTTP/1.1, one request per
/// stream, dispatched by the route table (<see cref="Routes"/>; the handlers are in RestoreFs.RestoreDaemon.Handlers).
/// Every request but <c>status</c> needs the ticket in <c>Authorization</c>; a wrong one is answered 401 only after
/// <see cref="DaemonServerOptions.AuthFailureDelay"/> from the request's start.
/// </summary>
public sealed class DaemonServer : IDisposable
{
    private readonly IVolumeCatalog catalog;
    private readonly DaemonServerOptions options;
    private readonly Action<string> log;
    private readonly Stopwatch uptime = Stopwatch.StartNew();
    private readonly byte[] ticket;
    private readonly CancellationTokenSource stopping = new();
    private readonly ListHandler list;
    private readonly Dictionary<string, Route> routeByEndpoint;

    public DaemonServer(IVolumeCatalog catalog, DaemonServerOptions options, Action<string> log, Action shutdown)
    {
        if (string.IsNullOrEmpty(options.Ticket))
        {
            throw new ArgumentException("the ticket is empty", nameof(options));
        }

        this.catalog = catalog;
        this.options = options;
        this.log = log;
        ticket = Encoding.UTF8.GetBytes(options.Ticket);
        Shutdown = () =>
        {
            stopping.Cancel();
            shutdown();
        };
        Watchdog = new Watchdog(options.IdleTimeout, () =>
        {
            log($"idle for {options.IdleTimeout.TotalSeconds:0} s: shutting down");
            Shutdown();
        });
        Watchdog.Touch();
        var volumes = new VolumeResolver(catalog);
        list = new ListHandler(volumes, options.IoErrors, log);
        Routes = BuildRoutes(volumes);
        routeByEndpoint = Routes.ToDictionary(r => r.Endpoint, StringComparer.Ordinal);
    }

    public Watchdog Watchdog { get; }

    /// <summary>Directory entries written into <c>list</c> answers so far (they stream: a reader that stops reading
    /// stops the listing).</summary>
    public long EntriesListed => list.EntriesListed;

    public Action Shutdown { get; }

    public CancellationToken Stopping => stopping.Token;

    /// <summary>Serves one request on <paramref name="stream"/> and closes it.</summary>
    public async Task HandleAsync(Stream stream, CancellationToken ct)
    {
        var started = Stopwatch.StartNew();
        await using var _ = stream.ConfigureAwait(false);
        var tracked = new WriteTracker(stream);
        stream = tracked;
        Http.Request? request;
        try
        {
            using var headTimeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            headTimeout.CancelAfter(TimeSpan.FromSeconds(30));
            request = await Http.ReadRequestAsync(new BufferedReader(stream), headTimeout.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or OperationCanceledException)
        {
            log($"bad request: {e.Message}");
            await TryAsync(() => Answers.TextAsync(stream, 400, e.Message, ct)).ConfigureAwait(false);
            return;
        }

        if (request is null)
        {
            return;
        }

        var status = 200;
        try
        {
            status = await RouteAsync(stream, request, started, ct).ConfigureAwait(false);
        }
        catch (BadRequestException e)
        {
            status = 400;
            if (!tracked.Started)
            {
                await TryAsync(() => Answers.TextAsync(stream, 400, e.Message, ct)).ConfigureAwait(false);
            }
        }
        catch (VolumeException e)
        {
            status = 400;
            if (!tracked.Started)
            {
                await TryAsync(() => Answers.TextAsync(stream, 400, e.Message, ct)).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException)
        {
            status = 599;
            log($"{request.Path}: the stream broke: {e.Message}");
        }
        catch (Exception e)
        {
            status = 500;
            log($"{request.Path}: {e}");
            if (!tracked.Started)
            {
                await TryAsync(() => Answers.TextAsync(stream, 400, e.Message, ct)).ConfigureAwait(false);
            }
        }

        log($"{request.Method} {request.Path}{Describe(request)} -> {status} in {started.Elapsed.TotalMilliseconds:0.0} ms");
    }

    private static string Describe(Http.Request r)
    {
        if (!r.Query.TryGetValue("path", out var b64))
        {
            return "";
        }

        try
        {
            return " " + Encoding.UTF8.GetString(Convert.FromBase64String(b64)) + (r.Query.TryGetValue("offset", out var o) ? $" @{o}+{r.Query.GetValueOrDefault("length")}" : "");
        }
        catch (FormatException)
        {
            return " (bad base64)";
        }
    }

    /// <summary>The endpoints: the route table (every endpoint the API has, nothing else answers but 404).</summary>
    internal IReadOnlyList<Route> Routes { get; }

    private IReadOnlyList<Route> BuildRoutes(VolumeResolver volumes)
    {
        var read = new ReadHandler(volumes, options.MaxReadBytes);
        var extract = new ExtractHandler(volumes, options.MaxExtractions, Watchdog);
        var xattrs = new XattrsHandler(volumes);
        var seek = new SeekHandler(volumes);
        return
        [
            new Route("", NeedsTicket: true, IdleUse.None, RootAsync),
            new Route("status", NeedsTicket: false, IdleUse.RearmUnlessKeepTimeout, StatusAsync),
            new Route("list", NeedsTicket: true, IdleUse.RearmAround, list.HandleAsync),
            new Route("read", NeedsTicket: true, IdleUse.RearmAround, read.HandleAsync),
            new Route("extract", NeedsTicket: true, IdleUse.BusyInHandler, extract.HandleAsync),
            new Route("xattrs", NeedsTicket: true, IdleUse.Rearm, xattrs.HandleAsync),
            new Route("seek", NeedsTicket: true, IdleUse.Rearm, seek.HandleAsync),
            new Route("stop", NeedsTicket: true, IdleUse.None, StopAsync),
        ];
    }

    private async Task<int> RouteAsync(Stream stream, Http.Request request, Stopwatch started, CancellationToken ct)
    {
        if (request.Method != "GET")
        {
            await Answers.TextAsync(stream, 405, "only GET is served", ct).ConfigureAwait(false);
            return 405;
        }

        var path = request.Path.TrimEnd('/');
        if (!path.StartsWith("/api2/json", StringComparison.Ordinal))
        {
            await Answers.TextAsync(stream, 404, $"no such path {request.Path}", ct).ConfigureAwait(false);
            return 404;
        }

        var endpoint = path.Length > "/api2/json".Length ? path["/api2/json/".Length..] : "";
        if (!routeByEndpoint.TryGetValue(endpoint, out var route))
        {
            await Answers.TextAsync(stream, 404, $"no such endpoint '{endpoint}'", ct).ConfigureAwait(false);
            return 404;
        }

        var authorised = Authorised(request.Header("authorization"));
        if (route.NeedsTicket && !authorised)
        {
            // Timers may fire a little early: wait until the delay has really passed.
            for (var wait = options.AuthFailureDelay - started.Elapsed; wait > TimeSpan.Zero; wait = options.AuthFailureDelay - started.Elapsed)
            {
                await Task.Delay(wait + TimeSpan.FromMilliseconds(1), ct).ConfigureAwait(false);
            }

            await Answers.TextAsync(stream, 401, "authentication failed", ct).ConfigureAwait(false);
            return 401;
        }

        if (route.Idle is IdleUse.Rearm or IdleUse.RearmAround
            || (route.Idle == IdleUse.RearmUnlessKeepTimeout && authorised && !RequestArgs.Flag(request, "keep-timeout")))
        {
            Watchdog.Touch();
        }

        await route.Handler(stream, request, ct).ConfigureAwait(false);
        if (route.Idle == IdleUse.RearmAround)
        {
            Watchdog.Touch();
        }

        return 200;
    }

    private bool Authorised(string? header) =>
        header is not null && CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(header), ticket);

    /// <summary>The API root: its endpoints, as <c>subdir</c>s.</summary>
    private Task RootAsync(Stream stream, Http.Request request, CancellationToken ct) =>
        Answers.JsonAsync(stream, w =>
        {
            w.WriteStartArray();
            foreach (var e in Routes.Select(r => r.Endpoint).Where(e => e.Length > 0).Order(StringComparer.Ordinal))
            {
                w.WriteStartObject();
                w.WriteString("subdir", e);
                w.WriteEndObject();
            }

            w.WriteEndArray();
        }, ct);

    private async Task StatusAsync(Stream stream, Http.Request request, CancellationToken ct)
    {
        var disks = await catalog.GetDisksAsync(ct).ConfigureAwait(false);
        var status = new DaemonStatus(
            (long)uptime.Elapsed.TotalSeconds,
            (long)Math.Ceiling(Watchdog.Remaining.TotalSeconds),
            disks.Select(d => new DiskStatus(d.Name, d.Size, d.Volumes.Select(v => v.Id).ToList(), d.Error)).ToList(),
            catalog.Mounts.Select(m => new MountStatus(m.Volume.Id, m.FsType, m.MountPoint, m.Error)).ToList(),
            options.Boot?.Invoke());
        await Answers.JsonAsync(stream, w => ApiJson.WriteStatus(w, status), ct).ConfigureAwait(false);
    }

    private Task StopAsync(Stream stream, Http.Request request, CancellationToken ct)
    {
        log("stop requested");
        // Scheduled before answering: a client that hangs up before the answer is written still stops us.
        _ = Task.Delay(100, CancellationToken.None).ContinueWith(_ => Shutdown(), TaskScheduler.Default);
        return Answers.TextAsync(stream, 200, "stopping", ct);
    }

    private async Task TryAsync(Func<Task> action, WriteTracker? tracker = null)
    {
        try
        {
            await action().ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or OperationCanceledException)
        {
            log($"could not send the error answer: {e.Message}");
        }
    }

    /// <summary>Knows whether an answer has begun: after that an error can only abort the stream.</summary>
    private sealed class WriteTracker(Stream inner) : Stream
    {
        public bool Started { get; private set; }

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => true;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override void Flush() => inner.Flush();

        public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);

        public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, count);

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(buffer, cancellationToken);

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            inner.ReadAsync(buffer, offset, count, cancellationToken);

        public override void Write(byte[] buffer, int offset, int count)
        {
            Started = true;
            inner.Write(buffer, offset, count);
        }

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Started = true;
            return inner.WriteAsync(buffer, cancellationToken);
        }

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();
    }

    public void Dispose()
    {
        Watchdog.Dispose();
        stopping.Dispose();
    }
}
