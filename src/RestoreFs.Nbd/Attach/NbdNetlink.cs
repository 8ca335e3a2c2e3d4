using System.Buffers.Binary;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Extensions.Logging;

namespace RestoreFs.Nbd;

/// <summary>
/// Generic netlink messages (nlmsghdr + genlmsghdr + attributes), as the kernel's NBD configuration interface
/// (family "nbd", include/uapi/linux/nbd-netlink.h) wants them. Built and parsed by hand; golden-byte tested.
/// </summary>
public static class GenericNetlink
{
    public const ushort ControllerFamily = 0x10;
    public const byte CtrlCmdGetFamily = 3;
    public const ushort CtrlAttrFamilyId = 1;
    public const ushort CtrlAttrFamilyName = 2;
    public const ushort NlmsgError = 2;
    public const ushort FlagRequest = 1;
    public const ushort FlagAck = 4;
    public const ushort AttrNested = 1 << 15;

    /// <summary>A request: header, genl header (command, version 1), then the attributes.</summary>
    public static byte[] Message(ushort family, byte command, uint sequence, byte[] attributes, byte version = 1)
    {
        var message = new byte[16 + 4 + attributes.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(message, (uint)message.Length);
        BinaryPrimitives.WriteUInt16LittleEndian(message.AsSpan(4), family);
        BinaryPrimitives.WriteUInt16LittleEndian(message.AsSpan(6), FlagRequest | FlagAck);
        BinaryPrimitives.WriteUInt32LittleEndian(message.AsSpan(8), sequence);
        message[16] = command;
        message[17] = version;
        attributes.CopyTo(message, 20);
        return message;
    }

    /// <summary>One attribute, padded to 4 bytes.</summary>
    public static byte[] Attribute(ushort type, ReadOnlySpan<byte> value)
    {
        var length = 4 + value.Length;
        var attribute = new byte[(length + 3) & ~3];
        BinaryPrimitives.WriteUInt16LittleEndian(attribute, (ushort)length);
        BinaryPrimitives.WriteUInt16LittleEndian(attribute.AsSpan(2), type);
        value.CopyTo(attribute.AsSpan(4));
        return attribute;
    }

    public static byte[] U32(ushort type, uint value)
    {
        Span<byte> v = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(v, value);
        return Attribute(type, v);
    }

    public static byte[] U64(ushort type, ulong value)
    {
        Span<byte> v = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(v, value);
        return Attribute(type, v);
    }

    public static byte[] String(ushort type, string value) => Attribute(type, [.. Encoding.ASCII.GetBytes(value), 0]);

    public static byte[] Nested(ushort type, params byte[][] children) => Attribute((ushort)(type | AttrNested), children.SelectMany(c => c).ToArray());

    /// <summary>The kernel's answer: an error code (0 = acknowledged, negative errno) or a message's attributes.</summary>
    public static (int Error, Dictionary<ushort, byte[]> Attributes) Parse(ReadOnlySpan<byte> reply)
    {
        if (reply.Length < 16)
        {
            throw new NbdException("netlink: short reply");
        }

        var type = BinaryPrimitives.ReadUInt16LittleEndian(reply[4..]);
        if (type == NlmsgError)
        {
            return (BinaryPrimitives.ReadInt32LittleEndian(reply[16..]), []);
        }

        var attributes = new Dictionary<ushort, byte[]>();
        var length = (int)Math.Min(reply.Length, BinaryPrimitives.ReadUInt32LittleEndian(reply));
        for (var offset = 20; offset + 4 <= length;)
        {
            var attrLength = BinaryPrimitives.ReadUInt16LittleEndian(reply[offset..]);
            var attrType = (ushort)(BinaryPrimitives.ReadUInt16LittleEndian(reply[(offset + 2)..]) & ~AttrNested);
            if (attrLength < 4 || offset + attrLength > length)
            {
                break;
            }

            attributes[attrType] = reply.Slice(offset + 4, attrLength - 4).ToArray();
            offset += (attrLength + 3) & ~3;
        }

        return (0, attributes);
    }
}

/// <summary>A NETLINK_GENERIC socket talking to the kernel (libc: .NET's Socket has no AF_NETLINK).</summary>
public sealed partial class GenericNetlinkSocket : IDisposable
{
    private readonly int fd;
    private uint sequence = (uint)Environment.TickCount;

    public GenericNetlinkSocket()
    {
        fd = SocketRaw(16, 3 | 0x80000, 16); // AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC
        if (fd < 0)
        {
            throw new NbdException($"netlink socket: errno {Marshal.GetLastPInvokeError()}");
        }
    }

    [LibraryImport("libc", EntryPoint = "socket", SetLastError = true)]
    private static partial int SocketRaw(int domain, int type, int protocol);

    [LibraryImport("libc", EntryPoint = "send", SetLastError = true)]
    private static partial nint SendRaw(int fd, byte[] buffer, nuint length, int flags);

    [LibraryImport("libc", EntryPoint = "recv", SetLastError = true)]
    private static partial nint RecvRaw(int fd, byte[] buffer, nuint length, int flags);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int CloseRaw(int fd);

    /// <summary>Sends a request and returns the kernel's reply (the data reply if there is one, else the ack).</summary>
    public (int Error, Dictionary<ushort, byte[]> Attributes) Request(ushort family, byte command, byte[] attributes, byte version = 1)
    {
        var seq = ++sequence;
        var message = GenericNetlink.Message(family, command, seq, attributes, version);
        if (SendRaw(fd, message, (nuint)message.Length, 0) != message.Length)
        {
            throw new NbdException($"netlink send: errno {Marshal.GetLastPInvokeError()}");
        }

        var buffer = new byte[16384];
        (int, Dictionary<ushort, byte[]>)? data = null;
        while (true)
        {
            var n = RecvRaw(fd, buffer, (nuint)buffer.Length, 0);
            if (n < 16)
            {
                throw new NbdException($"netlink receive: errno {Marshal.GetLastPInvokeError()}");
            }

            var reply = GenericNetlink.Parse(buffer.AsSpan(0, (int)n));
            if (BinaryPrimitives.ReadUInt16LittleEndian(buffer.AsSpan(4)) != GenericNetlink.NlmsgError)
            {
                data = reply; // the ack follows
                continue;
            }

            return reply.Error != 0 ? reply : data ?? reply;
        }
    }

    /// <summary>The id of a generic netlink family, or null when the kernel has none by that name (module not loaded).</summary>
    public ushort? ResolveFamily(string name)
    {
        var (error, attributes) = Request(GenericNetlink.ControllerFamily, GenericNetlink.CtrlCmdGetFamily,
            GenericNetlink.String(GenericNetlink.CtrlAttrFamilyName, name));
        if (error == -2)
        {
            return null;
        }

        if (error != 0)
        {
            throw new NbdException($"netlink: resolving family {name} failed: errno {-error}");
        }

        return attributes.TryGetValue(GenericNetlink.CtrlAttrFamilyId, out var id) ? BinaryPrimitives.ReadUInt16LittleEndian(id) : null;
    }

    public void Dispose() => CloseRaw(fd);
}

/// <summary>
/// Kernel NBD through netlink: NBD_CMD_CONNECT hands the kernel our already negotiated sockets (several connections
/// to the same export) and it picks a free /dev/nbdN; no thread has to sit in an ioctl. NBD_CMD_DISCONNECT detaches.
/// </summary>
public sealed class NetlinkNbdAttacher(ILogger<NetlinkNbdAttacher> log, int connections = 2) : IBlockDeviceAttacher
{
    public const byte CmdConnect = 1;
    public const byte CmdDisconnect = 2;
    public const ushort AttrIndex = 1, AttrSizeBytes = 2, AttrBlockSizeBytes = 3, AttrTimeout = 4, AttrServerFlags = 5, AttrClientFlags = 6,
        AttrSockets = 7, SockItem = 1, SockFd = 1;
    public const ulong ClientFlagDestroyOnDisconnect = 1;

    /// <summary>True when the kernel knows the "nbd" family (the module is loaded).</summary>
    public static bool Available()
    {
        try
        {
            using var netlink = new GenericNetlinkSocket();
            return netlink.ResolveFamily("nbd") is not null;
        }
        catch (NbdException)
        {
            return false;
        }
    }

    /// <summary>The CONNECT request's attributes (golden-byte tested).</summary>
    public static byte[] ConnectAttributes(long size, ushort serverFlags, IReadOnlyList<int> fds) =>
    [
        .. GenericNetlink.U64(AttrSizeBytes, (ulong)size),
        .. GenericNetlink.U64(AttrBlockSizeBytes, 4096),
        .. GenericNetlink.U64(AttrServerFlags, serverFlags),
        .. GenericNetlink.U64(AttrClientFlags, ClientFlagDestroyOnDisconnect),
        .. GenericNetlink.U64(AttrTimeout, 30),
        .. GenericNetlink.Nested(AttrSockets, fds.Select(fd => GenericNetlink.Nested(SockItem, GenericNetlink.U32(SockFd, (uint)fd))).ToArray()),
    ];

    public async Task<AttachedDevice> AttachAsync(AttachRequest request, CancellationToken ct)
    {
        if (request.NbdSocketPath is null || request.ExportName is null)
        {
            throw new NbdException("kernel NBD attach needs the export's socket and name");
        }

        using var netlink = new GenericNetlinkSocket();
        var family = netlink.ResolveFamily("nbd") ?? throw new NbdException("the kernel has no nbd netlink family (nbd module not loaded)");
        var sockets = new List<Socket>();
        try
        {
            long size = 0;
            ushort flags = 0;
            for (var i = 0; i < connections; i++)
            {
                var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                sockets.Add(socket);
                await socket.ConnectAsync(new UnixDomainSocketEndPoint(request.NbdSocketPath), ct).ConfigureAwait(false);
                (size, flags) = await KernelNbdAttacher.NegotiateAsync(socket, request.ExportName, ct).ConfigureAwait(false);
            }

            var (error, attributes) = netlink.Request(family, CmdConnect, ConnectAttributes(size, flags, sockets.Select(s => (int)s.Handle).ToList()));
            if (error != 0)
            {
                throw new NbdException($"NBD_CMD_CONNECT failed: errno {-error} ({Marshal.GetPInvokeErrorMessage(-error)})");
            }

            if (!attributes.TryGetValue(AttrIndex, out var indexBytes))
            {
                throw new NbdException("NBD_CMD_CONNECT answered without a device index");
            }

            var index = BinaryPrimitives.ReadUInt32LittleEndian(indexBytes);
            var device = $"/dev/nbd{index}";
            for (var i = 0; i < 100 && !File.Exists(device); i++)
            {
                await Task.Delay(20, ct).ConfigureAwait(false);
            }

            log.LogInformation("Attached export {Export} as {Device} through kernel NBD (netlink, {Connections} connections)",
                request.ExportName, device, connections);
            var owned = sockets.ToList();
            sockets.Clear();
            return new AttachedDevice(device, "nbd", [], () =>
            {
                using (var again = new GenericNetlinkSocket())
                {
                    again.Request(family, CmdDisconnect, GenericNetlink.U32(AttrIndex, index));
                }

                foreach (var s in owned)
                {
                    s.Dispose();
                }

                return ValueTask.CompletedTask;
            });
        }
        finally
        {
            foreach (var s in sockets)
            {
                s.Dispose();
            }
        }
    }
}
