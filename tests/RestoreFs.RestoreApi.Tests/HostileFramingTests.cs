using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using RestoreFs.RestoreApi;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreApi.Tests;

/// <summary>A read-only stream: a prefix, then one pattern repeated forever; counts what its reader took.</summary>
internal sealed class EndlessStream(byte[] prefix, byte[] pattern) : Stream
{
    public long Consumed { get; private set; }

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => false;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count)
    {
        for (var i = 0; i < count; i++)
        {
            var at = Consumed + i;
            buffer[offset + i] = at < prefix.Length ? prefix[at] : pattern[(at - prefix.Length) % pattern.Length];
        }

        Consumed += count;
        return count;
    }

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}

/// <summary>
/// Hostile framing against the restore API: HTTP heads and bodies that never end or lie about their lengths, mux frames
/// with absurd lengths or kinds, peers that send beyond their credit, flood OPENs or overflow the credit. Each is
/// answered with a typed error (or the stream/session reset) within a few seconds, after reading a bounded number of
/// bytes, and the channel keeps working for the well-behaved.
/// </summary>
public sealed class HostileFramingTests : IDisposable
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(5);
    private readonly TempDirectory dir = new("restorefs-api-hostile");

    public void Dispose() => dir.Dispose();

    private static async Task<Exception> Refused(Func<Task> action)
    {
        var e = await Record.ExceptionAsync(() => action().WaitAsync(Bound));
        Assert.NotNull(e);
        Assert.IsNotType<TimeoutException>(e);
        return e;
    }

    private static Task<Http.Response> Response(string text) =>
        Http.ReadResponseAsync(new BufferedReader(new MemoryStream(Encoding.ASCII.GetBytes(text))), CancellationToken.None);

    private static async Task<byte[]> Body(string text)
    {
        var response = await Response(text);
        using var copy = new MemoryStream();
        await response.Body.CopyToAsync(copy);
        return copy.ToArray();
    }

    // ---- HTTP ----

    [Fact]
    public async Task A_header_line_that_never_ends_is_refused_after_a_bounded_read()
    {
        var request = new EndlessStream("GET /api2/json/status HTTP/1.1\r\nX-Long: "u8.ToArray(), "a"u8.ToArray());
        Assert.IsType<InvalidDataException>(await Refused(() => Http.ReadRequestAsync(new BufferedReader(request), CancellationToken.None)));
        Assert.True(request.Consumed <= 256 * 1024, $"read {request.Consumed} bytes");

        var response = new EndlessStream("HTTP/1.1 200 OK\r\nX-Long: "u8.ToArray(), "a"u8.ToArray());
        Assert.IsType<IOException>(await Refused(() => Http.ReadResponseAsync(new BufferedReader(response), CancellationToken.None)));
        Assert.True(response.Consumed <= 256 * 1024, $"read {response.Consumed} bytes");
    }

    [Fact]
    public async Task Endless_headers_are_refused_after_a_bounded_read()
    {
        var request = new EndlessStream("GET / HTTP/1.1\r\n"u8.ToArray(), "X: y\r\n"u8.ToArray());
        var e = await Refused(() => Http.ReadRequestAsync(new BufferedReader(request), CancellationToken.None));
        Assert.IsType<InvalidDataException>(e);
        Assert.Contains("header lines", e.Message);
        Assert.True(request.Consumed <= 128 * 1024, $"read {request.Consumed} bytes");

        var response = new EndlessStream("HTTP/1.1 200 OK\r\n"u8.ToArray(), "X: y\r\n"u8.ToArray());
        Assert.IsType<IOException>(await Refused(() => Http.ReadResponseAsync(new BufferedReader(response), CancellationToken.None)));
    }

    [Theory]
    [InlineData("zz")]
    [InlineData("-1")]
    [InlineData("+5")]
    [InlineData("0x10")]
    [InlineData("")]
    [InlineData("FFFFFFFFFFFFFFFF")]
    [InlineData("8000000000000000")]
    [InlineData("1FFFFFFFFFFFFFFFFFFFFFFFF")]
    public async Task A_bad_chunk_size_is_an_io_error(string size)
    {
        var e = await Refused(() => Body($"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nabcde\r\n0\r\n\r\n"));
        Assert.IsType<IOException>(e);
    }

    [Fact]
    public async Task Endless_chunk_size_lines_and_trailers_are_refused_after_a_bounded_read()
    {
        var size = new EndlessStream("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1"u8.ToArray(), "0"u8.ToArray());
        var response = await Http.ReadResponseAsync(new BufferedReader(size), CancellationToken.None);
        Assert.IsType<IOException>(await Refused(() => response.Body.CopyToAsync(Stream.Null)));
        Assert.True(size.Consumed <= 256 * 1024, $"read {size.Consumed} bytes");

        var trailers = new EndlessStream("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"u8.ToArray(), "T: x\r\n"u8.ToArray());
        var second = await Http.ReadResponseAsync(new BufferedReader(trailers), CancellationToken.None);
        Assert.IsType<IOException>(await Refused(() => second.Body.CopyToAsync(Stream.Null)));
        Assert.True(trailers.Consumed <= 256 * 1024, $"read {trailers.Consumed} bytes");

        // A well-formed one, with extensions and a trailer, still reads.
        Assert.Equal("abcdef", Encoding.ASCII.GetString(await Body("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n3\r\ndef\r\n0\r\nT: 1\r\n\r\n")));
    }

    [Theory]
    [InlineData("Content-Length: -1")]
    [InlineData("Content-Length: 99999999999999999999")]
    [InlineData("Content-Length: 9223372036854775808")]
    [InlineData("Content-Length: +5")]
    [InlineData("Content-Length: 1e3")]
    [InlineData("Content-Length: 5, 6")]
    [InlineData("Content-Length:")]
    [InlineData("Content-Length: 5\r\nContent-Length: 6")]
    [InlineData("Transfer-Encoding: gzip")]
    public async Task A_negative_overflowing_or_ambiguous_length_is_an_io_error(string header)
    {
        var e = await Refused(() => Body($"HTTP/1.1 200 OK\r\n{header}\r\n\r\nabcde"));
        Assert.IsType<IOException>(e);
        Assert.Equal("abcde", Encoding.ASCII.GetString(await Body("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcdefgh")));
    }

    [Fact]
    public async Task The_client_reports_a_hostile_answer_as_an_io_error_within_a_bounded_time()
    {
        // A "daemon" that answers with a head that never ends.
        var path = dir.Combine("endless.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen(4);
        using var stop = new CancellationTokenSource();
        var serving = Task.Run(async () =>
        {
            using var peer = await listener.AcceptAsync(stop.Token);
            await peer.SendAsync("HTTP/1.1 200 OK\r\nX: "u8.ToArray(), stop.Token);
            var filler = new byte[64 * 1024];
            Array.Fill(filler, (byte)'a');
            while (!stop.IsCancellationRequested)
            {
                await peer.SendAsync(filler, stop.Token);
            }
        });
        await using var client = new RestoreClient(SocketTransport.Unix(path), "T");
        Assert.IsType<IOException>(await Refused(() => client.StatusAsync(true, CancellationToken.None)));
        await stop.CancelAsync();
        await serving.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    // ---- mux ----

    private static async Task<(Stream Host, Stream Guest)> PairAsync(string socketPath)
    {
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(socketPath));
        listener.Listen(1);
        var host = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        var connect = host.ConnectAsync(new UnixDomainSocketEndPoint(socketPath));
        var guest = await listener.AcceptAsync();
        await connect;
        return (new NetworkStream(host, true), new NetworkStream(guest, true));
    }

    private static byte[] Frame(uint id, byte kind, byte[] payload, uint? length = null)
    {
        var frame = new byte[MuxConnection.HeaderSize + payload.Length];
        MuxConnection.WriteHeader(frame, id, kind, payload.Length);
        if (length is { } l)
        {
            BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(8), l);
        }

        payload.CopyTo(frame, MuxConnection.HeaderSize);
        return frame;
    }

    private static byte[] U64(ulong v)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(b, v);
        return b;
    }

    private static async Task<(uint Id, byte Kind, byte[] Payload)> ReadFrameAsync(Stream stream)
    {
        using var timeout = new CancellationTokenSource(Bound);
        var header = new byte[MuxConnection.HeaderSize];
        await stream.ReadExactlyAsync(header, timeout.Token);
        var payload = new byte[BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8))];
        await stream.ReadExactlyAsync(payload, timeout.Token);
        return (BinaryPrimitives.ReadUInt32BigEndian(header), header[4], payload);
    }

    private static async Task<byte[]> ReadUntilAsync(Stream stream, uint id, byte kind)
    {
        while (true)
        {
            var frame = await ReadFrameAsync(stream);
            if (frame.Id == id && frame.Kind == kind)
            {
                return frame.Payload;
            }
        }
    }

    [Theory]
    [InlineData(2u, 0xFFFFFFFFu)]
    [InlineData(2u, (uint)MuxConnection.MaxPayload + 1)]
    [InlineData(0x77u, 0u)]
    [InlineData(0u, 7u)]
    public async Task A_frame_with_an_absurd_length_or_unknown_kind_ends_the_host_side_with_an_error(uint kind, uint length)
    {
        var (hostSide, guestSide) = await PairAsync(dir.Combine($"absurd-{kind}-{length}.sock"));
        await using var host = await MuxConnection.ConnectAsync(hostSide, CancellationToken.None);
        var hello = await ReadFrameAsync(guestSide);
        await guestSide.WriteAsync(Frame(0, 0, hello.Payload));
        await host.SessionConfirmed.WaitAsync(Bound);
        var stream = await host.OpenStreamAsync(CancellationToken.None);
        var reading = stream.ReadAsync(new byte[16]).AsTask();
        var before = GC.GetTotalMemory(false);
        await guestSide.WriteAsync(Frame(1, (byte)kind, [], length));
        await host.Closed.WaitAsync(Bound);
        Assert.IsType<InvalidDataException>(host.Error);
        Assert.IsType<IOException>(await Refused(() => reading));
        Assert.True(GC.GetTotalMemory(false) - before < 64L << 20, "the absurd length was allocated");
        await Assert.ThrowsAsync<IOException>(async () => await host.OpenStreamAsync(CancellationToken.None));
        await guestSide.DisposeAsync();
    }

    [Theory]
    [InlineData(2u, 0xFFFFFFFFu)]
    [InlineData(0x77u, 0u)]
    [InlineData(5u, (uint)MuxConnection.MaxPayload + 1)]
    public async Task A_frame_with_an_absurd_length_or_unknown_kind_resets_the_daemon_side_session_which_then_works_again(uint kind, uint length)
    {
        var (hostSide, guestSide) = await PairAsync(dir.Combine($"resync-{kind}-{length}.sock"));
        await using var guest = MuxConnection.Serve(guestSide);
        var daemon = new FakeDaemon(dir.Path, "T");
        var serving = daemon.ServeAsync(guest);
        await hostSide.WriteAsync(Frame(0, 0, U64(1)));
        await ReadUntilAsync(hostSide, 0, 0);
        await hostSide.WriteAsync(Frame(1, 1, []));
        await hostSide.WriteAsync(Frame(1, (byte)kind, [], length));
        await WaitForAsync(() => guest.Resyncs == 1);
        Assert.IsType<InvalidDataException>(guest.LastResyncCause);
        Assert.Equal(0, guest.OpenStreams);

        // A new session: an echo request on a new stream is answered.
        await hostSide.WriteAsync(Frame(0, 0, U64(2)));
        Assert.Equal(U64(2), await ReadUntilAsync(hostSide, 0, 0));
        await hostSide.WriteAsync(Frame(3, 1, []));
        await hostSide.WriteAsync(Frame(3, 2, Encoding.ASCII.GetBytes("GET /echo?a=1 HTTP/1.1\r\nAuthorization: T\r\n\r\n")));
        await hostSide.WriteAsync(Frame(3, 3, []));
        var answer = Encoding.ASCII.GetString(await ReadUntilAsync(hostSide, 3, 2));
        Assert.StartsWith("HTTP/1.1 200 OK", answer);
        Assert.Contains("query a=1", answer + Encoding.ASCII.GetString(await ReadUntilAsync(hostSide, 3, 2)));
        Assert.False(guest.Closed.IsCompleted);
        await hostSide.DisposeAsync();
        await serving.WaitAsync(Bound);
    }

    [Fact]
    public async Task A_daemon_that_sends_beyond_its_credit_gets_the_host_stream_reset()
    {
        var (hostSide, guestSide) = await PairAsync(dir.Combine("credit.sock"));
        await using var host = await MuxConnection.ConnectAsync(hostSide, CancellationToken.None);
        var hello = await ReadFrameAsync(guestSide);
        await guestSide.WriteAsync(Frame(0, 0, hello.Payload));
        var stream = (MuxStream)await host.OpenStreamAsync(CancellationToken.None);
        await ReadUntilAsync(guestSide, 1, 1);
        var chunk = new byte[MuxConnection.MaxPayload];
        var writing = Task.Run(async () =>
        {
            for (var i = 0; i < MuxConnection.InitialWindow / chunk.Length + 1; i++)
            {
                await guestSide.WriteAsync(Frame(1, 2, chunk));
            }
        });
        await ReadUntilAsync(guestSide, 1, 4); // RESET
        await writing.WaitAsync(Bound);
        Assert.True(stream.Buffered <= MuxConnection.InitialWindow);
        await Refused(async () =>
        {
            var buffer = new byte[1 << 20];
            while (await stream.ReadAsync(buffer) > 0)
            {
            }
        });
        Assert.False(host.Closed.IsCompleted);
    }

    [Fact]
    public async Task An_empty_data_frame_is_not_the_end_of_a_stream()
    {
        var (hostSide, guestSide) = await PairAsync(dir.Combine("empty.sock"));
        await using var guest = MuxConnection.Serve(guestSide);
        await hostSide.WriteAsync(Frame(0, 0, U64(5)));
        await ReadUntilAsync(hostSide, 0, 0);
        await hostSide.WriteAsync(Frame(1, 1, []));
        await hostSide.WriteAsync(Frame(1, 2, []));
        await hostSide.WriteAsync(Frame(1, 2, "abc"u8.ToArray()));
        await hostSide.WriteAsync(Frame(1, 2, []));
        await hostSide.WriteAsync(Frame(1, 2, "def"u8.ToArray()));
        await hostSide.WriteAsync(Frame(1, 3, []));
        var stream = (await guest.AcceptAsync(CancellationToken.None).AsTask().WaitAsync(Bound))!;
        using var reader = new StreamReader(stream);
        Assert.Equal("abcdef", await reader.ReadToEndAsync().WaitAsync(Bound));
    }

    [Fact]
    public async Task Window_frames_that_add_up_past_2_GiB_do_not_stall_the_writer()
    {
        var (hostSide, guestSide) = await PairAsync(dir.Combine("window.sock"));
        await using var guest = MuxConnection.Serve(guestSide);
        await hostSide.WriteAsync(Frame(0, 0, U64(6)));
        await ReadUntilAsync(hostSide, 0, 0);
        await hostSide.WriteAsync(Frame(1, 1, []));
        var stream = (await guest.AcceptAsync(CancellationToken.None).AsTask().WaitAsync(Bound))!;
        var grant = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(grant, 0xFFFFFFFF);
        // Three grants of 1 GiB on top of the initial 4 MiB: past int.MaxValue, where a plain sum turns negative.
        for (var i = 0; i < 3; i++)
        {
            await hostSide.WriteAsync(Frame(1, 5, grant));
        }

        await Task.Delay(200);
        var data = new byte[1 << 20];
        var writing = stream.WriteAsync(data).AsTask();
        var received = 0;
        while (received < data.Length)
        {
            received += (await ReadUntilAsync(hostSide, 1, 2)).Length;
        }

        await writing.WaitAsync(Bound);
    }

    [Fact]
    public async Task An_open_flood_keeps_at_most_the_stream_limit_and_a_new_session_clears_it()
    {
        var (hostSide, guestSide) = await PairAsync(dir.Combine("flood.sock"));
        await using var guest = MuxConnection.Serve(guestSide);
        await hostSide.WriteAsync(Frame(0, 0, U64(9)));
        await ReadUntilAsync(hostSide, 0, 0);
        var flood = new byte[5000 * MuxConnection.HeaderSize];
        for (var i = 0; i < 5000; i++)
        {
            MuxConnection.WriteHeader(flood.AsSpan(i * MuxConnection.HeaderSize), (uint)(2 * i + 1), 1, 0);
        }

        await hostSide.WriteAsync(flood);
        await hostSide.WriteAsync(Frame(0, 0, U64(10)));
        // Refusals (RESET) come before the echo of the new session.
        var resets = 0;
        while (true)
        {
            var frame = await ReadFrameAsync(hostSide);
            if (frame.Kind == 0)
            {
                break;
            }

            Assert.Equal(4, frame.Kind);
            resets++;
        }

        Assert.True(resets > 0);
        Assert.Equal(0, guest.OpenStreams);
        Assert.Equal(2, guest.Generation);

        // The channel still serves: a new stream is accepted.
        await hostSide.WriteAsync(Frame(1, 1, []));
        Assert.NotNull(await guest.AcceptAsync(CancellationToken.None).AsTask().WaitAsync(Bound));
    }

    [Fact]
    public async Task A_hostile_request_on_one_mux_stream_is_answered_400_and_the_others_are_served()
    {
        var (hostSide, guestSide) = await PairAsync(dir.Combine("badreq.sock"));
        await using var guest = MuxConnection.Serve(guestSide);
        var daemon = new FakeDaemon(dir.Path, "T");
        var serving = daemon.ServeAsync(guest);
        await using var host = await MuxConnection.ConnectAsync(hostSide, CancellationToken.None);
        await using (var bad = await host.OpenStreamAsync(CancellationToken.None))
        {
            var line = new byte[200 * 1024];
            Array.Fill(line, (byte)'a');
            var writing = bad.WriteAsync("GET / HTTP/1.1\r\nX: "u8.ToArray().Concat(line).ToArray()).AsTask();
            var response = await Http.ReadResponseAsync(new BufferedReader(bad), CancellationToken.None).WaitAsync(Bound);
            Assert.Equal(400, response.Status);
            await writing.WaitAsync(Bound).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }

        Assert.Equal(1, daemon.BadRequests);
        await using var client = new RestoreClient(new MuxTransport(host), "T", ownsTransport: false);
        Directory.CreateDirectory(dir.Combine("files"));
        await File.WriteAllTextAsync(dir.Combine("files/f"), "fine");
        var buffer = new byte[10];
        Assert.Equal(4, await client.ReadAsync("dir/raw/files/f"u8.ToArray(), 0, buffer, CancellationToken.None).WaitAsync(Bound));
        await host.DisposeAsync();
        await serving.WaitAsync(Bound);
    }

    private static async Task WaitForAsync(Func<bool> condition)
    {
        for (var i = 0; i < 100 && !condition(); i++)
        {
            await Task.Delay(50);
        }

        Assert.True(condition());
    }
}
