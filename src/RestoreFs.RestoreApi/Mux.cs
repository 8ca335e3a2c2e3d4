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
 *   HELLO  (0)  stream 0; payload u64 session id. The host sends it first on every (re)connection, with a fresh random
 *               id; the daemon drops every stream of an earlier session and echoes the HELLO (same payload). The host
 *               ignores every frame before that echo: bytes the daemon still wrote for the previous session's streams
 *               (whose ids the new session reuses) can never be taken for answers to the new one. The daemon's own
 *               streams are tagged with their session, and a frame of an earlier session's stream is never sent after
 *               the echo.
 *   OPEN   (1)  the host opens a stream (ids are chosen by the host, odd, increasing).
 *   DATA   (2)  payload bytes for the stream; the sender may not exceed the credit the receiver granted.
 *   CLOSE  (3)  the sender will write no more to the stream (end of request / end of answer).
 *   RESET  (4)  the stream is aborted; both sides forget it.
 *   WINDOW (5)  payload u32: more credit for the receiver's peer to send on the stream.
 * Each stream starts with 4 MiB of credit in each direction; a receiver grants more as its reader consumes bytes
 * (once a quarter of the window was read), so one slow stream never blocks the others nor grows memory without
 * bound: a peer that sends beyond its credit gets the stream reset. Frames of unknown streams are dropped; an unknown
 * kind or an oversized frame ends the connection (InvalidDataException in <see cref="MuxConnection.Error"/>).
 * Against a broken or hostile peer: an empty DATA frame is ignored (it is not the end of the stream), credit granted
 * by WINDOW frames adds up to at most 1 GiB (no overflow), and the daemon keeps at most 1024 streams open: an OPEN
 * beyond that is answered RESET (while the peer reads its answers; otherwise it is dropped).
 */

/// <summary>One side of a multiplexed connection.</summary>
public sealed class MuxConnection : IAsyncDisposable
{
    public const int HeaderSize = 12;
    public const int MaxPayload = 256 * 1024;
    public const int InitialWindow = 4 * 1024 * 1024;

    /// <summary>Streams the daemon side keeps open (accepted or waiting to be); more OPENs are refused.</summary>
    public const int MaxStreams = 1024;

    /// <summary>The most credit a stream may hold, however many WINDOW frames come.</summary>
    internal const int MaxCredit = 1 << 30;

    /// <summary>RESET frames queued for a peer at once; beyond that (a peer that floods and does not read) none is sent.</summary>
    private const int MaxQueuedResets = 64;

    internal const byte Hello = 0, Open = 1, Data = 2, Close = 3, Reset = 4, Window = 5;

    private readonly Stream inner;
    private readonly bool isHost;
    private readonly SemaphoreSlim writeLock = new(1, 1);
    private readonly ConcurrentDictionary<uint, MuxStream> streams = new();
    private readonly Channel<MuxStream> accepted = Channel.CreateUnbounded<MuxStream>();
    private readonly CancellationTokenSource stop = new();
    private readonly Task reader;
    private readonly TaskCompletionSource closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource<ulong> helloEchoed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private uint nextId = 1;
    private ulong session;
    private int generation;
    private int resyncs;
    private int disposed;
    private int queuedResets;
    private readonly byte[] readBuffer = new byte[64 * 1024];
    private int readStart;
    private int readEnd;

    private MuxConnection(Stream inner, bool isHost, ulong session)
    {
        this.inner = inner;
        this.isHost = isHost;
        this.session = session;
        reader = Task.Run(ReadLoopAsync);
    }

    /// <summary>Set when the underlying stream ended or failed; all streams are aborted then.</summary>
    public Task Closed => closed.Task;

    public Exception? Error { get; private set; }

    /// <summary>The current session id (the host's own; on the daemon side the last HELLO's).</summary>
    public ulong Session => Volatile.Read(ref session);

    /// <summary>Host side: completes when the daemon echoed this connection's HELLO (its answers count from then on).</summary>
    public Task SessionConfirmed => helloEchoed.Task;

    /// <summary>Daemon side: how many HELLOs with a new session id came (each drops the streams of the one before).</summary>
    public int Generation => Volatile.Read(ref generation);

    /// <summary>Streams currently open on this side.</summary>
    public int OpenStreams => streams.Count;

    /// <summary>The host side: sends HELLO with a fresh session id.</summary>
    public static async Task<MuxConnection> ConnectAsync(Stream inner, CancellationToken ct)
    {
        ulong id;
        do
        {
            id = BinaryPrimitives.ReadUInt64BigEndian(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8));
        }
        while (id == 0);

        var connection = new MuxConnection(inner, isHost: true, id);
        var payload = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(payload, id);
        await connection.SendAsync(0, Hello, payload, ct).ConfigureAwait(false);
        return connection;
    }

    /// <summary>The daemon side: waits for streams the host opens.</summary>
    public static MuxConnection Serve(Stream inner) => new(inner, isHost: false, 0);

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
        var stream = new MuxStream(this, id, 0);
        streams[id] = stream;
        try
        {
            await SendAsync(id, Open, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
        }
        catch
        {
            streams.TryRemove(id, out _);
            throw;
        }

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

    /// <summary>Sends one frame. <paramref name="from"/>: the stream it belongs to; a frame of a stream of an earlier
    /// session is refused (the host may already reuse its id).</summary>
    internal async ValueTask SendAsync(uint id, byte kind, ReadOnlyMemory<byte> payload, CancellationToken ct, MuxStream? from = null)
    {
        // Header and payload in one write: on the guest's serial port every write is a system call.
        var frame = System.Buffers.ArrayPool<byte>.Shared.Rent(HeaderSize + payload.Length);
        WriteHeader(frame, id, kind, payload.Length);
        payload.Span.CopyTo(frame.AsSpan(HeaderSize));
        try
        {
            await writeLock.WaitAsync(ct).ConfigureAwait(false);
            try
            {
                if (closed.Task.IsCompleted)
                {
                    throw new IOException("the multiplexed channel is closed", Error);
                }

                if (from is not null && from.Generation != generation)
                {
                    throw new IOException("the stream belongs to an earlier host session");
                }

                try
                {
                    await inner.WriteAsync(frame.AsMemory(0, HeaderSize + payload.Length), ct).ConfigureAwait(false);
                    await inner.FlushAsync(ct).ConfigureAwait(false);
                }
                catch (Exception e) when (e is IOException or ObjectDisposedException or NotSupportedException)
                {
                    Fail(e);
                    throw new IOException("the multiplexed channel broke while sending", e);
                }
            }
            finally
            {
                writeLock.Release();
            }
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(frame);
        }
    }

    /// <summary>The 12-byte frame header (see the format at the top of this file).</summary>
    public static void WriteHeader(Span<byte> header, uint id, byte kind, int length)
    {
        header[..HeaderSize].Clear();
        BinaryPrimitives.WriteUInt32BigEndian(header, id);
        header[4] = kind;
        BinaryPrimitives.WriteUInt32BigEndian(header[8..], (uint)length);
    }

    internal void Forget(uint id, MuxStream stream) => streams.TryRemove(new KeyValuePair<uint, MuxStream>(id, stream));

    private async Task ReadLoopAsync()
    {
        var header = new byte[HeaderSize];
        try
        {
            if (isHost)
            {
                // Whatever comes before the echo of our HELLO belongs to an earlier session (maybe cut mid-frame).
                var echo = new byte[HeaderSize + 8];
                WriteHeader(echo, 0, Hello, 8);
                BinaryPrimitives.WriteUInt64BigEndian(echo.AsSpan(HeaderSize), session);
                if (!await SkipPastAsync(echo, MaxSkippedBeforeEcho).ConfigureAwait(false))
                {
                    throw new EndOfStreamException("the channel ended before the daemon answered HELLO");
                }

                helloEchoed.TrySetResult(session);
            }

            while (!stop.IsCancellationRequested)
            {
                if (!await ReadExactAsync(header).ConfigureAwait(false))
                {
                    break;
                }

                var id = BinaryPrimitives.ReadUInt32BigEndian(header);
                var kind = header[4];
                var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
                if (length > MaxPayload || kind > Window || (kind == Hello && length != 8))
                {
                    var error = new InvalidDataException($"malformed frame (kind {kind}, {length} bytes) on the multiplexed channel");
                    if (isHost)
                    {
                        throw error;
                    }

                    // The daemon lives longer than any host connection: drop everything and wait for the next HELLO.
                    await ResyncAsync(error).ConfigureAwait(false);
                    continue;
                }

                var payload = length == 0 ? [] : new byte[length];
                if (length > 0 && !await ReadExactAsync(payload).ConfigureAwait(false))
                {
                    throw new EndOfStreamException("the channel ended inside a frame");
                }

                if (kind == Hello)
                {
                    await HelloAsync(payload).ConfigureAwait(false);
                }
                else
                {
                    Dispatch(id, kind, payload);
                }
            }

            Fail(null);
        }
        catch (Exception e)
        {
            Fail(e);
        }
    }

    /// <summary>Host side: bytes skipped while looking for the echo of HELLO before giving up.</summary>
    private const long MaxSkippedBeforeEcho = 256L << 20;

    /// <summary>Daemon side, after a malformed frame: aborts every stream and skips to the next HELLO header.</summary>
    private async Task ResyncAsync(Exception cause)
    {
        Interlocked.Increment(ref resyncs);
        LastResyncCause = cause;
        foreach (var s in streams.Values)
        {
            s.Abort(new IOException("the multiplexed channel lost frame sync", cause));
        }

        streams.Clear();
        await writeLock.WaitAsync(stop.Token).ConfigureAwait(false);
        try
        {
            // No frame of a stream from before the loss of sync goes out any more.
            Interlocked.Increment(ref generation);
        }
        finally
        {
            writeLock.Release();
        }

        var helloHeader = new byte[HeaderSize];
        WriteHeader(helloHeader, 0, Hello, 8);
        if (!await SkipPastAsync(helloHeader, long.MaxValue).ConfigureAwait(false))
        {
            throw new EndOfStreamException("the channel ended while looking for a HELLO");
        }

        var payload = new byte[8];
        if (!await ReadExactAsync(payload).ConfigureAwait(false))
        {
            throw new EndOfStreamException("the channel ended inside a frame");
        }

        await HelloAsync(payload).ConfigureAwait(false);
    }

    /// <summary>Daemon side: how often a malformed frame made it drop its streams and wait for a HELLO.</summary>
    public int Resyncs => Volatile.Read(ref resyncs);

    public Exception? LastResyncCause { get; private set; }

    private async Task HelloAsync(byte[] payload)
    {
        if (payload.Length != 8)
        {
            throw new InvalidDataException($"HELLO with {payload.Length} bytes instead of 8");
        }

        var id = BinaryPrimitives.ReadUInt64BigEndian(payload);
        if (isHost)
        {
            return; // a repeated echo: the session was confirmed before the first frame was dispatched
        }

        // Daemon side: under the write lock, so that no frame of an old stream follows the echo.
        await writeLock.WaitAsync(stop.Token).ConfigureAwait(false);
        try
        {
            if (id != session)
            {
                Volatile.Write(ref session, id);
                Interlocked.Increment(ref generation);
                foreach (var old in streams.Values)
                {
                    old.Abort(new IOException("the host started a new session"));
                }

                streams.Clear();
            }

            var frame = new byte[HeaderSize + 8];
            WriteHeader(frame, 0, Hello, 8);
            payload.CopyTo(frame, HeaderSize);
            try
            {
                await inner.WriteAsync(frame, stop.Token).ConfigureAwait(false);
                await inner.FlushAsync(stop.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException or NotSupportedException)
            {
                throw new IOException("cannot answer the host's HELLO", e);
            }
        }
        finally
        {
            writeLock.Release();
        }
    }

    private void Dispatch(uint id, byte kind, byte[] payload)
    {
        switch (kind)
        {
            case Open when !isHost:
                if (streams.Count >= MaxStreams)
                {
                    Refuse(id, null);
                    break;
                }

                var stream = new MuxStream(this, id, Volatile.Read(ref generation));
                if (streams.TryAdd(id, stream))
                {
                    accepted.Writer.TryWrite(stream);
                }

                break;
            case Data when payload.Length > 0:
                if (streams.TryGetValue(id, out var s1) && !s1.Receive(payload))
                {
                    // More than the credit we granted: a broken peer. Reset the stream rather than buffer without bound.
                    streams.TryRemove(id, out _);
                    s1.Abort(new IOException($"the peer sent beyond the {InitialWindow}-byte window on stream {id}"));
                    Refuse(id, s1);
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
                    s4.Grant((int)Math.Min(BinaryPrimitives.ReadUInt32BigEndian(payload), MuxConnection.MaxCredit));
                }

                break;
        }
    }

    /// <summary>Sends RESET for a stream in the background; not when the peer already has many unread ones queued.</summary>
    private void Refuse(uint id, MuxStream? stream)
    {
        if (Interlocked.Increment(ref queuedResets) > MaxQueuedResets)
        {
            Interlocked.Decrement(ref queuedResets);
            return;
        }

        // Tagged with the session it belongs to: a refusal still queued when a new session starts is not sent.
        stream ??= new MuxStream(this, id, Volatile.Read(ref generation));
        _ = SendAsync(id, Reset, ReadOnlyMemory<byte>.Empty, CancellationToken.None, stream).AsTask()
            .ContinueWith(t =>
            {
                Interlocked.Decrement(ref queuedResets);
                _ = t.Exception;
            }, TaskScheduler.Default);
    }

    private async Task<bool> ReadExactAsync(byte[] buffer)
    {
        var done = 0;
        while (done < buffer.Length)
        {
            if (readStart == readEnd)
            {
                if (buffer.Length - done >= readBuffer.Length)
                {
                    // A large payload: straight into its array.
                    var direct = await inner.ReadAsync(buffer.AsMemory(done), stop.Token).ConfigureAwait(false);
                    if (direct == 0)
                    {
                        return done == 0 ? false : throw new EndOfStreamException("the channel ended inside a frame");
                    }

                    done += direct;
                    continue;
                }

                if (!await FillAsync().ConfigureAwait(false))
                {
                    return done == 0 ? false : throw new EndOfStreamException("the channel ended inside a frame");
                }
            }

            var n = Math.Min(readEnd - readStart, buffer.Length - done);
            readBuffer.AsSpan(readStart, n).CopyTo(buffer.AsSpan(done));
            readStart += n;
            done += n;
        }

        return true;
    }

    /// <summary>Reads more into the buffer (keeping what is unread); false at the end of the stream.</summary>
    private async Task<bool> FillAsync()
    {
        if (readStart > 0)
        {
            Buffer.BlockCopy(readBuffer, readStart, readBuffer, 0, readEnd - readStart);
            readEnd -= readStart;
            readStart = 0;
        }

        var n = await inner.ReadAsync(readBuffer.AsMemory(readEnd), stop.Token).ConfigureAwait(false);
        readEnd += n;
        return n > 0;
    }

    /// <summary>Skips the stream up to and including <paramref name="pattern"/>; false when it ends first.</summary>
    private async Task<bool> SkipPastAsync(byte[] pattern, long limit)
    {
        long skipped = 0;
        while (true)
        {
            var at = readBuffer.AsSpan(readStart, readEnd - readStart).IndexOf(pattern);
            if (at >= 0)
            {
                readStart += at + pattern.Length;
                return true;
            }

            var keep = Math.Min(pattern.Length - 1, readEnd - readStart);
            skipped += readEnd - readStart - keep;
            readStart = readEnd - keep;
            if (skipped > limit)
            {
                throw new InvalidDataException($"no HELLO answer within {limit} bytes on the multiplexed channel");
            }

            if (!await FillAsync().ConfigureAwait(false))
            {
                return false;
            }
        }
    }

    private void Fail(Exception? e)
    {
        lock (streams)
        {
            if (closed.Task.IsCompleted)
            {
                return;
            }

            Error = e;
            closed.TrySetResult();
        }

        accepted.Writer.TryComplete();
        helloEchoed.TrySetException(new IOException("the multiplexed channel closed before the daemon answered HELLO", e));
        _ = helloEchoed.Task.Exception;
        foreach (var s in streams.Values)
        {
            s.Abort(new IOException("the multiplexed channel closed", e));
        }

        streams.Clear();
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
    private int unread;
    private bool sentClose;
    private bool disposed;

    internal MuxStream(MuxConnection connection, uint id, int generation)
    {
        this.connection = connection;
        this.id = id;
        Generation = generation;
    }

    public uint Id => id;

    /// <summary>The daemon-side session generation this stream belongs to.</summary>
    internal int Generation { get; }

    /// <summary>Bytes received and not read yet (at most the window: the peer may not send more).</summary>
    public int Buffered
    {
        get
        {
            lock (gate)
            {
                return unread;
            }
        }
    }

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    /// <summary>Queues a DATA payload; false when it exceeds the credit granted to the peer.</summary>
    internal bool Receive(byte[] payload)
    {
        lock (gate)
        {
            if (unread + payload.Length > MuxConnection.InitialWindow)
            {
                return false;
            }

            unread += payload.Length;
            incoming.Enqueue(payload);
        }

        dataReady.Release();
        return true;
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
        int old;
        do
        {
            old = Volatile.Read(ref sendCredit);
        }
        while (Interlocked.CompareExchange(ref sendCredit, (int)Math.Min((long)old + credit, MuxConnection.MaxCredit), old) != old);

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

                    unread -= n;
                    consumedSinceGrant += n;
                    if (consumedSinceGrant >= MuxConnection.InitialWindow / 4 && !ended && error is null)
                    {
                        var grant = consumedSinceGrant;
                        consumedSinceGrant = 0;
                        var payload = new byte[4];
                        BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)grant);
                        _ = connection.SendAsync(id, MuxConnection.Window, payload, CancellationToken.None, this).AsTask()
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
            await connection.SendAsync(id, MuxConnection.Data, buffer[..n], cancellationToken, this).ConfigureAwait(false);
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
            await connection.SendAsync(id, MuxConnection.Close, ReadOnlyMemory<byte>.Empty, ct, this).ConfigureAwait(false);
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
                await connection.SendAsync(id, MuxConnection.Reset, ReadOnlyMemory<byte>.Empty, CancellationToken.None, this).ConfigureAwait(false);
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

        connection.Forget(id, this);
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
