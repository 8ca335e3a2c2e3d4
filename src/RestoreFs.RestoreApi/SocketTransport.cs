using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;

namespace RestoreFs.RestoreApi;

/// <summary>A new connection per request: a unix socket, TCP on loopback (QEMU user networking) or AF_VSOCK.</summary>
public sealed class SocketTransport(EndPoint endPoint) : IRestoreTransport
{
    public EndPoint EndPoint => endPoint;

    public static SocketTransport Unix(string path) => new(new UnixDomainSocketEndPoint(path));

    public static SocketTransport Tcp(int port) => new(new IPEndPoint(IPAddress.Loopback, port));

    public static SocketTransport Vsock(uint cid, uint port)
    {
        if (cid == VsockEndPoint.HostCid)
        {
            throw new ArgumentException("CID 2 is the host itself, never a restore VM", nameof(cid));
        }

        return new(new VsockEndPoint(cid, port));
    }

    public async ValueTask<Stream> OpenStreamAsync(CancellationToken ct)
    {
        if (endPoint is VsockEndPoint vsock)
        {
            // .NET's Socket does not take AF_VSOCK: a libc socket as a stream.
            return await VsockSocket.ConnectAsync(vsock.Cid, vsock.Port, ct).ConfigureAwait(false);
        }

        var (family, protocol) = endPoint switch
        {
            UnixDomainSocketEndPoint => (AddressFamily.Unix, ProtocolType.Unspecified),
            _ => (endPoint.AddressFamily, ProtocolType.Tcp),
        };
        for (var attempt = 0; ; attempt++)
        {
            var socket = new Socket(family, SocketType.Stream, protocol);
            try
            {
                await socket.ConnectAsync(endPoint, ct).ConfigureAwait(false);
                if (protocol == ProtocolType.Tcp)
                {
                    socket.NoDelay = true;
                }

                return new NetworkStream(socket, ownsSocket: true);
            }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.TryAgain && attempt < 50)
            {
                // A unix socket's backlog is full: the daemon is busy accepting, try again shortly.
                socket.Dispose();
                await Task.Delay(10 + attempt * 5, ct).ConfigureAwait(false);
            }
            catch (SocketException e)
            {
                socket.Dispose();
                throw new IOException($"cannot connect to the restore daemon at {endPoint}: {e.Message}", e);
            }
        }
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

/// <summary>An AF_VSOCK address (struct sockaddr_vm: family, reserved, port, cid, zero padding; 16 bytes).</summary>
public sealed class VsockEndPoint(uint cid, uint port) : EndPoint
{
    public const AddressFamily Family = (AddressFamily)40;
    public const uint AnyCid = 0xFFFFFFFF;
    public const uint HostCid = 2;

    public uint Cid => cid;

    public uint Port => port;

    public override AddressFamily AddressFamily => Family;

    /// <summary>The sockaddr_vm bytes. .NET cannot make a SocketAddress of a family it does not know, so this one is
    /// made as IPv4 and overwritten byte by byte (its <see cref="SocketAddress.Family"/> then reads Unknown).
    /// <see cref="SocketTransport"/> does not go through it: .NET's Socket refuses AF_VSOCK (see <see cref="VsockSocket"/>).</summary>
    public override SocketAddress Serialize()
    {
        var address = new SocketAddress(AddressFamily.InterNetwork, 16);
        Span<byte> bytes = stackalloc byte[16];
        VsockSocket.Encode(cid, port, bytes);
        for (var i = 0; i < 16; i++)
        {
            address[i] = bytes[i];
        }

        return address;
    }

    public override EndPoint Create(SocketAddress socketAddress)
    {
        var bytes = new byte[16];
        for (var i = 0; i < Math.Min(16, socketAddress.Size); i++)
        {
            bytes[i] = socketAddress[i];
        }

        return new VsockEndPoint(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(8)), BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(4)));
    }

    public override string ToString() => $"vsock:{cid}:{port}";
}
