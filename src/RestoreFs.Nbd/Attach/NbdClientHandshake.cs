using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using static RestoreFs.Nbd.Protocol.NbdWire;

namespace RestoreFs.Nbd;

/// <summary>What the server told the client about an export in the handshake.</summary>
internal readonly record struct NbdExportInfo(long Size, ushort TransmissionFlags)
{
    public bool CanMultiConn => (TransmissionFlags & TxCanMultiConn) != 0;
}

/// <summary>
/// The client side of the fixed newstyle handshake (NBD_OPT_GO), done in user space before a socket is handed to the
/// kernel — by the ioctl path (NBD_SET_SOCK) and the netlink path (NBD_CMD_CONNECT) alike.
/// </summary>
internal static class NbdClientHandshake
{
    /// <summary>Negotiates <paramref name="export"/> on a connected socket; returns its size and transmission flags.</summary>
    public static async Task<NbdExportInfo> NegotiateAsync(Socket socket, string export, CancellationToken ct)
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
                return size < 0 ? throw new NbdException($"the server sent no size for export '{export}'") : new NbdExportInfo(size, transmission);
            }
        }
    }

    /// <summary>
    /// Opens up to <paramref name="connections"/> negotiated connections to one export. More than one only when the
    /// server advertises NBD_FLAG_CAN_MULTI_CONN (the kernel refuses several sockets otherwise); every connection must
    /// report the same size and flags. On failure nothing stays open.
    /// </summary>
    public static async Task<(List<Socket> Sockets, NbdExportInfo Export)> OpenAsync(string socketPath, string export, int connections,
        CancellationToken ct)
    {
        var sockets = new List<Socket>();
        try
        {
            var first = await ConnectOneAsync(sockets, socketPath, export, ct).ConfigureAwait(false);
            var wanted = first.CanMultiConn ? Math.Max(1, connections) : 1;
            while (sockets.Count < wanted)
            {
                var info = await ConnectOneAsync(sockets, socketPath, export, ct).ConfigureAwait(false);
                if (info != first)
                {
                    throw new NbdException($"export '{export}' changed between connections: size {first.Size} flags 0x{first.TransmissionFlags:x4}, " +
                                           $"then size {info.Size} flags 0x{info.TransmissionFlags:x4}");
                }
            }

            return (sockets, first);
        }
        catch
        {
            foreach (var socket in sockets)
            {
                socket.Dispose();
            }

            throw;
        }
    }

    private static async Task<NbdExportInfo> ConnectOneAsync(List<Socket> sockets, string socketPath, string export, CancellationToken ct)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        sockets.Add(socket);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct).ConfigureAwait(false);
        return await NegotiateAsync(socket, export, ct).ConfigureAwait(false);
    }
}
