using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;

[assembly: InternalsVisibleTo("RestoreFs.Nbd.Tests")]

namespace RestoreFs.Nbd;

/// <summary>
/// Numbers of netlink and generic netlink (uapi <c>linux/netlink.h</c>, <c>linux/genetlink.h</c>). Everything on the
/// wire is in host byte order (little endian on the machines RestoreFs runs on); attributes are 4-byte aligned.
/// </summary>
internal static class Netlink
{
    public const int AfNetlink = 16;
    public const int ProtocolGeneric = 16;
    public const int SolNetlink = 270;
    public const int OptionCapAck = 10;
    public const int OptionExtAck = 11;

    public const int HeaderLength = 16;          // struct nlmsghdr
    public const int GenericHeaderLength = 4;    // struct genlmsghdr
    public const int AttributeHeaderLength = 4;  // struct nlattr

    public const ushort TypeNoop = 1;
    public const ushort TypeError = 2;
    public const ushort TypeDone = 3;
    public const ushort TypeOverrun = 4;

    public const ushort FlagRequest = 0x1;
    public const ushort FlagMulti = 0x2;
    public const ushort FlagAck = 0x4;
    public const ushort FlagCapped = 0x100;      // on NLMSG_ERROR: only the request's header is echoed
    public const ushort FlagAckTlvs = 0x200;     // on NLMSG_ERROR: extended-ack attributes follow

    public const ushort AttributeNested = 0x8000;
    public const ushort AttributeNetByteOrder = 0x4000;
    public const ushort AttributeTypeMask = 0x3fff;

    public const ushort ErrorAttributeMessage = 1;  // NLMSGERR_ATTR_MSG
    public const ushort ErrorAttributeOffset = 2;   // NLMSGERR_ATTR_OFFS

    /// <summary>The generic netlink controller ("nlctrl") has the fixed id GENL_ID_CTRL.</summary>
    public const ushort ControllerFamily = 0x10;
    public const byte ControllerNewFamily = 1;
    public const byte ControllerGetFamily = 3;
    public const ushort ControllerAttributeFamilyId = 1;
    public const ushort ControllerAttributeFamilyName = 2;
    public const ushort ControllerAttributeVersion = 3;

    public const int Enoent = 2;
    public const int Eintr = 4;
    public const int Einval = 22;
    public const int Eopnotsupp = 95;

    public static int Align(int length) => (length + 3) & ~3;

    public static string DescribeErrno(int errno) => $"errno {errno} ({Marshal.GetPInvokeErrorMessage(errno)})";

    /// <summary>The messages of one datagram (a reply may carry several; each is aligned to 4 bytes).</summary>
    public static List<NetlinkMessage> SplitMessages(ReadOnlyMemory<byte> datagram)
    {
        var messages = new List<NetlinkMessage>();
        var span = datagram.Span;
        var offset = 0;
        while (span.Length - offset >= HeaderLength)
        {
            var length = (int)BinaryPrimitives.ReadUInt32LittleEndian(span[offset..]);
            if (length < HeaderLength || length > span.Length - offset)
            {
                throw new NbdException($"netlink: message at offset {offset} claims {length} bytes, datagram has {span.Length - offset}");
            }

            messages.Add(new NetlinkMessage(
                BinaryPrimitives.ReadUInt16LittleEndian(span[(offset + 4)..]),
                BinaryPrimitives.ReadUInt16LittleEndian(span[(offset + 6)..]),
                BinaryPrimitives.ReadUInt32LittleEndian(span[(offset + 8)..]),
                BinaryPrimitives.ReadUInt32LittleEndian(span[(offset + 12)..]),
                datagram.Slice(offset + HeaderLength, length - HeaderLength)));
            offset += Align(length);
        }

        return messages;
    }

    /// <summary>A run of attributes (top level of a message, or the inside of a nested one).</summary>
    public static List<NetlinkAttribute> ParseAttributes(ReadOnlyMemory<byte> data)
    {
        var attributes = new List<NetlinkAttribute>();
        var span = data.Span;
        var offset = 0;
        while (span.Length - offset >= AttributeHeaderLength)
        {
            var length = BinaryPrimitives.ReadUInt16LittleEndian(span[offset..]);
            var type = BinaryPrimitives.ReadUInt16LittleEndian(span[(offset + 2)..]);
            if (length < AttributeHeaderLength || length > span.Length - offset)
            {
                throw new NbdException($"netlink: attribute {type & AttributeTypeMask} at offset {offset} claims {length} bytes, {span.Length - offset} left");
            }

            attributes.Add(new NetlinkAttribute((ushort)(type & AttributeTypeMask), (type & AttributeNested) != 0,
                data.Slice(offset + AttributeHeaderLength, length - AttributeHeaderLength)));
            offset += Align(length);
        }

        return attributes;
    }

    /// <summary>
    /// The payload of an NLMSG_ERROR: errno (positive; 0 is an acknowledgement) and, with extended acks, the kernel's
    /// text. Layout: int error, the request's nlmsghdr, the request's payload unless capped, then attributes.
    /// </summary>
    public static NetlinkStatus ParseError(NetlinkMessage message)
    {
        var payload = message.Payload.Span;
        if (message.Type != TypeError || payload.Length < 4 + HeaderLength)
        {
            throw new NbdException($"netlink: not an error message (type {message.Type}, {payload.Length} bytes)");
        }

        var errno = -BinaryPrimitives.ReadInt32LittleEndian(payload);
        string? text = null;
        if ((message.Flags & FlagAckTlvs) != 0)
        {
            var echoed = (message.Flags & FlagCapped) != 0
                ? HeaderLength
                : Align((int)BinaryPrimitives.ReadUInt32LittleEndian(payload[4..]));
            if (4 + echoed <= payload.Length)
            {
                foreach (var attribute in ParseAttributes(message.Payload[(4 + echoed)..]))
                {
                    if (attribute.Type == ErrorAttributeMessage)
                    {
                        text = attribute.AsString();
                    }
                }
            }
        }

        return new NetlinkStatus(errno, text);
    }

    /// <summary>A generic netlink message: command, version, attributes.</summary>
    public static GenericNetlinkReply ParseGeneric(NetlinkMessage message)
    {
        if (message.Payload.Length < GenericHeaderLength)
        {
            throw new NbdException($"netlink: generic message of type {message.Type} has no genl header");
        }

        var span = message.Payload.Span;
        return new GenericNetlinkReply(message.Type, span[0], span[1], ParseAttributes(message.Payload[GenericHeaderLength..]));
    }
}

/// <summary>One netlink message: header fields and the payload after the 16-byte header.</summary>
internal sealed record NetlinkMessage(ushort Type, ushort Flags, uint Sequence, uint PortId, ReadOnlyMemory<byte> Payload);

/// <summary>Outcome of a request: 0 or a positive errno, and the kernel's extended-ack text if it sent one.</summary>
internal readonly record struct NetlinkStatus(int Errno, string? Message)
{
    public override string ToString() =>
        Errno == 0 ? "ok" : Netlink.DescribeErrno(Errno) + (Message is null ? string.Empty : $": {Message}");
}

/// <summary>A generic netlink data message from the kernel.</summary>
internal sealed record GenericNetlinkReply(ushort Family, byte Command, byte Version, IReadOnlyList<NetlinkAttribute> Attributes)
{
    public NetlinkAttribute? Find(ushort type)
    {
        foreach (var attribute in Attributes)
        {
            if (attribute.Type == type)
            {
                return attribute;
            }
        }

        return null;
    }
}

/// <summary>A parsed attribute; the value accessors check the length the kernel sent.</summary>
internal readonly record struct NetlinkAttribute(ushort Type, bool IsNested, ReadOnlyMemory<byte> Value)
{
    public ushort U16() => BinaryPrimitives.ReadUInt16LittleEndian(Exactly(2));

    public uint U32() => BinaryPrimitives.ReadUInt32LittleEndian(Exactly(4));

    public ulong U64() => BinaryPrimitives.ReadUInt64LittleEndian(Exactly(8));

    public string AsString()
    {
        var span = Value.Span;
        var end = span.IndexOf((byte)0);
        return Encoding.UTF8.GetString(end < 0 ? span : span[..end]);
    }

    public List<NetlinkAttribute> Children() => Netlink.ParseAttributes(Value);

    private ReadOnlySpan<byte> Exactly(int length) => Value.Length == length
        ? Value.Span
        : throw new NbdException($"netlink: attribute {Type} has {Value.Length} bytes, expected {length}");
}

/// <summary>
/// Builds one generic netlink request: nlmsghdr (length and sequence filled in by <see cref="ToArray"/>), genlmsghdr,
/// then attributes, each padded to 4 bytes; nested attributes carry NLA_F_NESTED.
/// </summary>
internal sealed class GenericNetlinkRequest
{
    private byte[] buffer = new byte[128];
    private int length;

    public GenericNetlinkRequest(ushort family, byte command, byte version = 1, ushort flags = Netlink.FlagRequest | Netlink.FlagAck)
    {
        Family = family;
        Command = command;
        var header = Reserve(Netlink.HeaderLength + Netlink.GenericHeaderLength);
        BinaryPrimitives.WriteUInt16LittleEndian(header[4..], family);
        BinaryPrimitives.WriteUInt16LittleEndian(header[6..], flags);
        header[16] = command;
        header[17] = version;
    }

    public ushort Family { get; }

    public byte Command { get; }

    public GenericNetlinkRequest U16(ushort type, ushort value)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(Attribute(type, 2), value);
        return this;
    }

    public GenericNetlinkRequest U32(ushort type, uint value)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(Attribute(type, 4), value);
        return this;
    }

    public GenericNetlinkRequest U64(ushort type, ulong value)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(Attribute(type, 8), value);
        return this;
    }

    /// <summary>A NUL-terminated string (NLA_NUL_STRING / NLA_STRING as the kernel expects names).</summary>
    public GenericNetlinkRequest String(ushort type, string value)
    {
        var bytes = Encoding.UTF8.GetBytes(value);
        var destination = Attribute(type, bytes.Length + 1);
        bytes.CopyTo(destination);
        destination[bytes.Length] = 0;
        return this;
    }

    /// <summary>Opens a nested attribute; returns its offset for <see cref="EndNested"/>.</summary>
    public int BeginNested(ushort type)
    {
        var start = length;
        var header = Reserve(Netlink.AttributeHeaderLength);
        BinaryPrimitives.WriteUInt16LittleEndian(header[2..], (ushort)(type | Netlink.AttributeNested));
        return start;
    }

    public GenericNetlinkRequest EndNested(int start)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(buffer.AsSpan(start), checked((ushort)(length - start)));
        return this;
    }

    /// <summary>The finished message with the given sequence number (port id 0: the kernel fills in ours).</summary>
    public byte[] ToArray(uint sequence)
    {
        var message = buffer.AsSpan(0, length).ToArray();
        BinaryPrimitives.WriteUInt32LittleEndian(message, (uint)length);
        BinaryPrimitives.WriteUInt32LittleEndian(message.AsSpan(8), sequence);
        return message;
    }

    private Span<byte> Attribute(ushort type, int valueLength)
    {
        var total = Netlink.AttributeHeaderLength + valueLength;
        var attribute = Reserve(Netlink.Align(total));
        BinaryPrimitives.WriteUInt16LittleEndian(attribute, checked((ushort)total));
        BinaryPrimitives.WriteUInt16LittleEndian(attribute[2..], type);
        return attribute.Slice(Netlink.AttributeHeaderLength, valueLength);
    }

    private Span<byte> Reserve(int count)
    {
        if (length + count > buffer.Length)
        {
            Array.Resize(ref buffer, Math.Max(buffer.Length * 2, length + count));
        }

        var span = buffer.AsSpan(length, count);
        span.Clear();
        length += count;
        return span;
    }
}

/// <summary>The kernel refused a netlink request.</summary>
internal sealed class NetlinkException(string what, NetlinkStatus status) : NbdException($"{what}: {status}")
{
    public int Errno => Status.Errno;

    public NetlinkStatus Status { get; } = status;
}

/// <summary>
/// A NETLINK_GENERIC socket bound to a kernel-assigned port, talking to the kernel (port 0). Requests are synchronous:
/// send, then read until the acknowledgement (or error) for that sequence number. .NET's Socket has no AF_NETLINK
/// address, so this goes through libc.
/// </summary>
internal sealed unsafe partial class GenericNetlinkSocket : IDisposable
{
    private static readonly TimeSpan ReplyTimeout = TimeSpan.FromSeconds(10);
    private readonly int fd;
    private uint sequence = (uint)Environment.TickCount;
    private int disposed;

    public GenericNetlinkSocket()
    {
        fd = Socket(Netlink.AfNetlink, 3 | 0x80000, Netlink.ProtocolGeneric); // SOCK_RAW | SOCK_CLOEXEC
        if (fd < 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            throw new NetlinkException("netlink: cannot open a NETLINK_GENERIC socket", new NetlinkStatus(errno, null));
        }

        try
        {
            // Best effort: only the request's header in error replies, and the kernel's reason text with them.
            var one = 1;
            SetSocketOption(fd, Netlink.SolNetlink, Netlink.OptionCapAck, &one, sizeof(int));
            SetSocketOption(fd, Netlink.SolNetlink, Netlink.OptionExtAck, &one, sizeof(int));
            var address = stackalloc byte[12]; // sockaddr_nl: family, pad, pid 0 (kernel assigns), groups 0
            new Span<byte>(address, 12).Clear();
            address[0] = Netlink.AfNetlink;
            if (Bind(fd, address, 12) != 0)
            {
                throw new NetlinkException("netlink: bind", new NetlinkStatus(Marshal.GetLastPInvokeError(), null));
            }

            var addressLength = 12u;
            if (GetSocketName(fd, address, &addressLength) != 0)
            {
                throw new NetlinkException("netlink: getsockname", new NetlinkStatus(Marshal.GetLastPInvokeError(), null));
            }

            PortId = BinaryPrimitives.ReadUInt32LittleEndian(new ReadOnlySpan<byte>(address + 4, 4));
        }
        catch
        {
            Close(fd);
            throw;
        }
    }

    /// <summary>Our port id, as the kernel assigned it at bind.</summary>
    public uint PortId { get; }

    [LibraryImport("libc", EntryPoint = "socket", SetLastError = true)]
    private static partial int Socket(int domain, int type, int protocol);

    [LibraryImport("libc", EntryPoint = "setsockopt", SetLastError = true)]
    private static partial int SetSocketOption(int fd, int level, int name, void* value, uint length);

    [LibraryImport("libc", EntryPoint = "bind", SetLastError = true)]
    private static partial int Bind(int fd, byte* address, uint length);

    [LibraryImport("libc", EntryPoint = "getsockname", SetLastError = true)]
    private static partial int GetSocketName(int fd, byte* address, uint* length);

    [LibraryImport("libc", EntryPoint = "sendto", SetLastError = true)]
    private static partial nint SendTo(int fd, byte* buffer, nuint length, int flags, byte* address, uint addressLength);

    [LibraryImport("libc", EntryPoint = "recv", SetLastError = true)]
    private static partial nint Receive(int fd, byte* buffer, nuint length, int flags);

    [LibraryImport("libc", EntryPoint = "poll", SetLastError = true)]
    private static partial int Poll(void* fds, nuint count, int timeoutMs);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int Close(int fd);

    /// <summary>
    /// Sends <paramref name="request"/> to the kernel and collects its answer: the status from the final NLMSG_ERROR
    /// (0 = acknowledged) and any data messages that came before it.
    /// </summary>
    public (NetlinkStatus Status, IReadOnlyList<GenericNetlinkReply> Replies) Request(GenericNetlinkRequest request)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
        var seq = unchecked(++sequence);
        var message = request.ToArray(seq);
        var kernel = stackalloc byte[12];
        new Span<byte>(kernel, 12).Clear();
        kernel[0] = Netlink.AfNetlink;
        fixed (byte* data = message)
        {
            var sent = SendTo(fd, data, (nuint)message.Length, 0, kernel, 12);
            if (sent != message.Length)
            {
                throw new NetlinkException($"netlink: sending command {request.Command} to family {request.Family}",
                    new NetlinkStatus(sent < 0 ? Marshal.GetLastPInvokeError() : 0, sent < 0 ? null : $"short send of {sent} bytes"));
            }
        }

        var replies = new List<GenericNetlinkReply>();
        var buffer = new byte[65536];
        var deadline = Environment.TickCount64 + (long)ReplyTimeout.TotalMilliseconds;
        while (true)
        {
            var length = ReceiveOne(buffer, deadline, request);
            foreach (var reply in Netlink.SplitMessages(buffer.AsMemory(0, length).ToArray()))
            {
                if (reply.Sequence != seq)
                {
                    continue; // a late answer to an earlier request
                }

                switch (reply.Type)
                {
                    case Netlink.TypeNoop:
                        continue;
                    case Netlink.TypeError:
                        return (Netlink.ParseError(reply), replies);
                    case Netlink.TypeDone:
                        return (new NetlinkStatus(0, null), replies);
                    case Netlink.TypeOverrun:
                        throw new NbdException("netlink: the kernel reported a receive overrun");
                    default:
                        replies.Add(Netlink.ParseGeneric(reply));
                        break;
                }
            }
        }
    }

    /// <summary>The id of a generic netlink family; null when the kernel has none by that name (ENOENT).</summary>
    public ushort? ResolveFamily(string name)
    {
        var (status, replies) = Request(new GenericNetlinkRequest(Netlink.ControllerFamily, Netlink.ControllerGetFamily)
            .String(Netlink.ControllerAttributeFamilyName, name));
        if (status.Errno == Netlink.Enoent)
        {
            return null;
        }

        if (status.Errno != 0)
        {
            throw new NetlinkException($"netlink: resolving generic netlink family '{name}'", status);
        }

        foreach (var reply in replies)
        {
            if (reply.Find(Netlink.ControllerAttributeFamilyId) is { } id)
            {
                return id.U16();
            }
        }

        throw new NbdException($"netlink: the controller's answer for family '{name}' has no family id");
    }

    private int ReceiveOne(byte[] buffer, long deadline, GenericNetlinkRequest request)
    {
        var pollFd = stackalloc int[2]; // struct pollfd: int fd; short events; short revents
        while (true)
        {
            var remaining = deadline - Environment.TickCount64;
            if (remaining <= 0)
            {
                throw new NbdException($"netlink: no answer from the kernel to command {request.Command} of family {request.Family} within {ReplyTimeout.TotalSeconds:0} s");
            }

            pollFd[0] = fd;
            pollFd[1] = 1; // POLLIN
            var ready = Poll(pollFd, 1, (int)Math.Min(remaining, int.MaxValue));
            if (ready < 0)
            {
                var errno = Marshal.GetLastPInvokeError();
                if (errno == Netlink.Eintr)
                {
                    continue;
                }

                throw new NetlinkException("netlink: poll", new NetlinkStatus(errno, null));
            }

            if (ready == 0)
            {
                continue;
            }

            fixed (byte* data = buffer)
            {
                var received = Receive(fd, data, (nuint)buffer.Length, 0x20 | 0x40); // MSG_TRUNC | MSG_DONTWAIT
                if (received < 0)
                {
                    var errno = Marshal.GetLastPInvokeError();
                    if (errno is Netlink.Eintr or 11) // EAGAIN: woken without data
                    {
                        continue;
                    }

                    throw new NetlinkException("netlink: receive", new NetlinkStatus(errno, null));
                }

                if (received > buffer.Length)
                {
                    throw new NbdException($"netlink: the kernel's answer has {received} bytes, more than the {buffer.Length} byte buffer");
                }

                return (int)received;
            }
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref disposed, 1) == 0)
        {
            Close(fd);
        }
    }
}
