using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using RestoreFs.RestoreApi;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreApi.Tests;

/// <summary>The multiplexed channel (as used over virtio-serial) with a fake daemon serving files, and its wire format.</summary>
public sealed class MuxTests : IDisposable
{
    private readonly TempDirectory dir = new("restorefs-mux");

    public void Dispose() => dir.Dispose();

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

    [Fact]
    public void Frame_header_golden_bytes()
    {
        // DATA on stream 3 with 5 bytes: id, kind, flags, reserved, length — big endian.
        var header = new byte[MuxConnection.HeaderSize];
        MuxConnection.WriteHeader(header, 3, 2, 5);
        Assert.Equal("00000003" + "02" + "00" + "0000" + "00000005", Convert.ToHexStringLower(header));
        MuxConnection.WriteHeader(header, 0x01020304, 5, 0x10000);
        Assert.Equal("01020304" + "05" + "00" + "0000" + "00010000", Convert.ToHexStringLower(header));
    }

    [Fact]
    public async Task Concurrent_requests_and_a_large_answer_share_one_channel_to_a_fake_daemon()
    {
        var data = new byte[5 * 1024 * 1024 + 17];
        new Random(3).NextBytes(data);
        Directory.CreateDirectory(dir.Combine("tree/sub"));
        await File.WriteAllBytesAsync(dir.Combine("tree/big.bin"), data);
        await File.WriteAllTextAsync(dir.Combine("tree/sub/a.txt"), "a");
        var (hostSide, guestSide) = await PairAsync(dir.Combine("pair.sock"));
        var server = new FakeDaemon(dir.Combine("tree"), "T");
        var guestMux = MuxConnection.Serve(guestSide);
        var serving = server.ServeAsync(guestMux);
        await using var client = new RestoreClient(new MuxTransport(await MuxConnection.ConnectAsync(hostSide, CancellationToken.None)), "T");

        // A 5 MiB extract that is read slowly while 40 small reads and lists run on other streams.
        await using var big = await client.ExtractAsync("dir/raw/big.bin"u8.ToArray(), ExtractFormat.Plain, false, CancellationToken.None);
        var first = new byte[1000];
        await big.ReadExactlyAsync(first);
        var small = Enumerable.Range(0, 40).Select(async i =>
        {
            var buffer = new byte[4096];
            var n = await client.ReadAsync("dir/raw/big.bin"u8.ToArray(), i * 100_000 + i, buffer, CancellationToken.None);
            Assert.Equal(4096, n);
            Assert.True(buffer.AsSpan().SequenceEqual(data.AsSpan(i * 100_000 + i, 4096)));
            var list = new List<ArchiveEntry>();
            await foreach (var e in client.ListAsync("dir/raw/sub"u8.ToArray(), CancellationToken.None))
            {
                list.Add(e);
            }

            Assert.Equal("a.txt", Encoding.UTF8.GetString(Assert.Single(list).Name));
        });
        await Task.WhenAll(small).WaitAsync(TimeSpan.FromSeconds(30));
        using var rest = new MemoryStream();
        await big.CopyToAsync(rest);
        Assert.True(first.Concat(rest.ToArray()).SequenceEqual(data));

        await client.DisposeAsync();
        await serving.WaitAsync(TimeSpan.FromSeconds(10));
        await guestMux.DisposeAsync();
    }

    /// <summary>One end of the channel driven frame by frame, as a peer (or a broken one) would.</summary>
    private sealed class RawPeer(Stream stream)
    {
        public Stream Stream => stream;

        public async Task SendAsync(uint id, byte kind, byte[] payload)
        {
            var frame = new byte[MuxConnection.HeaderSize + payload.Length];
            MuxConnection.WriteHeader(frame, id, kind, payload.Length);
            payload.CopyTo(frame, MuxConnection.HeaderSize);
            await stream.WriteAsync(frame);
        }

        public Task HelloAsync(ulong session)
        {
            var payload = new byte[8];
            BinaryPrimitives.WriteUInt64BigEndian(payload, session);
            return SendAsync(0, 0, payload);
        }

        public async Task<(uint Id, byte Kind, byte[] Payload)> ReadFrameAsync()
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            var header = new byte[MuxConnection.HeaderSize];
            await stream.ReadExactlyAsync(header, timeout.Token);
            var payload = new byte[BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8))];
            await stream.ReadExactlyAsync(payload, timeout.Token);
            return (BinaryPrimitives.ReadUInt32BigEndian(header), header[4], payload);
        }

        /// <summary>Reads frames until one of <paramref name="kind"/> on <paramref name="id"/>; returns it and the ones skipped.</summary>
        public async Task<(byte[] Payload, List<(uint Id, byte Kind, byte[] Payload)> Before)> ReadUntilAsync(uint id, byte kind)
        {
            var before = new List<(uint, byte, byte[])>();
            while (true)
            {
                var frame = await ReadFrameAsync();
                if (frame.Id == id && frame.Kind == kind)
                {
                    return (frame.Payload, before);
                }

                before.Add(frame);
            }
        }
    }

    private static byte[] Session(ulong id)
    {
        var payload = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(payload, id);
        return payload;
    }

    [Fact]
    public async Task A_new_hello_drops_the_streams_of_the_previous_session_and_is_echoed()
    {
        var (hostSide, guestSide) = await PairAsync(dir.Combine("pair2.sock"));
        await using var guest = MuxConnection.Serve(guestSide);
        var host = new RawPeer(hostSide);

        await host.HelloAsync(1);
        Assert.Equal(Session(1), (await host.ReadUntilAsync(0, 0)).Payload);
        await host.SendAsync(1, 1, []);
        var old = await guest.AcceptAsync(CancellationToken.None).AsTask().WaitAsync(TimeSpan.FromSeconds(5));
        Assert.NotNull(old);
        var reading = old!.ReadAsync(new byte[10]).AsTask();

        // The host reconnects (same channel from the guest's side): a new session.
        await host.HelloAsync(2);
        var (echo, _) = await host.ReadUntilAsync(0, 0);
        Assert.Equal(Session(2), echo);
        await Assert.ThrowsAsync<IOException>(() => reading.WaitAsync(TimeSpan.FromSeconds(5)));
        Assert.Equal(2, guest.Generation);

        // The new session reuses id 1: the old stream's late answer must not reach it.
        await host.SendAsync(1, 1, []);
        var fresh = await guest.AcceptAsync(CancellationToken.None).AsTask().WaitAsync(TimeSpan.FromSeconds(5));
        Assert.NotNull(fresh);
        await Assert.ThrowsAsync<IOException>(() => old.WriteAsync("stale"u8.ToArray()).AsTask());
        await old.DisposeAsync(); // no RESET for the new stream 1 either
        await fresh!.WriteAsync("fresh"u8.ToArray());
        await ((MuxStream)fresh).CloseWriteAsync(CancellationToken.None);
        var (data, skipped) = await host.ReadUntilAsync(1, 2);
        Assert.Equal("fresh", Encoding.ASCII.GetString(data));
        Assert.Empty(skipped);
        Assert.Equal(3, (await host.ReadFrameAsync()).Kind); // CLOSE
        await hostSide.DisposeAsync();
    }

    [Fact]
    public async Task A_malformed_frame_makes_the_daemon_drop_its_streams_and_wait_for_the_next_hello()
    {
        var (hostSide, guestSide) = await PairAsync(dir.Combine("pair3.sock"));
        await using var guest = MuxConnection.Serve(guestSide);
        var host = new RawPeer(hostSide);
        await host.HelloAsync(7);
        await host.SendAsync(1, 1, []);
        var stream = await guest.AcceptAsync(CancellationToken.None).AsTask().WaitAsync(TimeSpan.FromSeconds(5));
        var reading = stream!.ReadAsync(new byte[10]).AsTask();

        // Garbage, as when a host went away in the middle of a frame: a kind that does not exist.
        await hostSide.WriteAsync("GET /api2/json/status HTTP/1.1\r\n\r\n"u8.ToArray());
        await Assert.ThrowsAsync<IOException>(() => reading.WaitAsync(TimeSpan.FromSeconds(5)));
        Assert.Equal(1, guest.Resyncs);
        Assert.IsType<InvalidDataException>(guest.LastResyncCause);

        // Frames before the next HELLO are ignored; after it the channel works again.
        await host.SendAsync(3, 1, []);
        await host.HelloAsync(8);
        await host.SendAsync(5, 1, []);
        var next = await guest.AcceptAsync(CancellationToken.None).AsTask().WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(5u, ((MuxStream)next!).Id);
        Assert.False(guest.Closed.IsCompleted);
        await hostSide.DisposeAsync();
        Assert.Null(await guest.AcceptAsync(CancellationToken.None).AsTask().WaitAsync(TimeSpan.FromSeconds(5)));
    }

    [Fact]
    public async Task The_host_ignores_everything_the_daemon_sent_before_echoing_its_hello()
    {
        var (hostSide, guestSide) = await PairAsync(dir.Combine("pair4.sock"));
        var guest = new RawPeer(guestSide);
        // The tail of a frame cut by the previous host's disconnection, then a whole stale answer on stream 1.
        await guestSide.WriteAsync(new byte[] { 0, 0, 0, 9, 2, 0, 0 });
        await guest.SendAsync(1, 2, "stale answer"u8.ToArray());
        await guest.SendAsync(1, 3, []);

        await using var host = await MuxConnection.ConnectAsync(hostSide, CancellationToken.None);
        var hello = await guest.ReadFrameAsync();
        Assert.Equal((0u, (byte)0), (hello.Id, hello.Kind));
        Assert.Equal(host.Session, BinaryPrimitives.ReadUInt64BigEndian(hello.Payload));
        var stream = await host.OpenStreamAsync(CancellationToken.None);
        Assert.Equal(1u, ((MuxStream)stream).Id);
        Assert.False(host.SessionConfirmed.IsCompleted);

        await guest.SendAsync(0, 0, hello.Payload); // the echo
        await host.SessionConfirmed.WaitAsync(TimeSpan.FromSeconds(5));
        await guest.SendAsync(1, 2, "fresh"u8.ToArray());
        await guest.SendAsync(1, 3, []);
        using var reader = new StreamReader(stream);
        Assert.Equal("fresh", await reader.ReadToEndAsync().WaitAsync(TimeSpan.FromSeconds(5)));
        await guestSide.DisposeAsync();
    }

    [Fact]
    public async Task A_slow_stream_holds_at_most_its_window_and_does_not_block_the_others()
    {
        var (hostSide, guestSide) = await PairAsync(dir.Combine("pair5.sock"));
        await using var guest = MuxConnection.Serve(guestSide);
        await using var host = await MuxConnection.ConnectAsync(hostSide, CancellationToken.None);

        var slow = (MuxStream)await host.OpenStreamAsync(CancellationToken.None);
        var slowGuest = (await guest.AcceptAsync(CancellationToken.None))!;
        var data = new byte[3 * MuxConnection.InitialWindow + 12345];
        new Random(9).NextBytes(data);
        var writing = Task.Run(async () =>
        {
            await slowGuest.WriteAsync(data);
            await ((MuxStream)slowGuest).CloseWriteAsync(CancellationToken.None);
        });

        // Nobody reads the slow stream: the writer stops at the window and the host buffers no more than that.
        await Task.Delay(1000);
        Assert.False(writing.IsCompleted, "the writer was not held back by the window");
        Assert.InRange(slow.Buffered, MuxConnection.InitialWindow - MuxConnection.MaxPayload, MuxConnection.InitialWindow);

        // Meanwhile other streams work, in both directions.
        for (var i = 0; i < 20; i++)
        {
            var other = await host.OpenStreamAsync(CancellationToken.None);
            var otherGuest = (await guest.AcceptAsync(CancellationToken.None).AsTask().WaitAsync(TimeSpan.FromSeconds(5)))!;
            await other.WriteAsync(Encoding.ASCII.GetBytes($"ping {i}"));
            await ((MuxStream)other).CloseWriteAsync(CancellationToken.None);
            var request = await new StreamReader(otherGuest).ReadToEndAsync().WaitAsync(TimeSpan.FromSeconds(5));
            await otherGuest.WriteAsync(Encoding.ASCII.GetBytes(request.Replace("ping", "pong")));
            await ((MuxStream)otherGuest).CloseWriteAsync(CancellationToken.None);
            Assert.Equal($"pong {i}", await new StreamReader(other).ReadToEndAsync().WaitAsync(TimeSpan.FromSeconds(5)));
            await other.DisposeAsync();
            await otherGuest.DisposeAsync();
        }

        Assert.False(writing.IsCompleted);

        // Reading the slow stream lets the writer finish, byte-exact.
        using var received = new MemoryStream();
        await slow.CopyToAsync(received).WaitAsync(TimeSpan.FromSeconds(30));
        await writing.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.True(received.ToArray().AsSpan().SequenceEqual(data));
    }

    [Fact]
    public async Task A_peer_that_sends_beyond_its_credit_gets_the_stream_reset()
    {
        var (hostSide, guestSide) = await PairAsync(dir.Combine("pair6.sock"));
        await using var guest = MuxConnection.Serve(guestSide);
        var host = new RawPeer(hostSide);
        await host.HelloAsync(3);
        await host.SendAsync(1, 1, []);
        await host.SendAsync(3, 1, []);
        var flooded = (await guest.AcceptAsync(CancellationToken.None))!;
        var calm = (await guest.AcceptAsync(CancellationToken.None))!;
        var chunk = new byte[MuxConnection.MaxPayload];
        for (var sent = 0; sent <= MuxConnection.InitialWindow; sent += chunk.Length)
        {
            await host.SendAsync(1, 2, chunk);
        }

        var (_, before) = await host.ReadUntilAsync(1, 4); // RESET of stream 1
        Assert.DoesNotContain(before, f => f.Id == 1 && f.Kind == 2);
        // What was within the window can be read; then the stream reports the reset.
        await Assert.ThrowsAsync<IOException>(async () =>
        {
            var buffer = new byte[1 << 20];
            while (await flooded.ReadAsync(buffer) > 0)
            {
            }
        });

        await host.SendAsync(3, 2, "still fine"u8.ToArray());
        await host.SendAsync(3, 3, []);
        Assert.Equal("still fine", await new StreamReader(calm).ReadToEndAsync().WaitAsync(TimeSpan.FromSeconds(5)));
        await hostSide.DisposeAsync();
    }

    [Fact]
    public async Task Several_host_connections_over_the_life_of_one_channel_each_work_with_a_fake_daemon()
    {
        // The guest's port lives as long as the VM; hosts come and go through the chardev socket (a relay here, as
        // QEMU does it: while no host is connected, what the guest writes is dropped).
        var data = new byte[6 * 1024 * 1024];
        new Random(4).NextBytes(data);
        Directory.CreateDirectory(dir.Combine("vm"));
        await File.WriteAllBytesAsync(dir.Combine("vm/big.bin"), data);
        var (relayEnd, guestEnd) = await PairAsync(dir.Combine("port.sock"));
        var server = new FakeDaemon(dir.Combine("vm"), "T");
        await using var guestMux = MuxConnection.Serve(guestEnd);
        var serving = server.ServeAsync(guestMux);

        var chardev = dir.Combine("chardev.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(chardev));
        listener.Listen(1);
        NetworkStream? current = null;
        var gate = new object();
        var toHost = Task.Run(async () =>
        {
            var buffer = new byte[64 * 1024];
            int n;
            while ((n = await relayEnd.ReadAsync(buffer)) > 0)
            {
                NetworkStream? target;
                lock (gate)
                {
                    target = current;
                }

                try
                {
                    if (target is not null)
                    {
                        await target.WriteAsync(buffer.AsMemory(0, n));
                    }
                }
                catch (Exception e) when (e is IOException or ObjectDisposedException)
                {
                    // The host went away: the bytes are lost, as with QEMU.
                }
            }
        });
        var accepting = Task.Run(async () =>
        {
            while (true)
            {
                var client = new NetworkStream(await listener.AcceptAsync(), true);
                lock (gate)
                {
                    current = client;
                }

                try
                {
                    await client.CopyToAsync(relayEnd);
                }
                catch (IOException)
                {
                }

                lock (gate)
                {
                    current = null;
                }
            }
        });

        async Task<(RestoreClient Client, MuxConnection Mux)> ConnectAsync()
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(chardev));
            var mux = await MuxConnection.ConnectAsync(new NetworkStream(socket, true), CancellationToken.None);
            return (new RestoreClient(new MuxTransport(mux), "T"), mux);
        }

        for (var session = 0; session < 4; session++)
        {
            var (client, mux) = await ConnectAsync();
            var offset = 1_000_003 * session + 7;
            var buffer = new byte[200_000];
            Assert.Equal(buffer.Length, await client.ReadAsync("dir/raw/big.bin"u8.ToArray(), offset, buffer, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(20)));
            Assert.True(buffer.AsSpan().SequenceEqual(data.AsSpan(offset, buffer.Length)), $"session {session}: wrong bytes");
            Assert.Equal("big.bin", Encoding.UTF8.GetString(Assert.Single(await client.ListAllAsync("dir/raw")).Name));
            await mux.SessionConfirmed.WaitAsync(TimeSpan.FromSeconds(5));

            // Leave in the middle of a large answer: the daemon is still writing for this session when the next comes.
            var extract = await client.ExtractAsync("dir/raw/big.bin"u8.ToArray(), ExtractFormat.Plain, false, CancellationToken.None);
            await extract.ReadExactlyAsync(new byte[1000]);
            await client.DisposeAsync();
        }

        Assert.Equal(4, guestMux.Generation);
        Assert.Equal(0, guestMux.Resyncs);
        Assert.False(guestMux.Closed.IsCompleted);
        await relayEnd.DisposeAsync();
        await serving.WaitAsync(TimeSpan.FromSeconds(10));
        await toHost.WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        _ = accepting;
    }
}
