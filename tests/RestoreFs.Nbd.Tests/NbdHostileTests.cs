using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Runtime;
using Microsoft.Extensions.Logging;
using RestoreFs.Nbd;
using RestoreFs.TestSupport;
using Xunit.Abstractions;

// The memory test measures this process: no other test of this assembly may run beside it.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace RestoreFs.Nbd.Tests;

/// <summary>Keeps every log line, so a test can check that a refusal was logged.</summary>
internal sealed class CapturingLoggerFactory : ILoggerFactory, ILoggerProvider
{
    public ConcurrentQueue<(LogLevel Level, string Text)> Lines { get; } = new();

    public ILogger CreateLogger(string categoryName) => new Logger(Lines);

    public void AddProvider(ILoggerProvider provider)
    {
    }

    public void Dispose()
    {
    }

    public bool Has(LogLevel atLeast, string text) => Lines.Any(l => l.Level >= atLeast && l.Text.Contains(text, StringComparison.Ordinal));

    private sealed class Logger(ConcurrentQueue<(LogLevel, string)> lines) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            lines.Enqueue((logLevel, formatter(state, exception)));
    }
}

/// <summary>2 GiB and a bit, every 4 KiB block filled with a byte derived from its index; costs no memory.</summary>
internal sealed class PatternSource : IBlockSource
{
    public long Size => (2L << 30) + (1 << 20);

    public static byte At(long offset) => (byte)(offset / 4096 * 7 + 1);

    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct)
    {
        var span = destination.Span;
        for (var done = 0; done < span.Length;)
        {
            var position = offset + done;
            var run = (int)Math.Min(span.Length - done, 4096 - position % 4096);
            span.Slice(done, run).Fill(At(position));
            done += run;
        }

        return ValueTask.CompletedTask;
    }

    public IEnumerable<BlockExtent> GetExtents(long offset, long length)
    {
        yield return new BlockExtent(offset, Math.Min(length, Size - offset), false);
    }
}

/// <summary>
/// Hostile NBD clients speaking the handshake by hand: lengths that lie, options too big, unknown options and commands,
/// truncated and malformed requests, a client that pipelines reads and never reads the replies. Each gets the
/// protocol's answer and a log line (or a logged disconnect), memory stays bounded, and real clients still work after.
/// </summary>
public sealed class NbdHostileTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const uint RepAck = 1;
    private const uint RepInfo = 3;
    private const uint RepErrUnsup = 0x80000001;
    private const uint RepErrInvalid = 0x80000003;
    private const uint RepErrTooBig = 0x80000009;
    private const int MiB = 1 << 20;

    private readonly TempDirectory dir = new("restorefs-nbd-hostile");
    private readonly CapturingLoggerFactory logs = new();
    private readonly byte[] data = new byte[4 * MiB];
    private NbdServer? server;

    private string Raw => dir.Combine("image.raw");

    public async Task InitializeAsync()
    {
        new Random(17).NextBytes(data);
        Array.Clear(data, MiB, MiB);
        File.WriteAllBytes(Raw, data);
        server = new NbdServer(new NbdServerOptions { UnixSocketPath = dir.Combine("nbd.sock") }, logs);
        server.AddExport("disk", new MemorySource(data));
        server.AddExport("pattern", new PatternSource());
        await server.StartAsync(CancellationToken.None);
    }

    public async Task DisposeAsync()
    {
        await server!.DisposeAsync();
        dir.Dispose();
    }

    [Fact]
    public async Task Info_and_go_with_a_name_length_of_0xFFFFFFFF_are_answered_invalid_and_the_connection_stays()
    {
        using var socket = await Connect();
        foreach (var option in new uint[] { 6, 7 })
        {
            await Send(socket, Option(option, [0xFF, 0xFF, 0xFF, 0xFF, 0, 0]));
            Assert.Equal(RepErrInvalid, await ReplyType(socket, option));
        }

        // A name length just past the data, a request count past the data, a name over 4096 bytes.
        await Send(socket, Option(6, [0, 0, 0, 5, (byte)'d', (byte)'i', (byte)'s', (byte)'k', 0, 0]));
        Assert.Equal(RepErrInvalid, await ReplyType(socket, 6));
        await Send(socket, Option(6, [0, 0, 0, 4, (byte)'d', (byte)'i', (byte)'s', (byte)'k', 0xFF, 0xFF]));
        Assert.Equal(RepErrInvalid, await ReplyType(socket, 6));
        var longName = new byte[4 + 5000 + 2];
        BinaryPrimitives.WriteUInt32BigEndian(longName, 5000);
        await Send(socket, Option(6, longName));
        Assert.Equal(RepErrInvalid, await ReplyType(socket, 6));

        // Meta context: a query count of 0xFFFFFFFF and a query length past the end.
        await Send(socket, Option(8, []));
        Assert.Equal(RepAck, await ReplyType(socket, 8));
        await Send(socket, Option(10, [0, 0, 0, 4, (byte)'d', (byte)'i', (byte)'s', (byte)'k', 0xFF, 0xFF, 0xFF, 0xFF]));
        Assert.Equal(RepErrInvalid, await ReplyType(socket, 10));
        await Send(socket, Option(9, [0, 0, 0, 4, (byte)'d', (byte)'i', (byte)'s', (byte)'k', 0, 0, 0, 1, 0x7F, 0xFF, 0xFF, 0xFF]));
        Assert.Equal(RepErrInvalid, await ReplyType(socket, 9));
        Assert.True(logs.Has(LogLevel.Warning, "export name length 4294967295"), string.Join("\n", logs.Lines));
        Assert.True(logs.Has(LogLevel.Warning, "query count 4294967295"), string.Join("\n", logs.Lines));

        // The same connection then goes into transmission and reads.
        await Send(socket, Option(7, [0, 0, 0, 4, (byte)'d', (byte)'i', (byte)'s', (byte)'k', 0, 0]));
        uint type;
        while ((type = await ReplyType(socket, 7)) == RepInfo)
        {
        }

        Assert.Equal(RepAck, type);
        await Send(socket, Request(0, 1, 8192, 16));
        var reply = await Receive(socket, 20 + 8 + 16);
        Assert.Equal(data.AsSpan(8192, 16).ToArray(), reply.AsSpan(28).ToArray());
        RealClientsStillWork();
    }

    [Fact]
    public async Task Unknown_options_are_answered_unsup_and_logged()
    {
        using var socket = await Connect();
        foreach (var option in new uint[] { 4, 11, 99, 0xFFFFFFFF })
        {
            await Send(socket, Option(option, [1, 2, 3]));
            Assert.Equal(RepErrUnsup, await ReplyType(socket, option));
        }

        Assert.True(logs.Has(LogLevel.Warning, "option 99 is not supported"), string.Join("\n", logs.Lines));
        await Send(socket, Option(3, []));
        Assert.Equal(2u, await ReplyType(socket, 3));
        RealClientsStillWork();
    }

    [Fact]
    public async Task Oversize_options_are_answered_too_big_and_skipped_or_end_the_connection_logged()
    {
        using (var socket = await Connect())
        {
            // 1 MiB of junk: skipped, answered TOO_BIG, the next option is understood.
            await Send(socket, Option(6, new byte[MiB]));
            Assert.Equal(RepErrTooBig, await ReplyType(socket, 6));
            await Send(socket, Option(3, []));
            Assert.Equal(2u, await ReplyType(socket, 3));
        }

        using (var socket = await Connect())
        {
            // 4 GiB announced: answered TOO_BIG, then the server hangs up (nothing is read or kept).
            var header = Option(7, []);
            BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(12), 0xFFFFFFFF);
            await Send(socket, header);
            Assert.Equal(RepErrTooBig, await ReplyType(socket, 7));
            Assert.Equal(0, await ReceiveSome(socket));
        }

        using (var socket = await Connect())
        {
            // EXPORT_NAME has no error reply: a logged disconnect.
            var header = Option(1, []);
            BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(12), 100000);
            await Send(socket, header);
            Assert.Equal(0, await ReceiveSome(socket));
        }

        await WaitFor(() => logs.Has(LogLevel.Warning, "EXPORT_NAME has no error reply"));
        Assert.True(logs.Has(LogLevel.Warning, "too much to skip"), string.Join("\n", logs.Lines));
        RealClientsStillWork();
    }

    [Fact]
    public async Task Malformed_and_truncated_requests_get_errors_or_a_logged_disconnect()
    {
        using (var socket = await Attach("disk"))
        {
            await Send(socket, Request(0, 1, 0, 0));
            Assert.Equal(22u, await SimpleError(socket, 1));
            await Send(socket, Request(0, 2, 0, 33 * MiB));
            Assert.Equal(75u, await SimpleError(socket, 2));
            await Send(socket, Request(0, 3, (ulong)data.Length - 100, 4096));
            Assert.Equal(22u, await SimpleError(socket, 3));
            await Send(socket, Request(0, 4, ulong.MaxValue - 10, 4096));
            Assert.Equal(22u, await SimpleError(socket, 4));
            await Send(socket, Request(7, 5, 0, 0));
            Assert.Equal(22u, await SimpleError(socket, 5));
            await Send(socket, Request(5, 6, ulong.MaxValue, 1));
            Assert.Equal(22u, await SimpleError(socket, 6));
            await Send(socket, Request(77, 7, 0, 4096));
            Assert.Equal(22u, await SimpleError(socket, 7));
            var write = Request(1, 8, 0, 4096);
            await Send(socket, [.. write, .. new byte[4096]]);
            Assert.Equal(1u, await SimpleError(socket, 8));
            await Send(socket, Request(0, 9, 0, 16));
            var ok = await Receive(socket, 16 + 16);
            Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(ok.AsSpan(4)));
            Assert.Equal(data.AsSpan(0, 16).ToArray(), ok.AsSpan(16).ToArray());

            // Framing lost: a bad magic ends the connection, logged.
            var bad = Request(0, 10, 0, 8);
            BinaryPrimitives.WriteUInt32BigEndian(bad, 0xDEADBEEF);
            await Send(socket, bad);
            Assert.Equal(0, await ReceiveSome(socket));
        }

        await WaitFor(() => logs.Has(LogLevel.Warning, "bad request magic 0xdeadbeef"));
        Assert.True(logs.Has(LogLevel.Warning, "over the 33554432-byte maximum read"), string.Join("\n", logs.Lines));

        using (var socket = await Attach("disk"))
        {
            // A write whose payload cannot be skipped: logged disconnect.
            await Send(socket, Request(1, 11, 0, 0xFFFFFFF0));
            Assert.Equal(0, await ReceiveSome(socket));
        }

        await WaitFor(() => logs.Has(LogLevel.Warning, "its payload is not skipped"));

        // Truncated: half a request, half an option, then the client leaves; nobody hangs.
        using (var socket = await Attach("disk"))
        {
            await Send(socket, Request(0, 12, 0, 4096)[..13]);
        }

        using (var socket = await Connect())
        {
            await Send(socket, Option(7, [0, 0, 0, 4, (byte)'d', (byte)'i'])[..12]);
        }

        using (var socket = await Connect())
        {
            var option = Option(7, [0, 0, 0, 4, (byte)'d', (byte)'i', (byte)'s', (byte)'k', 0, 0]);
            await Send(socket, option[..^3]);
        }

        await WaitFor(() => logs.Has(LogLevel.Warning, "inside a request header (13 of 28 bytes)"));
        await WaitFor(() => logs.Has(LogLevel.Warning, "inside an option header (12 of 16 bytes)"));
        RealClientsStillWork();
        Assert.DoesNotContain(logs.Lines, l => l.Level >= LogLevel.Error);
    }

    [Fact]
    public async Task A_client_that_pipelines_reads_and_never_reads_the_replies_costs_bounded_memory_returned_when_it_leaves()
    {
        const int requests = 64;
        const int length = 32 * MiB;
        var (managedBefore, rssBefore) = Measure();
        var peakManaged = managedBefore;
        var peakRss = rssBefore;
        using (var socket = await Attach("pattern"))
        {
            var batch = new byte[requests * 28];
            for (var i = 0; i < requests; i++)
            {
                Request(0, (ulong)i, (ulong)i * length, length).CopyTo(batch, i * 28);
            }

            await Send(socket, batch);
            for (var i = 0; i < 20; i++)
            {
                await Task.Delay(100);
                peakManaged = Math.Max(peakManaged, GC.GetTotalMemory(false));
                peakRss = Math.Max(peakRss, Rss());
            }

            // Backpressure, not a drop: the connection is alive and answers in order as the client reads.
            for (var i = 0; i < 4; i++)
            {
                var head = await Receive(socket, 16);
                Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(head.AsSpan(4)));
                var cookie = BinaryPrimitives.ReadUInt64BigEndian(head.AsSpan(8));
                var body = await Receive(socket, length);
                Assert.Equal(PatternSource.At((long)cookie * length), body[0]);
                Assert.Equal(PatternSource.At((long)cookie * length + length - 1), body[^1]);
                peakManaged = Math.Max(peakManaged, GC.GetTotalMemory(false));
                peakRss = Math.Max(peakRss, Rss());
            }
        }

        // The managed heap held at most the in-flight bound (64 MiB) plus the test's own 32 MiB buffers.
        Assert.True(peakManaged - managedBefore < 320L * MiB, $"managed heap grew by {(peakManaged - managedBefore) / MiB} MiB");
        Assert.True(peakRss - rssBefore < 640L * MiB, $"RSS grew by {(peakRss - rssBefore) / MiB} MiB");

        // After the client left: its buffers are gone.
        long managedAfter = 0;
        long rssAfter = 0;
        for (var i = 0; i < 50; i++)
        {
            await Task.Delay(100);
            (managedAfter, rssAfter) = Measure();
            if (managedAfter - managedBefore < 16L * MiB && rssAfter - rssBefore < 192L * MiB)
            {
                break;
            }
        }

        output.WriteLine($"managed: start {managedBefore / MiB} MiB, peak +{(peakManaged - managedBefore) / MiB}, after +{(managedAfter - managedBefore) / MiB}; "
            + $"RSS: start {rssBefore / MiB} MiB, peak +{(peakRss - rssBefore) / MiB}, after +{(rssAfter - rssBefore) / MiB}");
        Assert.True(managedAfter - managedBefore < 16L * MiB, $"managed heap still {(managedAfter - managedBefore) / MiB} MiB above the start");
        Assert.True(rssAfter - rssBefore < 192L * MiB, $"RSS still {(rssAfter - rssBefore) / MiB} MiB above the start (peak +{(peakRss - rssBefore) / MiB})");
        RealClientsStillWork();
    }

    private void RealClientsStillWork()
    {
        var info = ProcessRunner.Run(Requires.Tool("nbdinfo"), ["--map", server!.UriFor("disk")], TimeSpan.FromMinutes(1)).EnsureSuccess("nbdinfo --map after the hostile client");
        Assert.Matches(@"(?m)^\s*1048576\s+1048576\s+3\s", info.StdOut);
        ProcessRunner.Run(Requires.Tool("qemu-img"), ["compare", "-f", "raw", "-F", "raw", server.UriFor("disk"), Raw], TimeSpan.FromMinutes(1))
            .EnsureSuccess("qemu-img compare after the hostile client");
    }

    private static (long Managed, long Rss) Measure()
    {
        GCSettings.LargeObjectHeapCompactionMode = GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(2, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        GC.Collect(2, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        return (GC.GetTotalMemory(true), Rss());
    }

    private static long Rss()
    {
        var line = File.ReadLines("/proc/self/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
    }

    private static async Task WaitFor(Func<bool> condition)
    {
        for (var i = 0; i < 100 && !condition(); i++)
        {
            await Task.Delay(50);
        }

        Assert.True(condition());
    }

    private async Task<Socket> Connect()
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(server!.SocketPath!));
        var hello = await Receive(socket, 18);
        Assert.Equal(0x4e42444d41474943ul, BinaryPrimitives.ReadUInt64BigEndian(hello));
        await Send(socket, [0, 0, 0, 3]);
        return socket;
    }

    /// <summary>Old-style EXPORT_NAME: simple replies, no structured ones.</summary>
    private async Task<Socket> Attach(string export)
    {
        var socket = await Connect();
        await Send(socket, Option(1, System.Text.Encoding.UTF8.GetBytes(export)));
        await Receive(socket, 10);
        return socket;
    }

    /// <summary>One option reply: checks magic and option, skips the payload, returns the type.</summary>
    private static async Task<uint> ReplyType(Socket socket, uint option)
    {
        var reply = await Receive(socket, 20);
        Assert.Equal(0x3e889045565a9ul, BinaryPrimitives.ReadUInt64BigEndian(reply));
        Assert.Equal(option, BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(8)));
        await Receive(socket, (int)BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(16)));
        return BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(12));
    }

    private static async Task<uint> SimpleError(Socket socket, ulong cookie)
    {
        var reply = await Receive(socket, 16);
        Assert.Equal(0x67446698u, BinaryPrimitives.ReadUInt32BigEndian(reply));
        Assert.Equal(cookie, BinaryPrimitives.ReadUInt64BigEndian(reply.AsSpan(8)));
        return BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(4));
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

    private static async Task Send(Socket socket, byte[] bytes)
    {
        for (var done = 0; done < bytes.Length;)
        {
            done += await socket.SendAsync(bytes.AsMemory(done));
        }
    }

    /// <summary>Bytes the server sends before closing; 0 once it has closed (within 10 s, else the test fails).</summary>
    private static async Task<int> ReceiveSome(Socket socket)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        var buffer = new byte[4096];
        var total = 0;
        int n;
        while ((n = await socket.ReceiveAsync(buffer, timeout.Token)) > 0)
        {
            total += n;
        }

        return total;
    }

    private static async Task<byte[]> Receive(Socket socket, int count)
    {
        var buffer = new byte[count];
        var done = 0;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
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
