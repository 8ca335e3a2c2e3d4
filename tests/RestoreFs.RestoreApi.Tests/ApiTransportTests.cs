using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using RestoreFs.RestoreApi;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreApi.Tests;

/// <summary>Transports (vsock address encoding, unix, loopback TCP) and how the client reports failures.</summary>
public sealed class ApiTransportTests : IDisposable
{
    private readonly TempDirectory dir = new("restorefs-transport");

    public void Dispose() => dir.Dispose();

    [Fact]
    public void Vsock_addresses_encode_as_sockaddr_vm()
    {
        Span<byte> raw = stackalloc byte[16];
        raw.Fill(0xAA);
        VsockSocket.Encode(0x01020304, 807, raw);
        Assert.Equal("2800" + "0000" + "27030000" + "04030201" + "00000000", Convert.ToHexStringLower(raw));

        // The EndPoint form carries the same bytes (.NET cannot label a SocketAddress with a family it does not know).
        var address = new VsockEndPoint(0x01020304, 807).Serialize();
        Assert.Equal(16, address.Size);
        var bytes = new byte[16];
        for (var i = 0; i < 16; i++)
        {
            bytes[i] = address[i];
        }

        // svm_family (u16) = AF_VSOCK 40, svm_reserved1 (u16), svm_port (u32), svm_cid (u32), svm_flags + zero[3]; host order (LE).
        Assert.Equal("2800" + "0000" + "27030000" + "04030201" + "00000000", Convert.ToHexStringLower(bytes));
        var back = (VsockEndPoint)new VsockEndPoint(0, 0).Create(address);
        Assert.Equal((0x01020304u, 807u), (back.Cid, back.Port));
        Assert.Equal("vsock:16909060:807", back.ToString());

        var any = new VsockEndPoint(VsockEndPoint.AnyCid, 807).Serialize();
        Assert.Equal(0xFF, any[8]);
        Assert.Equal(0xFF, any[11]);
        Assert.Equal(VsockEndPoint.Family, SocketTransport.Vsock(3, 807).EndPoint.AddressFamily);
    }

    [Fact]
    public async Task Vsock_to_the_host_cid_is_refused_and_a_failed_connection_is_an_io_error()
    {
        Assert.Throws<ArgumentException>(() => SocketTransport.Vsock(VsockEndPoint.HostCid, 807));
        await Assert.ThrowsAsync<ArgumentException>(() => VsockSocket.ConnectAsync(VsockEndPoint.HostCid, 807, CancellationToken.None));
        // CID 1 is the local loopback of vsock: nothing listens there (or there is no vsock at all) — an IOException
        // naming the address either way, never a PlatformNotSupportedException from .NET's Socket.
        var e = await Assert.ThrowsAsync<IOException>(async () => await SocketTransport.Vsock(1, 65001).OpenStreamAsync(CancellationToken.None));
        Assert.Contains("vsock:1:65001", e.Message);
    }

    [DllImport("libc", EntryPoint = "socketpair", SetLastError = true)]
    private static extern int SocketPair(int domain, int type, int protocol, int[] fds);

    /// <summary>Each request on a fresh kernel socket pair, the daemon's end served through <see cref="FdStream"/> (as
    /// vsock connections are) by the fake daemon.</summary>
    private sealed class SocketPairTransport(FakeDaemon server) : IRestoreTransport
    {
        public ValueTask<Stream> OpenStreamAsync(CancellationToken ct)
        {
            var fds = new int[2];
            Assert.Equal(0, SocketPair(1 /* AF_UNIX */, 1 /* SOCK_STREAM */ | 0x80000, 0, fds));
            var daemonEnd = new FdStream(fds[1]);
            _ = Task.Run(() => server.HandleAsync(daemonEnd, CancellationToken.None));
            return ValueTask.FromResult<Stream>(new FdStream(fds[0]));
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }

    [Fact]
    public async Task Descriptor_streams_carry_the_api_both_ways_to_a_fake_daemon()
    {
        Directory.CreateDirectory(dir.Combine("fd"));
        var data = new byte[5_000_003];
        new Random(8).NextBytes(data);
        await File.WriteAllBytesAsync(dir.Combine("fd/big.bin"), data);
        var server = new FakeDaemon(dir.Combine("fd"), "T");
        await using var client = new RestoreClient(new SocketPairTransport(server), "T");
        var reads = Enumerable.Range(0, 16).Select(async i =>
        {
            var buffer = new byte[1 << 20];
            var offset = i * 300_001;
            var n = await client.ReadAsync("dir/raw/big.bin"u8.ToArray(), offset, buffer, CancellationToken.None);
            Assert.Equal(Math.Min(buffer.Length, data.Length - offset), n);
            Assert.True(buffer.AsSpan(0, n).SequenceEqual(data.AsSpan(offset, n)));
        });
        await Task.WhenAll(reads).WaitAsync(TimeSpan.FromSeconds(30));
        await using var body = await client.ExtractAsync("dir/raw/big.bin"u8.ToArray(), ExtractFormat.Plain, false, CancellationToken.None);
        using var copy = new MemoryStream();
        await body.CopyToAsync(copy);
        Assert.True(copy.ToArray().AsSpan().SequenceEqual(data));

        // Disposing wakes a read blocked in another thread.
        var fds = new int[2];
        Assert.Equal(0, SocketPair(1, 1 | 0x80000, 0, fds));
        var a = new FdStream(fds[0]);
        using var b = new FdStream(fds[1]);
        var blocked = a.ReadAsync(new byte[10]).AsTask();
        await Task.Delay(200);
        Assert.False(blocked.IsCompleted);
        a.Dispose();
        Assert.Equal(0, await blocked.WaitAsync(TimeSpan.FromSeconds(5)));
        await Assert.ThrowsAsync<ObjectDisposedException>(() => a.ReadAsync(new byte[10]).AsTask());
        Assert.Equal(0, await b.ReadAsync(new byte[10]));
    }

    [Fact]
    public async Task A_missing_unix_socket_is_an_io_error()
    {
        var e = await Assert.ThrowsAsync<IOException>(async () => await SocketTransport.Unix(dir.Combine("none.sock")).OpenStreamAsync(CancellationToken.None));
        Assert.Contains("none.sock", e.Message);
        await using var client = new RestoreClient(SocketTransport.Unix(dir.Combine("none.sock")), "T");
        await Assert.ThrowsAsync<IOException>(() => client.StatusAsync(true, CancellationToken.None));
    }

    [Fact]
    public async Task The_client_works_over_loopback_tcp_with_a_fake_daemon()
    {
        Directory.CreateDirectory(dir.Combine("v"));
        await File.WriteAllTextAsync(dir.Combine("v/f.txt"), "over tcp\n");
        var server = new FakeDaemon(dir.Combine("v"), "T");
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(8);
        using var stop = new CancellationTokenSource();
        var serving = server.ServeAsync(listener, stop.Token);
        var port = ((IPEndPoint)listener.LocalEndPoint!).Port;
        await using var client = new RestoreClient(SocketTransport.Tcp(port), "T");
        var buffer = new byte[100];
        var n = await client.ReadAsync("dir/raw/f.txt"u8.ToArray(), 0, buffer, CancellationToken.None);
        Assert.Equal("over tcp\n", Encoding.ASCII.GetString(buffer, 0, n));
        Assert.Equal("f.txt", Encoding.ASCII.GetString(Assert.Single(await client.ListAllAsync("dir/raw")).Name));
        await stop.CancelAsync();
        await serving.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    /// <summary>A fake daemon that answers every connection with <paramref name="answer"/> (then closes).</summary>
    private async Task<(string Socket, Task Serving, CancellationTokenSource Stop)> FakeDaemonAsync(string name, byte[] answer)
    {
        var path = dir.Combine(name);
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen(8);
        var stop = new CancellationTokenSource();
        var serving = Task.Run(async () =>
        {
            using (listener)
            {
                while (!stop.IsCancellationRequested)
                {
                    using var client = await listener.AcceptAsync(stop.Token);
                    try
                    {
                        var head = new byte[4096];
                        await client.ReceiveAsync(head, SocketFlags.None, stop.Token);
                        await client.SendAsync(answer, SocketFlags.None, stop.Token);
                        client.Shutdown(SocketShutdown.Both);
                    }
                    catch (SocketException)
                    {
                        // The client gave up first: next one.
                    }
                }
            }
        });
        await Task.Yield();
        return (path, serving, stop);
    }

    [Theory]
    [InlineData("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n{\"data\":[{\"filepath\":\"YQ==\",\"ty", "cut")]
    [InlineData("HTTP/1.1 200 OK\r\nContent-Length: 25\r\n\r\n{\"data\":[{\"filepath\":7}]}", "malformed")]
    [InlineData("HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"data\":[1,2]", "not objects")]
    [InlineData("", "no answer")]
    [InlineData("garbage\r\n\r\n", "no HTTP")]
    public async Task Broken_answers_from_a_fake_daemon_are_io_errors(string answer, string what)
    {
        var (socket, serving, stop) = await FakeDaemonAsync("fake-" + what.Replace(' ', '-') + ".sock", Encoding.ASCII.GetBytes(answer));
        await using var client = new RestoreClient(SocketTransport.Unix(socket), "T");
        await Assert.ThrowsAsync<IOException>(() => client.ListAllAsync("x"));
        await Assert.ThrowsAsync<IOException>(() => client.StatusAsync(true, CancellationToken.None));
        await stop.CancelAsync();
        await serving.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    [Fact]
    public async Task Daemon_errors_from_a_fake_daemon_are_restore_api_exceptions_with_status_and_message()
    {
        var (socket, serving, stop) = await FakeDaemonAsync("fake-400.sock",
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 35\r\n\r\nvm/part/2: no file system detected\n"u8.ToArray());
        await using var client = new RestoreClient(SocketTransport.Unix(socket), "T");
        var e = await Assert.ThrowsAsync<RestoreApiException>(() => client.ReadAsync("x"u8.ToArray(), 0, new byte[1], CancellationToken.None));
        Assert.Equal((400, "vm/part/2: no file system detected"), (e.StatusCode, e.Message));
        await stop.CancelAsync();
        await serving.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);

        var (socket2, serving2, stop2) = await FakeDaemonAsync("fake-401.sock", "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"u8.ToArray());
        await using var client2 = new RestoreClient(SocketTransport.Unix(socket2), "T");
        var e2 = await Assert.ThrowsAsync<RestoreApiException>(() => client2.ListAllAsync("x"));
        Assert.Equal(401, e2.StatusCode);
        Assert.Contains("401", e2.Message);
        await stop2.CancelAsync();
        await serving2.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }
}
