using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Threading.Channels;

namespace RestoreFs.RestoreApi;

/*
 * Multiplexing over one byte stream (the virtio-serial port between host and restore VM).
 *
 * Frame: 12-byte header, then the payload.
 *   u32 stream id (big endian)   u8 kind   u8 flags (0)   u16 reserved (0)   u32 payload length (big endian, ≤ 256 KiB)
 * Kinds:
 *   HELLO  (0)  stream 0; payload u64 session id. The host sends it first on every (re)connection; the daemon drops
 *               every stream of an earlier session, so a host that went away leaves nothing behind.
 *   OPEN   (1)  the host opens a stream (ids are chosen by the host, odd, increasing).
 *   DATA   (2)  payload bytes for the stream; the sender may not exceed the credit the receiver granted.
 *   CLOSE  (3)  the sender will write no more to the stream (end of request / end of answer).
 *   RESET  (4)  the stream is aborted; both sides forget it.
 *   WINDOW (5)  payload u32: more credit for the receiver's peer to send on the stream.
 * Each stream starts with 4 MiB of credit in each direction; a receiver grants more as its reader consumes bytes,
 * so one slow stream never blocks the others nor grows memory without bound.
 */

/// <summary>One side of a multiplexed connection.</summary>
public sealed class MuxConnection : IAsyncDisposable
{
    public const int HeaderSize = 12;
    public const int MaxPayload = 256 * 1024;
    public const int InitialWindow = 4 * 1024 * 1024;

    internal const byte Hello = 0, Open = 1, Data = 2, Close = 3, Reset = 4, Window = 5;

    private readonly Stream inner;
    private readonly bool isHost;
    private readonly SemaphoreSlim writeLock = new(1, 1);
    private readonly ConcurrentDictionary<uint, MuxStream> streams = new();
    private readonly Channel<MuxStream> accepted = Channel.CreateUnbounded<MuxStream>();
    private readonly CancellationTokenSource stop = new();
    private readonly Task reader;
    private readonly TaskCompletionSource closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private uint nextId = 1;
    private ulong session;
    private int disposed;

    private MuxConnection(Stream inner, bool isHost)
    {
        this.inner = inner;
        this.isHost = isHost;
        reader = Task.Run(ReadLoopAsync);
    }

    /// <summary>Set when the underlying stream ended or failed; all streams are aborted then.</summary>
    public Task Closed => closed.Task;

    public Exception? Error { get; private set; }

    /// <summary>The host side: sends HELLO with a fresh session id.</summary>
    public static async Task<MuxConnection> ConnectAsync(Stream inner, CancellationToken ct)
    {
        var connection = new MuxConnection(inner, isHost: true);
        var payload = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(payload, (ulong)Random.Shared.NextInt64());
        await connection.SendAsync(0, Hello, payload, ct).ConfigureAwait(false);
        return connection;
    }

    /// <summary>The daemon side: waits for streams the host opens.</summary>
    public static MuxConnection Serve(Stream inner) => new(inner, isHost: false);

    public async ValueTask<Stream> OpenStreamAsync(CancellationToken ct)
    {
        if (!isHost)
        {
            throw new InvalidOperationException("only the host opens streams");
        }

        if (closed.Task.IsCompleted)
        {
            throw new IOException("the multiplexed channel is closed", Error);
        }

        var id = Interlocked.Add(ref nextId, 2) - 2;
        var stream = new MuxStream(this, id);
        streams[id] = stream;
        await SendAsync(id, Open, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
        return stream;
    }

    /// <summary>The next stream the host opened; null when the connection ended.</summary>
    public async ValueTask<Stream?> AcceptAsync(CancellationToken ct)
    {
        try
        {
            return await accepted.Reader.ReadAsync(ct).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
            return null;
        }
    }

    internal async ValueTask SendAsync(uint id, byte kind, ReadOnlyMemory<byte> payload, CancellationToken ct)
    {
        // Header and payload in one write: on the guest's serial port every write is a system call.
        var frame = System.Buffers.ArrayPool<byte>.Shared.Rent(HeaderSize + payload.Length);
        frame.AsSpan(0, HeaderSize).Clear();
        BinaryPrimitives.WriteUInt32BigEndian(frame, id);
        frame[4] = kind;
        BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(8), (uint)payload.Length);
        payload.Span.CopyTo(frame.AsSpan(HeaderSize));
        await writeLock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (closed.Task.IsCompleted)
            {
                throw new IOException("the multiplexed channel is closed", Error);
            }

            await inner.WriteAsync(frame.AsMemory(0, HeaderSize + payload.Length), ct).ConfigureAwait(false);
            await inner.FlushAsync(ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or NotSupportedException)
        {
            Fail(e);
            throw new IOException("the multiplexed channel broke while sending", e);
        }
        finally
        {
            writeLock.Release();
            System.Buffers.ArrayPool<byte>.Shared.Return(frame);
        }
    }

    internal void Forget(uint id) => streams.TryRemove(id, out _);

    private async Task ReadLoopAsync()
    {
        var header = new byte[HeaderSize];
        try
        {
            while (!stop.IsCancellationRequested)
            {
                if (!await ReadExactAsync(header).ConfigureAwait(false))
                {
                    break;
                }

                var id = BinaryPrimitives.ReadUInt32BigEndian(header);
                var kind = header[4];
                var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
                if (length > MaxPayload || kind > Window)
                {
                    throw new InvalidDataException($"malformed frame (kind {kind}, {length} bytes) on the multiplexed channel");
                }

                var payload = new byte[length];
                if (length > 0 && !await ReadExactAsync(payload).ConfigureAwait(false))
                {
                    throw new EndOfStreamException("the channel ended inside a frame");
                }

                Dispatch(id, kind, payload);
            }

            Fail(null);
        }
        catch (Exception e)
        {
            Fail(e);
        }
    }

    private void Dispatch(uint id, byte kind, byte[] payload)
    {
        switch (kind)
        {
            case Hello when !isHost && payload.Length == 8:
                var newSession = BinaryPrimitives.ReadUInt64BigEndian(payload);
                if (newSession != session)
                {
                    session = newSession;
                    foreach (var old in streams.Values)
                    {
                        old.Abort(new IOException("the host started a new session"));
                    }

                    streams.Clear();
                }

                break;
            case Open when !isHost:
                var stream = new MuxStream(this, id);
                if (streams.TryAdd(id, stream))
                {
                    accepted.Writer.TryWrite(stream);
                }

                break;
            case Data:
                if (streams.TryGetValue(id, out var s1))
                {
                    s1.Receive(payload);
                }

                break;
            case Close:
                if (streams.TryGetValue(id, out var s2))
                {
                    s2.ReceiveEnd();
                }

                break;
            case Reset:
                if (streams.TryRemove(id, out var s3))
                {
                    s3.Abort(new IOException("the peer reset the stream"));
                }

                break;
            case Window when payload.Length == 4:
                if (streams.TryGetValue(id, out var s4))
                {
                    s4.Grant((int)BinaryPrimitives.ReadUInt32BigEndian(payload));
                }

                break;
        }
    }

    private async Task<bool> ReadExactAsync(byte[] buffer)
    {
        var done = 0;
        while (done < buffer.Length)
        {
            var n = await inner.ReadAsync(buffer.AsMemory(done), stop.Token).ConfigureAwait(false);
            if (n == 0)
            {
                return done == 0 ? false : throw new EndOfStreamException("the channel ended inside a frame");
            }

            done += n;
        }

        return true;
    }

    private void Fail(Exception? e)
    {
        if (closed.Task.IsCompleted)
        {
            return;
        }

        Error = e;
        accepted.Writer.TryComplete();
        foreach (var s in streams.Values)
        {
            s.Abort(new IOException("the multiplexed channel closed", e));
        }

        streams.Clear();
        closed.TrySetResult();
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref disposed, 1) == 1)
        {
            return;
        }

        Fail(null);
        stop.Cancel();
        await inner.DisposeAsync().ConfigureAwait(false);
        // A read blocked in a character device (the guest's serial port) does not see cancellation: don't wait forever.
        await reader.WaitAsync(TimeSpan.FromSeconds(1)).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }
}

/// <summary>One duplex stream of a <see cref="MuxConnection"/>. Disposing it closes the sending side (CLOSE) and
/// resets the stream when the peer had not finished.</summary>
public sealed class MuxStream : Stream
{
    private readonly MuxConnection connection;
    private readonly uint id;
    private readonly object gate = new();
    private readonly Queue<byte[]> incoming = new();
    private readonly SemaphoreSlim dataReady = new(0);
    private readonly SemaphoreSlim creditReady = new(0);
    private byte[]? current;
    private int currentOffset;
    private bool ended;
    private Exception? error;
    private int sendCredit = MuxConnection.InitialWindow;
    private int consumedSinceGrant;
    private bool sentClose;
    private bool disposed;

    internal MuxStream(MuxConnection connection, uint id)
    {
        this.connection = connection;
        this.id = id;
    }

    public uint Id => id;

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    internal void Receive(byte[] payload)
    {
        lock (gate)
        {
            incoming.Enqueue(payload);
        }

        dataReady.Release();
    }

    internal void ReceiveEnd()
    {
        lock (gate)
        {
            ended = true;
        }

        dataReady.Release();
    }

    internal void Grant(int credit)
    {
        Interlocked.Add(ref sendCredit, credit);
        creditReady.Release();
    }

    internal void Abort(Exception e)
    {
        lock (gate)
        {
            error ??= e;
        }

        dataReady.Release();
        creditReady.Release();
    }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (true)
        {
            lock (gate)
            {
                if (current is null && incoming.Count > 0)
                {
                    current = incoming.Dequeue();
                    currentOffset = 0;
                }

                if (current is not null)
                {
                    var n = Math.Min(buffer.Length, current.Length - currentOffset);
                    current.AsMemory(currentOffset, n).CopyTo(buffer);
                    currentOffset += n;
                    if (currentOffset == current.Length)
                    {
                        current = null;
                    }

                    consumedSinceGrant += n;
                    if (consumedSinceGrant >= MuxConnection.InitialWindow / 4)
                    {
                        var grant = consumedSinceGrant;
                        consumedSinceGrant = 0;
                        var payload = new byte[4];
                        BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)grant);
                        _ = connection.SendAsync(id, MuxConnection.Window, payload, CancellationToken.None).AsTask()
                            .ContinueWith(t => _ = t.Exception, TaskScheduler.Default);
                    }

                    return n;
                }

                if (error is not null)
                {
                    throw new IOException(error.Message, error);
                }

                if (ended)
                {
                    return 0;
                }
            }

            await dataReady.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (buffer.Length > 0)
        {
            lock (gate)
            {
                if (error is not null)
                {
                    throw new IOException(error.Message, error);
                }
            }

            var credit = Volatile.Read(ref sendCredit);
            if (credit <= 0)
            {
                await creditReady.WaitAsync(cancellationToken).ConfigureAwait(false);
                continue;
            }

            var n = Math.Min(Math.Min(buffer.Length, MuxConnection.MaxPayload), credit);
            Interlocked.Add(ref sendCredit, -n);
            await connection.SendAsync(id, MuxConnection.Data, buffer[..n], cancellationToken).ConfigureAwait(false);
            buffer = buffer[n..];
        }
    }

    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Flush()
    {
    }

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>No more bytes from this side; the peer reads end of stream.</summary>
    public async Task CloseWriteAsync(CancellationToken ct)
    {
        if (!sentClose)
        {
            sentClose = true;
            await connection.SendAsync(id, MuxConnection.Close, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
        }
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override async ValueTask DisposeAsync()
    {
        if (disposed)
        {
            return;
        }

        disposed = true;
        bool peerDone;
        lock (gate)
        {
            peerDone = ended || error is not null;
        }

        try
        {
            if (!peerDone)
            {
                await connection.SendAsync(id, MuxConnection.Reset, ReadOnlyMemory<byte>.Empty, CancellationToken.None).ConfigureAwait(false);
            }
            else if (!sentClose && error is null)
            {
                await CloseWriteAsync(CancellationToken.None).ConfigureAwait(false);
            }
        }
        catch (IOException)
        {
            // The channel is gone; nothing to tell the peer.
        }

        connection.Forget(id);
        await base.DisposeAsync().ConfigureAwait(false);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing && !disposed)
        {
            DisposeAsync().AsTask().GetAwaiter().GetResult();
        }

        base.Dispose(disposing);
    }
}

/// <summary>Requests as streams of one multiplexed channel (the host side of the virtio-serial port).</summary>
public sealed class MuxTransport(MuxConnection connection) : IRestoreTransport
{
    public MuxConnection Connection => connection;

    public async ValueTask<Stream> OpenStreamAsync(CancellationToken ct) => await connection.OpenStreamAsync(ct).ConfigureAwait(false);

    public ValueTask DisposeAsync() => connection.DisposeAsync();
}
