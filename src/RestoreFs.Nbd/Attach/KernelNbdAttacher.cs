using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;

namespace RestoreFs.Nbd;

/// <summary>How kernel NBD devices are set up.</summary>
public sealed record KernelNbdOptions
{
    /// <summary>Connections per device over netlink (1 if the export does not advertise NBD_FLAG_CAN_MULTI_CONN; the ioctl path uses 1).</summary>
    public int Connections { get; init; } = 4;

    /// <summary>
    /// NBD_ATTR_TIMEOUT. With several connections the kernel gives up on a connection whose request takes longer
    /// (even when none is set, after the block layer's default of 30 s), so it is set explicitly and generously.
    /// </summary>
    public TimeSpan? RequestTimeout { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>NBD_ATTR_DEAD_CONN_TIMEOUT: how long requests wait for a dead connection to be replaced; unset = not at all.</summary>
    public TimeSpan? DeadConnectionTimeout { get; init; }

    /// <summary>NBD_CFLAG_DESTROY_ON_DISCONNECT: the kernel removes the device on detach (it makes new ones on demand).</summary>
    public bool DestroyOnDisconnect { get; init; } = true;

    /// <summary>How long to wait for <c>/dev/nbdN</c> after the kernel connected it.</summary>
    public TimeSpan DeviceTimeout { get; init; } = TimeSpan.FromSeconds(10);
}

/// <summary>
/// Attaches an export of our NBD server as a kernel <c>/dev/nbdN</c>. First through generic netlink (family "nbd":
/// NBD_CMD_CONNECT with several negotiated sockets, the kernel picks the device; NBD_CMD_DISCONNECT detaches). When the
/// kernel has no "nbd" family (ENOENT: module not loaded) or refuses the CONNECT with EINVAL/EOPNOTSUPP, with the old
/// ioctls instead: we do the handshake (NBD_OPT_GO), hand the socket over (NBD_SET_SOCK) and let a dedicated thread sit
/// in NBD_DO_IT until detach (NBD_DISCONNECT). The log says which path was taken and why.
/// </summary>
public sealed partial class KernelNbdAttacher(ILogger<KernelNbdAttacher> log, KernelNbdOptions? options = null) : IBlockDeviceAttacher
{
    private const nuint NbdSetSock = 0xab00;
    private const nuint NbdSetBlkSize = 0xab01;
    private const nuint NbdSetSize = 0xab02;
    private const nuint NbdDoIt = 0xab03;
    private const nuint NbdClearSock = 0xab04;
    private const nuint NbdDisconnect = 0xab08;
    private const nuint NbdSetFlags = 0xab0a;

    private readonly KernelNbdOptions options = options ?? new KernelNbdOptions();

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int Ioctl(int fd, nuint request, nuint argument);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int Close(int fd);

    /// <summary>
    /// Whether kernel NBD can be used at all: the "nbd" netlink family is registered, or <c>/dev/nbd0</c> exists.
    /// Returns a description of what was found, for the log.
    /// </summary>
    public static (bool Available, string Description) Probe()
    {
        string netlink;
        try
        {
            using var socket = new GenericNetlinkSocket();
            if (socket.ResolveFamily(NbdNetlink.FamilyName) is { } id)
            {
                return (true, $"generic netlink family '{NbdNetlink.FamilyName}' has id 0x{id:x}");
            }

            netlink = $"no generic netlink family '{NbdNetlink.FamilyName}' (ENOENT)";
        }
        catch (NbdException e)
        {
            netlink = e.Message;
        }

        return File.Exists("/dev/nbd0") || Directory.Exists("/sys/block/nbd0")
            ? (true, $"/dev/nbd0 exists; {netlink}: the NBD ioctls will be used")
            : (false, $"no /dev/nbd0 and {netlink}");
    }

    public async Task<AttachedDevice> AttachAsync(AttachRequest request, CancellationToken ct)
    {
        if (request.NbdSocketPath is null || request.ExportName is null)
        {
            throw new NbdException("kernel NBD attach needs the export's socket and name");
        }

        string why;
        try
        {
            return await new NetlinkNbdAttacher(log, options).AttachAsync(request.NbdSocketPath, request.ExportName, ct).ConfigureAwait(false);
        }
        catch (NetlinkNbdUnsupportedException e)
        {
            why = e.Message;
            log.LogInformation("Kernel NBD over netlink is not usable for export {Export} ({Reason}); using the NBD ioctls", request.ExportName, why);
        }

        return await AttachWithIoctlsAsync(request.NbdSocketPath, request.ExportName, why, ct).ConfigureAwait(false);
    }

    private async Task<AttachedDevice> AttachWithIoctlsAsync(string socketPath, string export, string why, CancellationToken ct)
    {
        var device = Enumerable.Range(0, 128).Select(i => $"nbd{i}")
            .FirstOrDefault(n => File.Exists($"/dev/{n}") && !File.Exists($"/sys/block/{n}/pid"))
            ?? throw new NbdException($"no free /dev/nbd* device for the ioctl path (netlink was not usable: {why})");
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        var fd = -1;
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct).ConfigureAwait(false);
            var info = await NbdClientHandshake.NegotiateAsync(socket, export, ct).ConfigureAwait(false);
            fd = Open($"/dev/{device}", 2 | 0x80000);
            if (fd < 0)
            {
                throw new NbdException($"cannot open /dev/{device}: errno {Marshal.GetLastPInvokeError()}");
            }

            Check(Ioctl(fd, NbdSetBlkSize, 4096), "NBD_SET_BLKSIZE");
            Check(Ioctl(fd, NbdSetSize, (nuint)info.Size), "NBD_SET_SIZE");
            Check(Ioctl(fd, NbdSetFlags, info.TransmissionFlags), "NBD_SET_FLAGS");
            Check(Ioctl(fd, NbdSetSock, (nuint)socket.Handle), "NBD_SET_SOCK");
            var nbdFd = fd;
            var serving = new Thread(() => Ioctl(nbdFd, NbdDoIt, 0)) { IsBackground = true, Name = $"nbd-{device}" };
            serving.Start();
            log.LogInformation("Attached export {Export} as /dev/{Device} through kernel NBD with ioctls (netlink was not usable: {Reason})",
                export, device, why);
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
}
