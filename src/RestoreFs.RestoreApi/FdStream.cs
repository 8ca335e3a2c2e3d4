using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace RestoreFs.RestoreApi;

/// <summary>
/// AF_VSOCK sockets through libc. .NET's <see cref="System.Net.Sockets.Socket"/> refuses address families it does not
/// know (its constructor fails with EAFNOSUPPORT for 40 before asking the kernel, and its endpoint code throws
/// PlatformNotSupportedException), so vsock connections are plain file descriptors read and written with
/// <see cref="FdStream"/>.
/// </summary>
public static partial class VsockSocket
{
    public const int AF_VSOCK = 40;
    private const int SOCK_STREAM = 1, SOCK_CLOEXEC = 0x80000, SHUT_RDWR = 2, EINTR = 4;

    /// <summary>The 16-byte <c>struct sockaddr_vm</c>: family (u16), reserved (u16), port (u32), cid (u32), flags and
    /// padding (4 bytes of zero), in host byte order.</summary>
    public static void Encode(uint cid, uint port, Span<byte> sockaddr)
    {
        sockaddr[..16].Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(sockaddr, AF_VSOCK);
        BinaryPrimitives.WriteUInt32LittleEndian(sockaddr[4..], port);
        BinaryPrimitives.WriteUInt32LittleEndian(sockaddr[8..], cid);
    }

    /// <summary>Connects (blocking, on a pool thread) and returns the connection as a stream.</summary>
    public static async Task<Stream> ConnectAsync(uint cid, uint port, CancellationToken ct)
    {
        if (cid == VsockEndPoint.HostCid)
        {
            throw new ArgumentException("CID 2 is the host itself, never a restore VM", nameof(cid));
        }

        var fd = Create($"vsock:{cid}:{port}");
        var connecting = Task.Run(() =>
        {
            Span<byte> address = stackalloc byte[16];
            Encode(cid, port, address);
            while (Connect(fd, address) != 0)
            {
                var errno = Marshal.GetLastPInvokeError();
                if (errno != EINTR)
                {
                    return errno;
                }
            }

            return 0;
        }, CancellationToken.None);
        using (ct.Register(() => Shutdown(fd, SHUT_RDWR)))
        {
            var error = await connecting.ConfigureAwait(false);
            if (error != 0 || ct.IsCancellationRequested)
            {
                Close(fd);
                ct.ThrowIfCancellationRequested();
                throw new IOException($"cannot connect to the restore daemon at vsock:{cid}:{port}: {Describe(error)}");
            }
        }

        return new FdStream(fd);
    }

    /// <summary>A listening vsock socket (any CID when <paramref name="cid"/> is <see cref="VsockEndPoint.AnyCid"/>).</summary>
    public static VsockListener Listen(uint cid, uint port, int backlog = 32)
    {
        var fd = Create($"vsock:{cid}:{port}");
        Span<byte> address = stackalloc byte[16];
        Encode(cid, port, address);
        if (Bind(fd, address) != 0 || ListenRaw(fd, backlog) != 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            Close(fd);
            throw new IOException($"cannot listen on vsock:{(cid == VsockEndPoint.AnyCid ? "any" : cid)}:{port}: {Describe(errno)}");
        }

        return new VsockListener(fd);
    }

    private static int Create(string what)
    {
        var fd = SocketRaw(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
        {
            throw new IOException($"cannot create a socket for {what}: {Describe(Marshal.GetLastPInvokeError())}");
        }

        return fd;
    }

    internal static string Describe(int errno) => Marshal.PtrToStringUTF8(StrError(errno)) is { Length: > 0 } s ? $"{s} (errno {errno})" : $"errno {errno}";

    [LibraryImport("libc", EntryPoint = "socket", SetLastError = true)]
    private static partial int SocketRaw(int domain, int type, int protocol);

    [LibraryImport("libc", EntryPoint = "connect", SetLastError = true)]
    private static partial int Connect(int fd, ReadOnlySpan<byte> address, int length = 16);

    [LibraryImport("libc", EntryPoint = "bind", SetLastError = true)]
    private static partial int Bind(int fd, ReadOnlySpan<byte> address, int length = 16);

    [LibraryImport("libc", EntryPoint = "listen", SetLastError = true)]
    private static partial int ListenRaw(int fd, int backlog);

    [LibraryImport("libc", EntryPoint = "accept4", SetLastError = true)]
    internal static partial int Accept4(int fd, nint address, nint length, int flags);

    [LibraryImport("libc", EntryPoint = "shutdown", SetLastError = true)]
    internal static partial int Shutdown(int fd, int how);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    internal static partial int Close(int fd);

    [LibraryImport("libc", EntryPoint = "strerror")]
    private static partial nint StrError(int errno);

    /// <summary>A listening socket; <see cref="AcceptAsync"/> blocks a pool thread per call.</summary>
    public sealed class VsockListener : IDisposable
    {
        private int fd;

        internal VsockListener(int fd) => this.fd = fd;

        /// <summary>The next connection; null once the listener is disposed.</summary>
        public Task<Stream?> AcceptAsync() => Task.Run<Stream?>(() =>
        {
            while (true)
            {
                var listening = Volatile.Read(ref fd);
                if (listening < 0)
                {
                    return null;
                }

                var client = Accept4(listening, 0, 0, SOCK_CLOEXEC);
                if (client >= 0)
                {
                    return new FdStream(client);
                }

                var errno = Marshal.GetLastPInvokeError();
                if (Volatile.Read(ref fd) < 0)
                {
                    return null;
                }

                if (errno is not (EINTR or 11 /* EAGAIN */ or 103 /* ECONNABORTED */))
                {
                    throw new IOException($"accept on vsock failed: {Describe(errno)}");
                }
            }
        });

        public void Dispose()
        {
            var old = Interlocked.Exchange(ref fd, -1);
            if (old >= 0)
            {
                Shutdown(old, SHUT_RDWR); // wakes a blocked accept
                Close(old);
            }
        }
    }
}

/// <summary>
/// A connected stream socket (or any byte-stream descriptor) as a <see cref="Stream"/>: blocking read(2)/write(2) on
/// pool threads. Disposing shuts the socket down first, which also ends a read blocked in another thread.
/// </summary>
public sealed partial class FdStream : Stream
{
    private const int EINTR = 4, SHUT_WR = 1, SHUT_RDWR = 2;
    private readonly int fd;
    private int users;
    private int disposed;
    private int closed;

    public FdStream(int fd)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(fd);
        this.fd = fd;
    }

    /// <summary>Marks a system call on the descriptor in progress: it is closed only when none is (a closed number
    /// could be reused by another connection meanwhile).</summary>
    private int Enter()
    {
        Interlocked.Increment(ref users);
        if (Volatile.Read(ref disposed) != 0)
        {
            Leave();
            throw new ObjectDisposedException(nameof(FdStream));
        }

        return fd;
    }

    private void Leave()
    {
        if (Interlocked.Decrement(ref users) == 0 && Volatile.Read(ref disposed) != 0 && Interlocked.Exchange(ref closed, 1) == 0)
        {
            Close(fd);
        }
    }

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override unsafe int Read(Span<byte> buffer)
    {
        var fd = Enter();
        try
        {
            return ReadFrom(fd, buffer);
        }
        finally
        {
            Leave();
        }
    }

    private static unsafe int ReadFrom(int fd, Span<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            while (true)
            {
                var n = ReadRaw(fd, p, (nuint)buffer.Length);
                if (n >= 0)
                {
                    return (int)n;
                }

                var errno = Marshal.GetLastPInvokeError();
                if (errno != EINTR)
                {
                    throw new IOException($"read failed: {VsockSocket.Describe(errno)}");
                }
            }
        }
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        var fd = Enter();
        try
        {
            WriteTo(fd, buffer);
        }
        finally
        {
            Leave();
        }
    }

    private static unsafe void WriteTo(int fd, ReadOnlySpan<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            var done = 0;
            while (done < buffer.Length)
            {
                // send(MSG_NOSIGNAL): a peer that went away is an error here, never SIGPIPE.
                var n = SendRaw(fd, p + done, (nuint)(buffer.Length - done), 0x4000);
                if (n < 0 && Marshal.GetLastPInvokeError() == 88 /* ENOTSOCK: a pipe or a device */)
                {
                    n = WriteRaw(fd, p + done, (nuint)(buffer.Length - done));
                }

                if (n < 0)
                {
                    var errno = Marshal.GetLastPInvokeError();
                    if (errno == EINTR)
                    {
                        continue;
                    }

                    throw new IOException($"write failed: {VsockSocket.Describe(errno)}");
                }

                done += (int)n;
            }
        }
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return new ValueTask<int>(Task.Run(() => Read(buffer.Span), CancellationToken.None));
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return new ValueTask(Task.Run(() => Write(buffer.Span), CancellationToken.None));
    }

    /// <summary>No more writes: the peer reads end of stream (shutdown(SHUT_WR)).</summary>
    public void ShutdownWrite()
    {
        var fd = Enter();
        try
        {
            Shutdown(fd, SHUT_WR);
        }
        finally
        {
            Leave();
        }
    }

    public override void Flush()
    {
    }

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (Interlocked.Exchange(ref disposed, 1) == 0)
        {
            // Wakes reads and writes blocked in other threads; the last of them closes the descriptor.
            Interlocked.Increment(ref users);
            Shutdown(fd, SHUT_RDWR);
            Leave();
        }

        base.Dispose(disposing);
    }

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    private static unsafe partial nint ReadRaw(int fd, byte* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    private static unsafe partial nint WriteRaw(int fd, byte* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "send", SetLastError = true)]
    private static unsafe partial nint SendRaw(int fd, byte* buffer, nuint count, int flags);

    [LibraryImport("libc", EntryPoint = "shutdown", SetLastError = true)]
    private static partial int Shutdown(int fd, int how);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int Close(int fd);
}
