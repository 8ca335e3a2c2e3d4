using System.Buffers.Binary;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Extensions.Logging;
using static RestoreFs.Nbd.Protocol.NbdWire;

namespace RestoreFs.Nbd;

/// <summary>
/// Attaches an export of our NBD server to a free <c>/dev/nbdN</c> with the kernel's NBD ioctls: we do the
/// handshake (NBD_OPT_GO) as the client, hand the socket to the kernel (NBD_SET_SOCK) and let a dedicated thread sit
/// in NBD_DO_IT until detach (NBD_DISCONNECT). Needs the nbd module, which our own machines do not have.
/// </summary>
public sealed partial class KernelNbdAttacher(ILogger<KernelNbdAttacher> log) : IBlockDeviceAttacher
{
    private const nuint NbdSetSock = 0xab00;
    private const nuint NbdSetBlkSize = 0xab01;
    private const nuint NbdSetSize = 0xab02;
    private const nuint NbdDoIt = 0xab03;
    private const nuint NbdClearSock = 0xab04;
    private const nuint NbdDisconnect = 0xab08;
    private const nuint NbdSetFlags = 0xab0a;

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int Ioctl(int fd, nuint request, nuint argument);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int Close(int fd);

    public async Task<AttachedDevice> AttachAsync(AttachRequest request, CancellationToken ct)
    {
        if (request.NbdSocketPath is null || request.ExportName is null)
        {
            throw new NbdException("kernel NBD attach needs the export's socket and name");
        }

        var device = Enumerable.Range(0, 128).Select(i => $"nbd{i}")
            .FirstOrDefault(n => File.Exists($"/dev/{n}") && !File.Exists($"/sys/block/{n}/pid"))
            ?? throw new NbdException("no free /dev/nbd* device");
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        var fd = -1;
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(request.NbdSocketPath), ct).ConfigureAwait(false);
            var (size, flags) = await NegotiateAsync(socket, request.ExportName, ct).ConfigureAwait(false);
            fd = Open($"/dev/{device}", 2 | 0x80000);
            if (fd < 0)
            {
                throw new NbdException($"cannot open /dev/{device}: errno {Marshal.GetLastPInvokeError()}");
            }

            Check(Ioctl(fd, NbdSetBlkSize, 4096), "NBD_SET_BLKSIZE");
            Check(Ioctl(fd, NbdSetSize, (nuint)size), "NBD_SET_SIZE");
            Check(Ioctl(fd, NbdSetFlags, flags), "NBD_SET_FLAGS");
            Check(Ioctl(fd, NbdSetSock, (nuint)socket.Handle), "NBD_SET_SOCK");
            var nbdFd = fd;
            var serving = new Thread(() => Ioctl(nbdFd, NbdDoIt, 0)) { IsBackground = true, Name = $"nbd-{device}" };
            serving.Start();
            log.LogInformation("Attached export {Export} as /dev/{Device} through kernel NBD", request.ExportName, device);
            var socketToClose = socket;
            return new AttachedDevice($"/dev/{device}", "nbd", [], () =>
            {
                Ioctl(nbdFd, NbdDisconnect, 0);
                Ioctl(nbdFd, NbdClearSock, 0);
                serving.Join(TimeSpan.FromSeconds(10));
                Close(nbdFd);
                socketToClose.Dispose();
                return ValueTask.CompletedTask;
            });
        }
        catch
        {
            if (fd >= 0)
            {
                Ioctl(fd, NbdClearSock, 0);
                Close(fd);
            }

            socket.Dispose();
            throw;
        }
    }

    private static void Check(int result, string what)
    {
        if (result != 0)
        {
            throw new NbdException($"{what} failed: errno {Marshal.GetLastPInvokeError()}");
        }
    }

    /// <summary>The client side of the fixed newstyle handshake with NBD_OPT_GO; returns size and transmission flags.</summary>
    internal static async Task<(long Size, ushort Flags)> NegotiateAsync(Socket socket, string export, CancellationToken ct)
    {
        await using var stream = new NetworkStream(socket, ownsSocket: false);
        var hello = new byte[18];
        await stream.ReadExactlyAsync(hello, ct).ConfigureAwait(false);
        if (BinaryPrimitives.ReadUInt64BigEndian(hello) != NbdMagic || BinaryPrimitives.ReadUInt64BigEndian(hello.AsSpan(8)) != OptionMagic)
        {
            throw new NbdException("the server is not a newstyle NBD server");
        }

        var flags = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(flags, ClientFlagFixedNewstyle | ClientFlagNoZeroes);
        await stream.WriteAsync(flags, ct).ConfigureAwait(false);
        var name = Encoding.UTF8.GetBytes(export);
        var option = new byte[16 + 4 + name.Length + 2];
        BinaryPrimitives.WriteUInt64BigEndian(option, OptionMagic);
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(8), OptGo);
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(12), (uint)(4 + name.Length + 2));
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(16), (uint)name.Length);
        name.CopyTo(option, 20);
        await stream.WriteAsync(option, ct).ConfigureAwait(false);
        long size = -1;
        ushort transmission = 0;
        while (true)
        {
            var header = new byte[20];
            await stream.ReadExactlyAsync(header, ct).ConfigureAwait(false);
            var type = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
            var data = new byte[BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16))];
            await stream.ReadExactlyAsync(data, ct).ConfigureAwait(false);
            if ((type & 0x80000000) != 0)
            {
                throw new NbdException($"the server refused export '{export}': {Encoding.UTF8.GetString(data)}");
            }

            if (type == RepInfo && data.Length >= 12 && BinaryPrimitives.ReadUInt16BigEndian(data) == InfoExport)
            {
                size = (long)BinaryPrimitives.ReadUInt64BigEndian(data.AsSpan(2));
                transmission = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(10));
            }
            else if (type == RepAck)
            {
                return size < 0 ? throw new NbdException("the server sent no export size") : (size, transmission);
            }
        }
    }
}
