using System.Buffers.Binary;
using System.Net.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using RestoreFs.Nbd;
using RestoreFs.TestSupport;

namespace RestoreFs.Nbd.Tests;

/// <summary>An in-memory image; 1 MiB extents, all-zero ones reported as holes.</summary>
internal sealed class MemorySource(byte[] data) : IBlockSource
{
    public long Size => data.Length;

    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct)
    {
        data.AsSpan((int)offset, destination.Length).CopyTo(destination.Span);
        return ValueTask.CompletedTask;
    }

    public IEnumerable<BlockExtent> GetExtents(long offset, long length)
    {
        const int unit = 1 << 20;
        var end = Math.Min(Size, offset + length);
        for (var position = offset; position < end;)
        {
            var next = Math.Min(end, (position / unit + 1) * unit);
            var zero = data.AsSpan((int)position, (int)(next - position)).IndexOfAnyExcept((byte)0) < 0;
            yield return new BlockExtent(position, next - position, zero);
            position = next;
        }
    }
}

/// <summary>A 3 GiB image: 1 MiB of data at the start, then one hole — for requests larger than the read limit.</summary>
internal sealed class LargeSparseSource : IBlockSource
{
    public long Size => 3L << 30;

    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct)
    {
        var span = destination.Span;
        for (var i = 0; i < span.Length; i++)
        {
            span[i] = offset + i < (1 << 20) ? (byte)((offset + i) % 251 + 1) : (byte)0;
        }

        return ValueTask.CompletedTask;
    }

    public IEnumerable<BlockExtent> GetExtents(long offset, long length)
    {
        var end = offset + length;
        if (offset < 1 << 20)
        {
            yield return new BlockExtent(offset, Math.Min(end, 1 << 20) - offset, false);
        }

        if (end > 1 << 20)
        {
            var start = Math.Max(offset, 1 << 20);
            yield return new BlockExtent(start, end - start, true);
        }
    }
}

/// <summary>A source whose first request for extents fails (as an image whose store is out of reach when a client
/// first asks); everything after it works.</summary>
internal sealed class ExtentsFailingOnceSource(byte[] data) : IBlockSource
{
    private readonly MemorySource inner = new(data);
    private int failures = 1;

    public long Size => inner.Size;

    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct) => inner.ReadAsync(offset, destination, ct);

    public IEnumerable<BlockExtent> GetExtents(long offset, long length) =>
        Interlocked.Decrement(ref failures) >= 0 ? throw new IOException("store out of reach (test)") : inner.GetExtents(offset, length);
}

/// <summary>Our NBD server against real clients (qemu-img, qemu-io, nbdinfo, nbdcopy) and against malformed input.</summary>
public sealed class NbdTests : IAsyncLifetime
{
    private readonly TempDirectory dir = new("restorefs-nbd");
    private readonly byte[] data = new byte[24 * 1024 * 1024 + 4096];
    private NbdServer? unix;
    private NbdServer? tcp;

    private string Raw => dir.Combine("image.raw");

    public async Task InitializeAsync()
    {
        new Random(11).NextBytes(data);
        Array.Clear(data, 4 << 20, 8 << 20); // 8 MiB of zeros at 4 MiB
        File.WriteAllBytes(Raw, data);
        unix = new NbdServer(new NbdServerOptions { UnixSocketPath = dir.Combine("nbd.sock") }, NullLoggerFactory.Instance);
        unix.AddExport("disk", new MemorySource(data), "test disk");
        unix.AddExport("large", new LargeSparseSource());
        unix.AddExport("flaky", new ExtentsFailingOnceSource(data));
        await unix.StartAsync(CancellationToken.None);
        tcp = new NbdServer(new NbdServerOptions { TcpPort = 0 }, NullLoggerFactory.Instance);
        tcp.AddExport("disk", new MemorySource(data));
        await tcp.StartAsync(CancellationToken.None);
    }

    public async Task DisposeAsync()
    {
        await unix!.DisposeAsync();
        await tcp!.DisposeAsync();
        dir.Dispose();
    }

    private static ProcessResult Run(string tool, params string[] args) => ProcessRunner.Run(Requires.Tool(tool), args, TimeSpan.FromMinutes(2));

    [Fact]
    public void Qemu_img_convert_and_compare_over_unix_socket_and_tcp()
    {
        foreach (var uri in new[] { unix!.UriFor("disk"), tcp!.UriFor("disk") })
        {
            Run("qemu-img", "compare", "-f", "raw", "-F", "raw", uri, Raw).EnsureSuccess("qemu-img compare " + uri);
            var copy = dir.Combine($"copy-{Guid.NewGuid():N}.raw");
            Run("qemu-img", "convert", "-f", "raw", "-O", "raw", uri, copy).EnsureSuccess("qemu-img convert");
            Assert.Equal(data, File.ReadAllBytes(copy));
        }
    }

    [Fact]
    public void Block_status_over_more_than_the_read_limit_maps_a_large_export()
    {
        // nbdinfo asks for block status of up to 4 GiB at once: an effect length, not a payload.
        var map = Run("nbdinfo", "--map", unix!.UriFor("large")).EnsureSuccess("nbdinfo --map of a 3 GiB export");
        Assert.Matches(@"(?m)^\s*0\s+1048576\s+0\s", map.StdOut);
        Assert.Matches(@"(?m)^\s*1048576\s+3220176896\s+3\s", map.StdOut);
    }

    [Fact]
    public void Nbdinfo_lists_exports_and_maps_zero_regions_as_holes()
    {
        var list = Run("nbdinfo", "--list", $"nbd+unix://?socket={unix!.SocketPath}").EnsureSuccess("nbdinfo --list");
        Assert.Contains("disk", list.StdOut);
        Assert.Contains("test disk", list.StdOut);
        var map = Run("nbdinfo", "--map", unix.UriFor("disk")).EnsureSuccess("nbdinfo --map");
        Assert.Matches(@"(?m)^\s*4194304\s+8388608\s+3\s", map.StdOut);
        Assert.Matches(@"(?m)^\s*0\s+4194304\s+0\s", map.StdOut);
    }

    [Fact]
    public void Nbdcopy_with_four_connections_is_byte_exact()
    {
        var copy = dir.Combine("nbdcopy.raw");
        Run("nbdcopy", "--connections=4", "--requests=16", unix!.UriFor("disk"), copy).EnsureSuccess("nbdcopy");
        Assert.Equal(data, File.ReadAllBytes(copy));
    }

    [Fact]
    public void Writes_are_refused_and_the_server_keeps_serving()
    {
        var write = Run("qemu-io", "-f", "raw", "-c", "write -P 0x55 0 4096", unix!.UriFor("disk"));
        Assert.True(write.ExitCode != 0 || write.StdErr.Contains("ermission", StringComparison.Ordinal) || write.StdOut.Contains("ermission", StringComparison.Ordinal)
            || write.StdOut.Contains("read-only", StringComparison.OrdinalIgnoreCase) || write.StdErr.Contains("read-only", StringComparison.OrdinalIgnoreCase),
            write.StdOut + write.StdErr);
        Run("qemu-img", "compare", "-f", "raw", "-F", "raw", unix.UriFor("disk"), Raw).EnsureSuccess("compare after the refused write");
    }

    [Fact]
    public void A_block_status_the_source_cannot_answer_fails_that_request_and_the_connection_goes_on()
    {
        // One qemu-io connection: a map (block status) the source cannot answer, then reads on the same connection. The server used to drop the connection, so every later request of that client failed too.
        var run = Run("qemu-io", "-r", "-f", "raw", "-c", "map", "-c", $"read -P 0 {5 << 20} 4096", "-c", "read -v 0 16", unix!.UriFor("flaky"));
        Assert.True(run.StdOut.Contains("read 4096/4096 bytes"), $"exit {run.ExitCode}: {run.StdOut} {run.StdErr}");
        Assert.Contains("Failed to get allocation status", run.StdErr);
        var hex = string.Join(' ', data.Take(4).Select(b => b.ToString("x2")));
        Assert.Contains("00000000:  " + hex, run.StdOut);

        // A new client maps the export (the source answers now).
        var map = Run("nbdinfo", "--map", unix.UriFor("flaky")).EnsureSuccess("nbdinfo --map after the failed block status");
        Assert.Contains("hole,zero", map.StdOut);
    }

    [Fact]
    public async Task Malformed_requests_get_protocol_errors_or_a_clean_disconnect()
    {
        // Unknown option → NBD_REP_ERR_UNSUP; then a bad option magic → disconnect.
        using (var socket = await Connect())
        {
            await Send(socket, Option(99, []));
            var reply = await Receive(socket, 20);
            Assert.Equal(0x80000001u, BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(12)));
            await Receive(socket, (int)BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(16)));
            await Send(socket, new byte[16]);
            Assert.Equal(0, await socket.ReceiveAsync(new byte[1]));
        }

        // Transmission: an out-of-range read gets EINVAL, an oversized one EOVERFLOW; a bad request magic disconnects.
        using (var socket = await Connect())
        {
            await Send(socket, Option(1, "disk"u8.ToArray()));
            var info = await Receive(socket, 10);
            Assert.Equal((ulong)data.Length, BinaryPrimitives.ReadUInt64BigEndian(info));
            await Send(socket, Request(0, 1, (ulong)data.Length, 4096));
            Assert.Equal(22u, BinaryPrimitives.ReadUInt32BigEndian((await Receive(socket, 16)).AsSpan(4)));
            await Send(socket, Request(0, 2, 0, 64 * 1024 * 1024));
            Assert.Equal(75u, BinaryPrimitives.ReadUInt32BigEndian((await Receive(socket, 16)).AsSpan(4)));
            await Send(socket, Request(0, 3, 4096, 8));
            var ok = await Receive(socket, 16 + 8);
            Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(ok.AsSpan(4)));
            Assert.Equal(data.AsSpan(4096, 8).ToArray(), ok.AsSpan(16).ToArray());
            var bad = Request(0, 4, 0, 8);
            bad[0] ^= 0xFF;
            await Send(socket, bad);
            Assert.Equal(0, await socket.ReceiveAsync(new byte[1]));
        }

        Run("qemu-img", "compare", "-f", "raw", "-F", "raw", unix!.UriFor("disk"), Raw).EnsureSuccess("a good client after the bad ones");
    }

    private async Task<Socket> Connect()
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(unix!.SocketPath!));
        var hello = await Receive(socket, 18);
        Assert.Equal(0x4e42444d41474943ul, BinaryPrimitives.ReadUInt64BigEndian(hello));
        await Send(socket, [0, 0, 0, 3]);
        return socket;
    }

    private static byte[] Option(uint option, byte[] payload)
    {
        var b = new byte[16 + payload.Length];
        BinaryPrimitives.WriteUInt64BigEndian(b, 0x49484156454F5054);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(12), (uint)payload.Length);
        payload.CopyTo(b, 16);
        return b;
    }

    private static byte[] Request(ushort type, ulong cookie, ulong offset, uint length)
    {
        var b = new byte[28];
        BinaryPrimitives.WriteUInt32BigEndian(b, 0x25609513);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(6), type);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(24), length);
        return b;
    }

    private static async Task Send(Socket socket, byte[] bytes) => await socket.SendAsync(bytes);

    private static async Task<byte[]> Receive(Socket socket, int count)
    {
        var buffer = new byte[count];
        var done = 0;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        while (done < count)
        {
            var n = await socket.ReceiveAsync(buffer.AsMemory(done), timeout.Token);
            if (n == 0)
            {
                throw new EndOfStreamException($"server closed after {done} of {count} bytes");
            }

            done += n;
        }

        return buffer;
    }
}
