using System.Text;
using RestoreFs.RestoreApi;

namespace RestoreFs.RestoreApi.Tests;

/// <summary>The HTTP/1.1 subset of the restore API, byte for byte.</summary>
public sealed class ApiHttpTests
{
    /// <summary>Hands out its bytes a few at a time, as a socket or a mux stream may.</summary>
    private sealed class TrickleStream(byte[] data, int step) : Stream
    {
        private int position;

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => data.Length;

        public override long Position { get => position; set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count)
        {
            var n = Math.Min(Math.Min(count, step), data.Length - position);
            Array.Copy(data, position, buffer, offset, n);
            position += n;
            return n;
        }

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    private static async Task<Http.Response> Response(string text, int step = 1) =>
        await Http.ReadResponseAsync(new BufferedReader(new TrickleStream(Encoding.Latin1.GetBytes(text), step)), CancellationToken.None);

    private static async Task<string> BodyAsync(Http.Response response)
    {
        using var memory = new MemoryStream();
        await response.Body.CopyToAsync(memory);
        return Encoding.Latin1.GetString(memory.ToArray());
    }

    [Fact]
    public void Requests_are_written_byte_for_byte()
    {
        var request = Http.FormatRequest("/api2/json/list", [KeyValuePair.Create("path", "ZGlzaw=="), KeyValuePair.Create("inline", "0")], "T");
        Assert.Equal("GET /api2/json/list?path=ZGlzaw%3D%3D&inline=0 HTTP/1.1\r\nHost: restore-vm\r\nConnection: close\r\nAuthorization: T\r\n\r\n",
            Encoding.ASCII.GetString(request));
        // Base64's '+' and '/' are escaped too (a '+' would otherwise read back as a space).
        var read = Http.FormatRequest("/api2/json/read", [KeyValuePair.Create("path", "a+b/c="), KeyValuePair.Create("offset", "7")], null);
        Assert.Equal("GET /api2/json/read?path=a%2Bb%2Fc%3D&offset=7 HTTP/1.1\r\nHost: restore-vm\r\nConnection: close\r\n\r\n",
            Encoding.ASCII.GetString(read));
    }

    [Fact]
    public void Response_heads_are_written_byte_for_byte()
    {
        Assert.Equal("HTTP/1.1 200 OK\r\nContent-Type: application/json;charset=UTF-8\r\nConnection: close\r\nContent-Length: 12\r\n\r\n",
            Encoding.ASCII.GetString(Http.FormatResponseHead(200, "OK", "application/json;charset=UTF-8", 12)));
        Assert.Equal("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
            Encoding.ASCII.GetString(Http.FormatResponseHead(200, "OK", "application/octet-stream", null)));
        Assert.Equal("HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain;charset=UTF-8\r\nConnection: close\r\nContent-Length: 22\r\n\r\n",
            Encoding.ASCII.GetString(Http.FormatResponseHead(401, Http.ReasonOf(401), "text/plain;charset=UTF-8", 22)));
    }

    [Fact]
    public async Task The_server_parses_request_line_query_and_headers()
    {
        var text = "GET /api2/json/list?path=YS9i%2BYw%3D%3D&keep-timeout=true&flag&sp=a+b HTTP/1.1\r\n"
                   + "Host: x\r\nAUTHORIZATION:   tok en  \r\nX-Empty:\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
        var reader = new BufferedReader(new TrickleStream(Encoding.ASCII.GetBytes(text), 3));
        var request = await Http.ReadRequestAsync(reader, CancellationToken.None);
        Assert.NotNull(request);
        Assert.Equal(("GET", "/api2/json/list"), (request!.Method, request.Path));
        Assert.Equal("YS9i+Yw==", request.Query["path"]);
        Assert.Equal("true", request.Query["keep-timeout"]);
        Assert.Equal("", request.Query["flag"]);
        Assert.Equal("a b", request.Query["sp"]);
        Assert.Equal("tok en", request.Header("Authorization"));
        Assert.Equal("", request.Header("x-empty"));
        Assert.Null(request.Header("content-length"));
        // The reader stops at the end of the head: what follows is left for the next reader.
        Assert.Equal("/next", (await Http.ReadRequestAsync(reader, CancellationToken.None))!.Path);
        Assert.Null(await Http.ReadRequestAsync(reader, CancellationToken.None));
    }

    [Fact]
    public async Task Malformed_or_oversized_requests_are_rejected()
    {
        static Task<Http.Request?> Parse(string s) =>
            Http.ReadRequestAsync(new BufferedReader(new MemoryStream(Encoding.Latin1.GetBytes(s))), CancellationToken.None);

        await Assert.ThrowsAsync<InvalidDataException>(() => Parse("GET /x\r\n\r\n"));
        await Assert.ThrowsAsync<InvalidDataException>(() => Parse("GET /x SPDY/3\r\n\r\n"));
        await Assert.ThrowsAsync<InvalidDataException>(() => Parse("GET /x HTTP/1.1\r\nno colon here\r\n\r\n"));
        await Assert.ThrowsAsync<IOException>(() => Parse("GET /x HTTP/1.1\r\nHost: x\r\n")); // ends inside the head
        await Assert.ThrowsAsync<InvalidDataException>(() => Parse("GET /x HTTP/1.1\r\n" + string.Concat(Enumerable.Repeat("X-Pad: " + new string('a', 1000) + "\r\n", 70)) + "\r\n"));
        await Assert.ThrowsAsync<InvalidDataException>(() => Parse("GET /" + new string('a', 70_000) + " HTTP/1.1\r\n\r\n"));
        Assert.Null(await Parse(""));
        // Bare LF line ends are accepted.
        Assert.Equal("/y", (await Parse("GET /y HTTP/1.1\nHost: x\n\n"))!.Path);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(4096)]
    public async Task Chunked_answers_are_decoded_across_any_read_boundaries(int step)
    {
        var response = await Response(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "5\r\nhello\r\n6;name=value\r\n world\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n", step);
        Assert.Equal((200, "OK"), (response.Status, response.Reason));
        Assert.Equal("application/octet-stream", response.Header("Content-Type"));
        Assert.Equal("hello world0123456789", await BodyAsync(response));
        Assert.Equal(0, await response.Body.ReadAsync(new byte[10]));
    }

    [Fact]
    public async Task Content_length_answers_end_exactly_and_short_or_cut_answers_are_io_errors()
    {
        var response = await Response("HTTP/1.1 400 Bad Request\r\nContent-Length: 6\r\n\r\nreason-and-more", 2);
        Assert.Equal(400, response.Status);
        Assert.Equal("reason", await BodyAsync(response));

        await Assert.ThrowsAsync<IOException>(async () => await BodyAsync(await Response("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")));
        // A chunked answer cut before its last chunk (the daemon died) is an error, never a short answer.
        await Assert.ThrowsAsync<IOException>(async () => await BodyAsync(await Response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")));
        await Assert.ThrowsAsync<IOException>(async () => await BodyAsync(await Response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")));
        await Assert.ThrowsAsync<IOException>(async () => await BodyAsync(await Response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")));
        await Assert.ThrowsAsync<IOException>(async () => await BodyAsync(await Response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n0\r\n\r\n")));
        await Assert.ThrowsAsync<IOException>(() => Response(""));
        await Assert.ThrowsAsync<IOException>(() => Response("SSH-2.0-OpenSSH\r\n\r\n"));
    }

    [Fact]
    public async Task Chunked_writing_is_byte_exact_and_round_trips()
    {
        using var memory = new MemoryStream();
        var chunked = new ChunkedWriteStream(memory);
        await chunked.WriteAsync("abc"u8.ToArray());
        await chunked.WriteAsync(Array.Empty<byte>()); // nothing: an empty chunk would end the body
        await chunked.WriteAsync(Encoding.ASCII.GetBytes(new string('x', 300)));
        await chunked.CompleteAsync(CancellationToken.None);
        Assert.Equal("3\r\nabc\r\n12c\r\n" + new string('x', 300) + "\r\n0\r\n\r\n", Encoding.ASCII.GetString(memory.ToArray()));

        var random = new Random(2);
        var payload = new byte[1 << 20];
        random.NextBytes(payload);
        using var wire = new MemoryStream();
        wire.Write(Http.FormatResponseHead(200, "OK", "application/octet-stream", null));
        var writer = new ChunkedWriteStream(wire);
        for (var done = 0; done < payload.Length;)
        {
            var n = Math.Min(random.Next(1, 70_000), payload.Length - done);
            await writer.WriteAsync(payload.AsMemory(done, n));
            done += n;
        }

        await writer.CompleteAsync(CancellationToken.None);
        var response = await Http.ReadResponseAsync(new BufferedReader(new TrickleStream(wire.ToArray(), 5000)), CancellationToken.None);
        using var back = new MemoryStream();
        await response.Body.CopyToAsync(back);
        Assert.True(back.ToArray().AsSpan().SequenceEqual(payload));
    }
}
