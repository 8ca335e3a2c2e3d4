using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text;

namespace RestoreFs.RestoreApi;

/// <summary>
/// The host's client of the restore daemon: one HTTP/1.1 request per stream of the transport, the ticket in the
/// <c>Authorization</c> header. Daemon errors become <see cref="RestoreApiException"/>; a broken channel is an
/// <see cref="IOException"/> (the caller may restart the VM and retry).
/// </summary>
public sealed class RestoreClient(IRestoreTransport transport, string ticket, bool ownsTransport = true) : IRestoreClient
{
    public const string Prefix = "/api2/json/";

    public async Task<DaemonStatus> StatusAsync(bool keepTimeout, CancellationToken ct)
    {
        await using var exchange = await SendAsync("status", ct, ("keep-timeout", keepTimeout ? "true" : "false")).ConfigureAwait(false);
        var body = await exchange.ReadAllAsync(ct).ConfigureAwait(false);
        try
        {
            return ApiJson.ReadStatus(body);
        }
        catch (Exception e) when (IsMalformed(e))
        {
            throw new IOException($"the restore daemon's status answer is malformed: {e.Message}", e);
        }
    }

    public IAsyncEnumerable<ArchiveEntry> ListAsync(byte[] path, CancellationToken ct) => ListAsync(path, 0, ct);

    public IAsyncEnumerable<ArchiveEntry> ListAsync(byte[] path, int inlineMax, CancellationToken ct) => ListAsync(path, inlineMax, false, ct);

    public IAsyncEnumerable<ArchiveEntry> ListAsync(byte[] path, int inlineMax, bool extents, CancellationToken ct) =>
        ListAsync(path, new ListOptions(inlineMax, extents), ct);

    public async IAsyncEnumerable<ArchiveEntry> ListAsync(byte[] path, ListOptions options, [EnumeratorCancellation] CancellationToken ct)
    {
        long? start = null;
        var pages = 0;
        do
        {
            var query = new List<(string, string)>
            {
                ("path", Convert.ToBase64String(path)),
                ("inline", options.InlineMax.ToString(CultureInfo.InvariantCulture)),
            };
            if (options.Extents)
            {
                query.Add(("extents", "1"));
            }

            if (options.Xattrs)
            {
                query.Add(("xattrs", "1"));
            }

            if (options.Limit > 0)
            {
                query.Add(("limit", options.Limit.ToString(CultureInfo.InvariantCulture)));
            }

            if (start is { } from)
            {
                query.Add(("start", from.ToString(CultureInfo.InvariantCulture)));
            }

            var next = (long?)null;
            await using var exchange = await SendAsync("list", ct, [.. query]).ConfigureAwait(false);
            var entries = new EntryStreamReader(exchange.Response.Body).ReadAllAsync(ct).GetAsyncEnumerator(ct);
            await using (entries.ConfigureAwait(false))
            {
                while (true)
                {
                    ArchiveEntry entry;
                    try
                    {
                        if (!await entries.MoveNextAsync().ConfigureAwait(false))
                        {
                            break;
                        }

                        entry = entries.Current;
                    }
                    catch (Exception e) when (IsMalformed(e))
                    {
                        throw new IOException($"the restore daemon's list answer is malformed: {e.Message}", e);
                    }

                    if (entry.Type == EntryTypes.Failed)
                    {
                        throw new RestoreApiException(500, entry.Error ?? "the listing is not complete");
                    }

                    if (next is not null)
                    {
                        throw new IOException("the restore daemon's list answer goes on after its continuation element");
                    }

                    if (entry.Type == EntryTypes.More)
                    {
                        next = entry.Next ?? throw new IOException("the restore daemon's list answer has a continuation without 'next'");
                        continue;
                    }

                    yield return entry;
                }
            }

            // Read the rest (the closing bracket and the last chunk) so the answer ends cleanly instead of being reset.
            await exchange.Response.Body.CopyToAsync(Stream.Null, ct).ConfigureAwait(false);
            if (next is not null && ++pages > MaxPages)
            {
                throw new IOException($"the restore daemon's listing of {Encoding.UTF8.GetString(path)} goes on for more than {MaxPages} pages");
            }

            start = next;
        }
        while (start is not null);
    }

    /// <summary>A listing that needs more pages than this is a daemon going round in circles.</summary>
    public const int MaxPages = 100_000;

    public async Task<IReadOnlyList<Xattr>> XattrsAsync(byte[] path, CancellationToken ct)
    {
        await using var exchange = await SendAsync("xattrs", ct, ("path", Convert.ToBase64String(path))).ConfigureAwait(false);
        var body = await exchange.ReadAllAsync(ct).ConfigureAwait(false);
        try
        {
            return ApiJson.ReadXattrsAnswer(body);
        }
        catch (Exception e) when (IsMalformed(e))
        {
            throw new IOException($"the restore daemon's xattrs answer is malformed: {e.Message}", e);
        }
    }

    public async Task<long> SeekAsync(byte[] path, long offset, bool data, CancellationToken ct)
    {
        await using var exchange = await SendAsync("seek", ct,
            ("path", Convert.ToBase64String(path)),
            ("offset", offset.ToString(CultureInfo.InvariantCulture)),
            ("whence", data ? "data" : "hole")).ConfigureAwait(false);
        var body = await exchange.ReadAllAsync(ct, 4096).ConfigureAwait(false);
        try
        {
            return ApiJson.ReadSeekAnswer(body);
        }
        catch (Exception e) when (IsMalformed(e))
        {
            throw new IOException($"the restore daemon's seek answer is malformed: {e.Message}", e);
        }
    }

    /// <summary>A garbled answer is a broken channel for the caller (IOException), not a daemon error.</summary>
    private static bool IsMalformed(Exception e) =>
        e is System.Text.Json.JsonException or InvalidDataException or FormatException or KeyNotFoundException or InvalidOperationException
            or IndexOutOfRangeException;

    public async Task<int> ReadAsync(byte[] path, long offset, Memory<byte> buffer, CancellationToken ct)
    {
        await using var exchange = await SendAsync("read", ct,
            ("path", Convert.ToBase64String(path)),
            ("offset", offset.ToString(CultureInfo.InvariantCulture)),
            ("length", buffer.Length.ToString(CultureInfo.InvariantCulture))).ConfigureAwait(false);
        var done = 0;
        while (done < buffer.Length)
        {
            var n = await exchange.Response.Body.ReadAsync(buffer[done..], ct).ConfigureAwait(false);
            if (n == 0)
            {
                break;
            }

            done += n;
        }

        return done;
    }

    public async Task<Stream> ExtractAsync(byte[] path, ExtractFormat format, bool zstd, CancellationToken ct)
    {
        var exchange = await SendAsync("extract", ct,
            ("path", Convert.ToBase64String(path)),
            ("format", format == ExtractFormat.Tar ? "tar" : "plain"),
            ("zstd", zstd ? "true" : "false")).ConfigureAwait(false);
        return new ExchangeStream(exchange);
    }

    public async Task StopAsync(CancellationToken ct)
    {
        try
        {
            await using var exchange = await SendAsync("stop", ct).ConfigureAwait(false);
        }
        catch (IOException)
        {
            // The VM powers off while answering: the channel may drop first.
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (ownsTransport)
        {
            await transport.DisposeAsync().ConfigureAwait(false);
        }
    }

    private async Task<Exchange> SendAsync(string endpoint, CancellationToken ct, params (string Key, string Value)[] query)
    {
        var stream = await transport.OpenStreamAsync(ct).ConfigureAwait(false);
        try
        {
            var request = Http.FormatRequest(Prefix + endpoint, query.Select(q => KeyValuePair.Create(q.Key, q.Value)), ticket);
            await stream.WriteAsync(request, ct).ConfigureAwait(false);
            await stream.FlushAsync(ct).ConfigureAwait(false);
            if (stream is MuxStream mux)
            {
                // The request is complete: the daemon's side ends its answer with CLOSE instead of a reset.
                await mux.CloseWriteAsync(ct).ConfigureAwait(false);
            }
            else if (stream is System.Net.Sockets.NetworkStream network && network.Socket.AddressFamily == System.Net.Sockets.AddressFamily.Unix)
            {
                // Same over a unix socket (a proxy to the channel forwards the end of the request).
                network.Socket.Shutdown(System.Net.Sockets.SocketShutdown.Send);
            }

            var response = await Http.ReadResponseAsync(new BufferedReader(stream), ct).ConfigureAwait(false);
            var exchange = new Exchange(stream, response);
            if (response.Status != 200)
            {
                var text = Encoding.UTF8.GetString(await exchange.ReadAllAsync(ct, 64 * 1024).ConfigureAwait(false)).Trim();
                await exchange.DisposeAsync().ConfigureAwait(false);
                throw new RestoreApiException(response.Status, text.Length > 0 ? text : $"{endpoint}: HTTP {response.Status} {response.Reason}");
            }

            return exchange;
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private sealed class Exchange(Stream stream, Http.Response response) : IAsyncDisposable
    {
        public Http.Response Response => response;

        public async Task<byte[]> ReadAllAsync(CancellationToken ct, int limit = 64 * 1024 * 1024)
        {
            using var memory = new MemoryStream();
            var buffer = new byte[64 * 1024];
            int n;
            while ((n = await response.Body.ReadAsync(buffer, ct).ConfigureAwait(false)) > 0)
            {
                if (memory.Length + n > limit)
                {
                    throw new IOException($"the restore daemon's answer is larger than {limit} bytes");
                }

                memory.Write(buffer, 0, n);
            }

            return memory.ToArray();
        }

        public ValueTask DisposeAsync() => stream.DisposeAsync();
    }

    private sealed class ExchangeStream(Exchange exchange) : BodyStream
    {
        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
            exchange.Response.Body.ReadAsync(buffer, cancellationToken);

        public override async ValueTask DisposeAsync()
        {
            await exchange.DisposeAsync().ConfigureAwait(false);
            await base.DisposeAsync().ConfigureAwait(false);
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                exchange.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }

            base.Dispose(disposing);
        }
    }
}
