using System.Buffers;
using System.Globalization;
using System.Text;

namespace RestoreFs.RestoreApi;

/// <summary>
/// The small part of HTTP/1.1 the restore API needs, over any byte stream (a vsock/unix/TCP connection or one stream
/// of the multiplexed serial channel): one request per stream, GET with a query string, bodies with Content-Length or
/// chunked transfer coding (a chunked body that ends without its last chunk is an error, so a daemon that dies mid-way
/// never looks like a short answer).
/// </summary>
public static class Http
{
    public const int MaxHeadBytes = 64 * 1024;

    /// <summary>Header lines in one head (and trailer lines after a chunked body).</summary>
    public const int MaxHeaderLines = 128;

    /// <summary>A chunk-size line (size and extensions).</summary>
    public const int MaxChunkLine = 1024;

    public sealed record Request(string Method, string Path, IReadOnlyDictionary<string, string> Query, IReadOnlyDictionary<string, string> Headers)
    {
        public string? Header(string name) => Headers.TryGetValue(name.ToLowerInvariant(), out var v) ? v : null;
    }

    public sealed record Response(int Status, string Reason, IReadOnlyDictionary<string, string> Headers, Stream Body)
    {
        public string? Header(string name) => Headers.TryGetValue(name.ToLowerInvariant(), out var v) ? v : null;
    }

    public static string BuildQuery(IEnumerable<KeyValuePair<string, string>> parameters) =>
        string.Join('&', parameters.Select(p => Uri.EscapeDataString(p.Key) + "=" + Uri.EscapeDataString(p.Value)));

    public static byte[] FormatRequest(string path, IEnumerable<KeyValuePair<string, string>> query, string? ticket)
    {
        var q = BuildQuery(query);
        var head = new StringBuilder();
        head.Append("GET ").Append(path);
        if (q.Length > 0)
        {
            head.Append('?').Append(q);
        }

        head.Append(" HTTP/1.1\r\nHost: restore-vm\r\nConnection: close\r\n");
        if (ticket is not null)
        {
            head.Append("Authorization: ").Append(ticket).Append("\r\n");
        }

        head.Append("\r\n");
        return Encoding.ASCII.GetBytes(head.ToString());
    }

    public static byte[] FormatResponseHead(int status, string reason, string contentType, long? contentLength)
    {
        var head = new StringBuilder();
        head.Append(CultureInfo.InvariantCulture, $"HTTP/1.1 {status} {reason}\r\nContent-Type: {contentType}\r\nConnection: close\r\n");
        head.Append(contentLength is { } n ? $"Content-Length: {n.ToString(CultureInfo.InvariantCulture)}\r\n" : "Transfer-Encoding: chunked\r\n");
        head.Append("\r\n");
        return Encoding.ASCII.GetBytes(head.ToString());
    }

    public static string ReasonOf(int status) => status switch
    {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Error",
    };

    /// <summary>Reads a request head; null when the stream ends before any byte.</summary>
    public static async Task<Request?> ReadRequestAsync(BufferedReader reader, CancellationToken ct)
    {
        var lines = await reader.ReadHeadAsync(ct).ConfigureAwait(false);
        if (lines is null)
        {
            return null;
        }

        var parts = lines[0].Split(' ');
        if (parts.Length != 3 || !parts[2].StartsWith("HTTP/1.", StringComparison.Ordinal))
        {
            throw new InvalidDataException($"malformed request line '{Printable(lines[0])}'");
        }

        var target = parts[1];
        var question = target.IndexOf('?', StringComparison.Ordinal);
        var path = question < 0 ? target : target[..question];
        var query = new Dictionary<string, string>(StringComparer.Ordinal);
        if (question >= 0)
        {
            foreach (var pair in target[(question + 1)..].Split('&', StringSplitOptions.RemoveEmptyEntries))
            {
                var eq = pair.IndexOf('=', StringComparison.Ordinal);
                var key = Unescape(eq < 0 ? pair : pair[..eq]);
                query[key] = eq < 0 ? "" : Unescape(pair[(eq + 1)..]);
            }
        }

        return new Request(parts[0], Unescape(path), query, ParseHeaders(lines));
    }

    /// <summary>Reads a response head and returns it with a body stream that ends where the body ends. A malformed
    /// head (too long, too many lines, a bad status line or Content-Length) is an <see cref="IOException"/>: for the
    /// client a garbled answer is a broken channel.</summary>
    public static async Task<Response> ReadResponseAsync(BufferedReader reader, CancellationToken ct)
    {
        List<string> lines;
        Dictionary<string, string> headers;
        try
        {
            lines = await reader.ReadHeadAsync(ct).ConfigureAwait(false)
                ?? throw new IOException("the restore daemon closed the connection without answering");
            headers = ParseHeaders(lines);
        }
        catch (InvalidDataException e)
        {
            throw new IOException($"malformed answer from the restore daemon: {e.Message}", e);
        }

        var parts = lines[0].Split(' ', 3);
        if (parts.Length < 2 || !parts[0].StartsWith("HTTP/1.", StringComparison.Ordinal) || parts[1].Length != 3
            || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var status))
        {
            throw new IOException($"malformed status line '{Printable(lines[0])}' from the restore daemon");
        }

        Stream body;
        if (headers.TryGetValue("transfer-encoding", out var te))
        {
            if (!te.Equals("chunked", StringComparison.OrdinalIgnoreCase))
            {
                throw new IOException($"unsupported Transfer-Encoding '{Printable(te)}' from the restore daemon");
            }

            body = new ChunkedReadStream(reader);
        }
        else if (headers.TryGetValue("content-length", out var cl))
        {
            // Digits only: no sign, no spaces, no overflow (long.Parse would take "-1" or " +5").
            if (cl.Length is 0 or > 18 || !cl.All(char.IsAsciiDigit))
            {
                throw new IOException($"malformed Content-Length '{Printable(cl)}' from the restore daemon");
            }

            body = new LengthReadStream(reader, long.Parse(cl, NumberStyles.None, CultureInfo.InvariantCulture));
        }
        else
        {
            body = new LengthReadStream(reader, long.MaxValue);
        }

        return new Response(status, parts.Length > 2 ? parts[2] : "", headers, body);
    }

    private static Dictionary<string, string> ParseHeaders(List<string> lines)
    {
        var headers = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var line in lines.Skip(1))
        {
            var colon = line.IndexOf(':', StringComparison.Ordinal);
            if (colon <= 0)
            {
                throw new InvalidDataException($"malformed header line '{Printable(line)}'");
            }

            var name = line[..colon].Trim().ToLowerInvariant();
            var value = line[(colon + 1)..].Trim();
            if (headers.TryGetValue(name, out var earlier) && earlier != value && name is "content-length" or "transfer-encoding")
            {
                throw new InvalidDataException($"two different {name} headers");
            }

            headers[name] = value;
        }

        return headers;
    }

    private static string Unescape(string s) => Uri.UnescapeDataString(s.Replace('+', ' '));

    internal static string Printable(string s) => s.Length > 80 ? s[..80] + "…" : s;
}

/// <summary>Buffered reading of a stream: head lines, then raw bytes.</summary>
public sealed class BufferedReader(Stream stream)
{
    private readonly byte[] buffer = new byte[64 * 1024];
    private int start;
    private int end;

    public Stream Inner => stream;

    /// <summary>Reads lines up to the empty line; null at a clean end of stream before any byte.</summary>
    public async Task<List<string>?> ReadHeadAsync(CancellationToken ct)
    {
        var lines = new List<string>();
        var total = 0;
        while (true)
        {
            var line = await ReadLineAsync(ct).ConfigureAwait(false);
            if (line is null)
            {
                if (lines.Count == 0 && total == 0)
                {
                    return null;
                }

                throw new IOException("the stream ended inside an HTTP head");
            }

            total += line.Length + 2;
            if (total > Http.MaxHeadBytes)
            {
                throw new InvalidDataException("HTTP head too large");
            }

            if (line.Length == 0)
            {
                if (lines.Count == 0)
                {
                    continue;
                }

                return lines;
            }

            if (lines.Count > Http.MaxHeaderLines)
            {
                throw new InvalidDataException($"more than {Http.MaxHeaderLines} HTTP header lines");
            }

            lines.Add(line);
        }
    }

    public Task<string?> ReadLineAsync(CancellationToken ct) => ReadLineAsync(Http.MaxHeadBytes, ct);

    /// <summary>One line without its CR LF; null at a clean end of stream; <see cref="InvalidDataException"/> when it is
    /// longer than <paramref name="maxLength"/> (no more than that and one buffer is read).</summary>
    public async Task<string?> ReadLineAsync(int maxLength, CancellationToken ct)
    {
        var collected = new List<byte>();
        while (true)
        {
            var newline = Array.IndexOf(buffer, (byte)'\n', start, end - start);
            if (newline >= 0)
            {
                collected.AddRange(buffer.AsSpan(start, newline - start).ToArray());
                start = newline + 1;
                if (collected.Count > 0 && collected[^1] == '\r')
                {
                    collected.RemoveAt(collected.Count - 1);
                }

                if (collected.Count > maxLength)
                {
                    throw new InvalidDataException($"HTTP line longer than {maxLength} bytes");
                }

                return Encoding.Latin1.GetString(collected.ToArray());
            }

            collected.AddRange(buffer.AsSpan(start, end - start).ToArray());
            start = end = 0;
            if (collected.Count > maxLength)
            {
                throw new InvalidDataException($"HTTP line longer than {maxLength} bytes");
            }

            var n = await stream.ReadAsync(buffer, ct).ConfigureAwait(false);
            if (n == 0)
            {
                return collected.Count == 0 ? null : throw new IOException("the stream ended inside an HTTP line");
            }

            end = n;
        }
    }

    public async ValueTask<int> ReadAsync(Memory<byte> destination, CancellationToken ct)
    {
        if (start < end)
        {
            var n = Math.Min(destination.Length, end - start);
            buffer.AsMemory(start, n).CopyTo(destination);
            start += n;
            return n;
        }

        if (destination.Length >= buffer.Length)
        {
            return await stream.ReadAsync(destination, ct).ConfigureAwait(false);
        }

        end = await stream.ReadAsync(buffer, ct).ConfigureAwait(false);
        start = 0;
        if (end == 0)
        {
            return 0;
        }

        return await ReadAsync(destination, ct).ConfigureAwait(false);
    }
}

/// <summary>Base for the read-only body streams.</summary>
public abstract class BodyStream : Stream
{
    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => false;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override void Flush()
    {
    }

    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}

internal sealed class LengthReadStream(BufferedReader reader, long length) : BodyStream
{
    private long left = length;

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (left == 0 || buffer.Length == 0)
        {
            return 0;
        }

        var n = await reader.ReadAsync(buffer[..(int)Math.Min(buffer.Length, left)], cancellationToken).ConfigureAwait(false);
        if (n == 0)
        {
            if (left != long.MaxValue)
            {
                throw new IOException($"the restore daemon's answer ended {left} bytes early");
            }

            left = 0;
            return 0;
        }

        if (left != long.MaxValue)
        {
            left -= n;
        }

        return n;
    }
}

internal sealed class ChunkedReadStream(BufferedReader reader) : BodyStream
{
    private long chunkLeft;
    private bool done;

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (done || buffer.Length == 0)
        {
            return 0;
        }

        if (chunkLeft == 0)
        {
            var line = await ReadLineAsync(Http.MaxChunkLine, cancellationToken).ConfigureAwait(false)
                ?? throw new IOException("the restore daemon's answer ended before its last chunk");
            var semi = line.IndexOf(';', StringComparison.Ordinal);
            var size = (semi < 0 ? line : line[..semi]).Trim();

            // At most 15 hex digits: the size stays a positive long (16 could wrap to a negative one).
            if (size.Length is 0 or > 15 || !size.All(char.IsAsciiHexDigit))
            {
                throw new IOException($"malformed chunk size '{Http.Printable(line)}' in the restore daemon's answer");
            }

            chunkLeft = long.Parse(size, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture);
            if (chunkLeft == 0)
            {
                // Trailer section: lines until an empty one, as bounded as a head.
                var trailers = 0;
                while ((await ReadLineAsync(Http.MaxHeadBytes, cancellationToken).ConfigureAwait(false)
                        ?? throw new IOException("the restore daemon's answer ended inside its trailer")) != "")
                {
                    if (++trailers > Http.MaxHeaderLines)
                    {
                        throw new IOException($"more than {Http.MaxHeaderLines} trailer lines in the restore daemon's answer");
                    }
                }

                done = true;
                return 0;
            }
        }

        var n = await reader.ReadAsync(buffer[..(int)Math.Min(buffer.Length, chunkLeft)], cancellationToken).ConfigureAwait(false);
        if (n == 0)
        {
            throw new IOException("the restore daemon's answer ended inside a chunk");
        }

        chunkLeft -= n;
        if (chunkLeft == 0 && await ReadLineAsync(2, cancellationToken).ConfigureAwait(false) != "")
        {
            throw new IOException("malformed chunk end");
        }

        return n;
    }

    private async Task<string?> ReadLineAsync(int maxLength, CancellationToken ct)
    {
        try
        {
            return await reader.ReadLineAsync(maxLength, ct).ConfigureAwait(false);
        }
        catch (InvalidDataException e)
        {
            throw new IOException($"malformed chunked answer from the restore daemon: {e.Message}", e);
        }
    }
}

/// <summary>Writes a chunked body; <see cref="CompleteAsync"/> writes the last chunk. Disposing without completing
/// leaves the body unterminated on purpose: the reader sees an error, not a short answer.</summary>
public sealed class ChunkedWriteStream(Stream inner) : Stream
{
    private static readonly byte[] Crlf = "\r\n"u8.ToArray();

    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override void Flush() => inner.Flush();

    public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (buffer.Length == 0)
        {
            return;
        }

        var head = Encoding.ASCII.GetBytes(buffer.Length.ToString("x", CultureInfo.InvariantCulture) + "\r\n");
        var frame = ArrayPool<byte>.Shared.Rent(head.Length + buffer.Length + 2);
        try
        {
            head.CopyTo(frame, 0);
            buffer.CopyTo(frame.AsMemory(head.Length));
            Crlf.CopyTo(frame, head.Length + buffer.Length);
            await inner.WriteAsync(frame.AsMemory(0, head.Length + buffer.Length + 2), cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(frame);
        }
    }

    public async Task CompleteAsync(CancellationToken ct)
    {
        await inner.WriteAsync("0\r\n\r\n"u8.ToArray(), ct).ConfigureAwait(false);
        await inner.FlushAsync(ct).ConfigureAwait(false);
    }
}
