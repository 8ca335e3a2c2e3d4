using System.Globalization;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using RestoreFs.RestoreApi;

namespace RestoreFs.RestoreApi.Tests;

/// <summary>
/// A stand-in for the restore daemon, built from the API's own parts (<see cref="Http"/>, <see cref="ApiJson"/>,
/// <see cref="ChunkedWriteStream"/>): it serves the files of one directory as <c>dir/raw/…</c> with <c>read</c>,
/// <c>list</c> and <c>extract</c> (plain, no zstd), and echoes any other request back (method, path, query, headers)
/// as text. Enough to exercise the client, the transports and the mux without the daemon.
/// </summary>
internal sealed class FakeDaemon(string root, string ticket)
{
    private const string Raw = "dir/raw";

    /// <summary>Requests whose head could not be read (each was answered 400).</summary>
    public int BadRequests;

    /// <summary>Serves one request on <paramref name="stream"/>, then closes it.</summary>
    public async Task HandleAsync(Stream stream, CancellationToken ct)
    {
        await using var _ = stream.ConfigureAwait(false);
        Http.Request? request;
        try
        {
            request = await Http.ReadRequestAsync(new BufferedReader(stream), ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or InvalidDataException)
        {
            Interlocked.Increment(ref BadRequests);
            await TextAsync(stream, 400, e.Message, ct).ConfigureAwait(false);
            return;
        }

        if (request is null)
        {
            return;
        }

        try
        {
            if (request.Header("Authorization") != ticket)
            {
                await TextAsync(stream, 401, "no ticket", ct).ConfigureAwait(false);
                return;
            }

            var endpoint = request.Path.StartsWith(RestoreClient.Prefix, StringComparison.Ordinal) ? request.Path[RestoreClient.Prefix.Length..] : request.Path;
            switch (endpoint)
            {
                case "read":
                    await ReadAsync(stream, request, ct).ConfigureAwait(false);
                    break;
                case "list":
                    await ListAsync(stream, request, ct).ConfigureAwait(false);
                    break;
                case "extract":
                    var data = await File.ReadAllBytesAsync(Local(request), ct).ConfigureAwait(false);
                    await stream.WriteAsync(Http.FormatResponseHead(200, "OK", "application/octet-stream", null), ct).ConfigureAwait(false);
                    var chunked = new ChunkedWriteStream(stream);
                    for (var at = 0; at < data.Length; at += 100_000)
                    {
                        await chunked.WriteAsync(data.AsMemory(at, Math.Min(100_000, data.Length - at)), ct).ConfigureAwait(false);
                    }

                    await chunked.CompleteAsync(ct).ConfigureAwait(false);
                    break;
                default:
                    var echo = new StringBuilder().Append(request.Method).Append(' ').Append(request.Path).Append('\n');
                    foreach (var (k, v) in request.Query.OrderBy(q => q.Key, StringComparer.Ordinal))
                    {
                        echo.Append("query ").Append(k).Append('=').Append(v).Append('\n');
                    }

                    foreach (var (k, v) in request.Headers.OrderBy(h => h.Key, StringComparer.Ordinal))
                    {
                        echo.Append("header ").Append(k).Append(": ").Append(v).Append('\n');
                    }

                    await TextAsync(stream, 200, echo.ToString(), ct).ConfigureAwait(false);
                    break;
            }
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or FormatException or KeyNotFoundException)
        {
            await TextAsync(stream, 404, e.Message, ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException)
        {
            // The client went away.
        }
    }

    /// <summary>Serves every stream the host opens on <paramref name="mux"/> until the channel ends.</summary>
    public async Task ServeAsync(MuxConnection mux)
    {
        while (await mux.AcceptAsync(CancellationToken.None) is { } stream)
        {
            _ = Task.Run(() => HandleAsync(stream, CancellationToken.None));
        }
    }

    /// <summary>Serves connections of <paramref name="listener"/> until <paramref name="ct"/> is cancelled.</summary>
    public async Task ServeAsync(Socket listener, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            var socket = await listener.AcceptAsync(ct).ConfigureAwait(false);
            _ = Task.Run(() => HandleAsync(new NetworkStream(socket, true), ct), CancellationToken.None);
        }
    }

    private string Local(Http.Request request)
    {
        var path = Encoding.UTF8.GetString(Convert.FromBase64String(request.Query["path"]));
        if (path != Raw && !path.StartsWith(Raw + "/", StringComparison.Ordinal))
        {
            throw new FileNotFoundException($"{path}: not under {Raw}");
        }

        var relative = path.Length > Raw.Length ? path[(Raw.Length + 1)..] : "";
        if (relative.Split('/').Contains(".."))
        {
            throw new FileNotFoundException($"{path}: '..' is not served");
        }

        return Path.Combine(root, relative);
    }

    private async Task ReadAsync(Stream stream, Http.Request request, CancellationToken ct)
    {
        var offset = long.Parse(request.Query["offset"], CultureInfo.InvariantCulture);
        var length = int.Parse(request.Query["length"], CultureInfo.InvariantCulture);
        using var file = File.OpenRead(Local(request));
        var buffer = new byte[(int)Math.Max(0, Math.Min(length, file.Length - offset))];
        file.Position = offset;
        await file.ReadExactlyAsync(buffer, ct).ConfigureAwait(false);
        await stream.WriteAsync(Http.FormatResponseHead(200, "OK", "application/octet-stream", buffer.Length), ct).ConfigureAwait(false);
        await stream.WriteAsync(buffer, ct).ConfigureAwait(false);
    }

    private async Task ListAsync(Stream stream, Http.Request request, CancellationToken ct)
    {
        var local = Local(request);
        var directory = new DirectoryInfo(local);
        if (!directory.Exists)
        {
            throw new DirectoryNotFoundException($"no directory {local}");
        }

        var prefix = Encoding.UTF8.GetString(Convert.FromBase64String(request.Query["path"]));
        using var memory = new MemoryStream();
        using (var w = new Utf8JsonWriter(memory))
        {
            w.WriteStartObject();
            w.WriteStartArray("data");
            foreach (var info in directory.EnumerateFileSystemInfos().OrderBy(i => i.Name, StringComparer.Ordinal))
            {
                var isFile = info is FileInfo;
                var name = Encoding.UTF8.GetBytes(info.Name);
                ApiJson.WriteEntry(w, new ArchiveEntry(Encoding.UTF8.GetBytes(prefix + "/" + info.Name), name,
                    isFile ? EntryTypes.File : EntryTypes.Directory, isFile, isFile ? (ulong)((FileInfo)info).Length : null,
                    info.LastWriteTimeUtc.ToFileTimeUtc() / 10_000_000 - 11_644_473_600, isFile ? 0x81A4u : 0x41EDu, 0, 0, null, null));
            }

            w.WriteEndArray();
            w.WriteEndObject();
        }

        await stream.WriteAsync(Http.FormatResponseHead(200, "OK", "application/json", null), ct).ConfigureAwait(false);
        var chunked = new ChunkedWriteStream(stream);
        await chunked.WriteAsync(memory.ToArray(), ct).ConfigureAwait(false);
        await chunked.CompleteAsync(ct).ConfigureAwait(false);
    }

    private static async Task TextAsync(Stream stream, int status, string text, CancellationToken ct)
    {
        try
        {
            var body = Encoding.UTF8.GetBytes(text);
            await stream.WriteAsync(Http.FormatResponseHead(status, Http.ReasonOf(status), "text/plain", body.Length), ct).ConfigureAwait(false);
            await stream.WriteAsync(body, ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or OperationCanceledException)
        {
            // Nobody listens any more.
        }
    }
}

internal static class ClientExtensions
{
    public static async Task<List<ArchiveEntry>> ListAllAsync(this IRestoreClient client, string path)
    {
        var result = new List<ArchiveEntry>();
        await foreach (var e in client.ListAsync(Encoding.UTF8.GetBytes(path), CancellationToken.None))
        {
            result.Add(e);
        }

        return result;
    }
}
