using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using RestoreFs.RestoreApi;
using RestoreFs.RestoreDaemon.Disks;
using RestoreFs.RestoreDaemon.Server;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>A real directory served as the one raw volume of a disk named "dir": for protocol tests that need no
/// disk images. Named so: it is a stand-in for <see cref="DiskCatalog"/>.</summary>
internal sealed class DirectoryVolumeCatalogForTests(string directory) : IVolumeCatalog
{
    private readonly VolumeInfo volume = new("dir", "raw", [], directory, 0, "directory");

    public IReadOnlyList<MountedVolume> Mounts => [new MountedVolume(volume, directory, "directory", null)];

    public Task<IReadOnlyList<DiskInfo>> GetDisksAsync(CancellationToken ct) =>
        Task.FromResult<IReadOnlyList<DiskInfo>>([new DiskInfo("dir", directory, 0, [volume], null)]);

    public Task<string> MountAsync(VolumeInfo v, CancellationToken ct) => Task.FromResult(directory);
}

/// <summary>The multiplexed channel (as used over virtio-serial) with the real server, and its wire format.</summary>
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

    private static async Task ServeAsync(MuxConnection mux, DaemonServer server)
    {
        while (await mux.AcceptAsync(CancellationToken.None) is { } stream)
        {
            _ = Task.Run(() => server.HandleAsync(stream, CancellationToken.None));
        }
    }

    [Fact]
    public void Frame_header_golden_bytes()
    {
        // DATA on stream 3 with 5 bytes: id, kind, flags, reserved, length — big endian.
        var header = new byte[MuxConnection.HeaderSize];
        BinaryPrimitives.WriteUInt32BigEndian(header, 3);
        header[4] = 2;
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(8), 5);
        Assert.Equal("00000003" + "02" + "00" + "0000" + "00000005", Convert.ToHexStringLower(header));
        var request = Http.FormatRequest("/api2/json/list", [KeyValuePair.Create("path", "ZGlzaw==")], "T");
        Assert.Equal("GET /api2/json/list?path=ZGlzaw%3D%3D HTTP/1.1\r\nHost: restore-vm\r\nConnection: close\r\nAuthorization: T\r\n\r\n",
            Encoding.ASCII.GetString(request));
    }

    [Fact]
    public async Task Concurrent_requests_and_a_large_answer_share_one_channel()
    {
        var data = new byte[5 * 1024 * 1024 + 17];
        new Random(3).NextBytes(data);
        Directory.CreateDirectory(dir.Combine("tree/sub"));
        await File.WriteAllBytesAsync(dir.Combine("tree/big.bin"), data);
        await File.WriteAllTextAsync(dir.Combine("tree/sub/a.txt"), "a");
        var (hostSide, guestSide) = await PairAsync(dir.Combine("pair.sock"));
        using var server = new DaemonServer(new DirectoryVolumeCatalogForTests(dir.Combine("tree")),
            new DaemonServerOptions("T", TimeSpan.FromMinutes(5), TimeSpan.Zero), _ => { }, () => { });
        var guestMux = MuxConnection.Serve(guestSide);
        var serving = ServeAsync(guestMux, server);
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

    [Fact]
    public async Task A_new_hello_drops_the_streams_of_the_previous_session()
    {
        var (hostSide, guestSide) = await PairAsync(dir.Combine("pair2.sock"));
        await using var guest = MuxConnection.Serve(guestSide);
        async Task Send(uint id, byte kind, byte[] payload)
        {
            var header = new byte[12];
            BinaryPrimitives.WriteUInt32BigEndian(header, id);
            header[4] = kind;
            BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(8), (uint)payload.Length);
            await hostSide.WriteAsync(header.Concat(payload).ToArray());
        }

        await Send(0, 0, BitConverter.GetBytes(1UL));
        await Send(1, 1, []);
        var stream = await guest.AcceptAsync(CancellationToken.None).AsTask().WaitAsync(TimeSpan.FromSeconds(5));
        Assert.NotNull(stream);
        var reading = stream!.ReadAsync(new byte[10]).AsTask();
        await Send(0, 0, BitConverter.GetBytes(2UL));
        await Assert.ThrowsAsync<IOException>(() => reading.WaitAsync(TimeSpan.FromSeconds(5)));
        await Send(1, 1, []);
        Assert.NotNull(await guest.AcceptAsync(CancellationToken.None).AsTask().WaitAsync(TimeSpan.FromSeconds(5)));

        // A malformed frame ends the connection cleanly.
        await Send(5, 9, []);
        Assert.Null(await guest.AcceptAsync(CancellationToken.None).AsTask().WaitAsync(TimeSpan.FromSeconds(5)));
        Assert.IsType<InvalidDataException>(guest.Error);
        await hostSide.DisposeAsync();
    }

    [Fact]
    public async Task A_directory_of_100000_entries_streams()
    {
        var big = dir.Combine("many");
        Directory.CreateDirectory(big);
        for (var i = 0; i < 100_000; i++)
        {
            File.Create(Path.Combine(big, $"entry-{i:D6}-with-a-name-long-enough-to-matter")).Dispose();
        }

        using var server = new DaemonServer(new DirectoryVolumeCatalogForTests(big), new DaemonServerOptions("T", TimeSpan.FromMinutes(5), TimeSpan.Zero), _ => { }, () => { });
        var socket = dir.Combine("api.sock");
        using var listener = Listeners.Bind(new UnixDomainSocketEndPoint(socket));
        using var stop = new CancellationTokenSource();
        var serving = Listeners.ServeSocketAsync(listener, server, _ => { }, stop.Token);

        // The answer is chunked (never one buffer), and the client holds one entry at a time.
        await using (var raw = await SocketTransport.Unix(socket).OpenStreamAsync(CancellationToken.None))
        {
            await raw.WriteAsync(Http.FormatRequest("/api2/json/list", [KeyValuePair.Create("path", Convert.ToBase64String("dir/raw"u8))], "T"));
            var response = await Http.ReadResponseAsync(new BufferedReader(raw), CancellationToken.None);
            Assert.Equal("chunked", response.Header("transfer-encoding"));
        }

        await using var client = new RestoreClient(SocketTransport.Unix(socket), "T");
        var count = 0;
        var names = new HashSet<string>();
        await foreach (var e in client.ListAsync("dir/raw"u8.ToArray(), CancellationToken.None))
        {
            count++;
            names.Add(Encoding.UTF8.GetString(e.Name));
        }

        Assert.Equal(100_000, count);
        Assert.Contains("entry-099999-with-a-name-long-enough-to-matter", names);
        stop.Cancel();
        await serving.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    [Fact]
    public async Task Idle_timeout_shuts_down_and_keep_timeout_status_does_not_reset_it()
    {
        Directory.CreateDirectory(dir.Combine("idle"));
        var shutdown = new TaskCompletionSource();
        using var server = new DaemonServer(new DirectoryVolumeCatalogForTests(dir.Combine("idle")),
            new DaemonServerOptions("T", TimeSpan.FromSeconds(2), TimeSpan.Zero), _ => { }, () => shutdown.TrySetResult());
        var socket = dir.Combine("idle.sock");
        using var listener = Listeners.Bind(new UnixDomainSocketEndPoint(socket));
        using var stop = new CancellationTokenSource();
        var serving = Listeners.ServeSocketAsync(listener, server, _ => { }, stop.Token);
        await using var client = new RestoreClient(SocketTransport.Unix(socket), "T");
        var started = DateTime.UtcNow;
        for (var i = 0; i < 5; i++)
        {
            var status = await client.StatusAsync(keepTimeout: true, CancellationToken.None);
            Assert.InRange(status.Timeout, 0, 2);
            await Task.Delay(200);
        }

        await shutdown.Task.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.InRange((DateTime.UtcNow - started).TotalSeconds, 1.5, 4);
        stop.Cancel();
        await serving.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }
}
