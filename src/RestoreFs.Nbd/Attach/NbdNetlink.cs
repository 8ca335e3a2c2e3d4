using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace RestoreFs.Nbd;

/// <summary>
/// The kernel's NBD configuration interface: generic netlink family "nbd" (uapi <c>linux/nbd-netlink.h</c>, client
/// flags from <c>linux/nbd.h</c>). Attribute types follow the kernel's policy: index and socket fds u32, sizes,
/// timeouts and flags u64; timeouts are in seconds.
/// </summary>
internal static class NbdNetlink
{
    public const string FamilyName = "nbd";
    public const byte Version = 1;

    public const byte CommandConnect = 1;
    public const byte CommandDisconnect = 2;

    public const ushort AttributeIndex = 1;
    public const ushort AttributeSizeBytes = 2;
    public const ushort AttributeBlockSizeBytes = 3;
    public const ushort AttributeTimeout = 4;
    public const ushort AttributeServerFlags = 5;
    public const ushort AttributeClientFlags = 6;
    public const ushort AttributeSockets = 7;
    public const ushort AttributeDeadConnectionTimeout = 8;

    public const ushort SocketItem = 1;   // inside NBD_ATTR_SOCKETS
    public const ushort SocketFd = 1;     // inside NBD_SOCK_ITEM

    public const ulong ClientFlagDestroyOnDisconnect = 1;
    public const ulong ClientFlagDisconnectOnClose = 2;

    /// <summary>
    /// NBD_CMD_CONNECT: size, block size, timeouts, server (transmission) flags, client flags, then one
    /// NBD_SOCK_ITEM { NBD_SOCK_FD } per connection inside NBD_ATTR_SOCKETS. Without an index the kernel takes a
    /// free device (creating one if needed) and answers with NBD_ATTR_INDEX.
    /// </summary>
    public static GenericNetlinkRequest Connect(ushort family, NbdConnectParameters p)
    {
        var request = new GenericNetlinkRequest(family, CommandConnect, Version);
        if (p.Index is { } index)
        {
            request.U32(AttributeIndex, index);
        }

        request.U64(AttributeSizeBytes, (ulong)p.SizeBytes)
            .U64(AttributeBlockSizeBytes, (ulong)p.BlockSizeBytes);
        if (p.Timeout is { } timeout)
        {
            request.U64(AttributeTimeout, Seconds(timeout));
        }

        if (p.DeadConnectionTimeout is { } dead)
        {
            request.U64(AttributeDeadConnectionTimeout, Seconds(dead));
        }

        request.U64(AttributeServerFlags, p.ServerFlags)
            .U64(AttributeClientFlags, p.ClientFlags);
        var sockets = request.BeginNested(AttributeSockets);
        foreach (var fd in p.SocketFds)
        {
            var item = request.BeginNested(SocketItem);
            request.U32(SocketFd, checked((uint)fd));
            request.EndNested(item);
        }

        return request.EndNested(sockets);
    }

    /// <summary>NBD_CMD_DISCONNECT of <c>/dev/nbd{index}</c>.</summary>
    public static GenericNetlinkRequest Disconnect(ushort family, uint index) =>
        new GenericNetlinkRequest(family, CommandDisconnect, Version).U32(AttributeIndex, index);

    /// <summary>The device index from the kernel's answer to NBD_CMD_CONNECT.</summary>
    public static uint ConnectedIndex(IReadOnlyList<GenericNetlinkReply> replies)
    {
        foreach (var reply in replies)
        {
            if (reply.Command == CommandConnect && reply.Find(AttributeIndex) is { } index)
            {
                return index.U32();
            }
        }

        throw new NbdException($"NBD_CMD_CONNECT was acknowledged without a device index ({replies.Count} data messages)");
    }

    /// <summary>The largest block size (4096 down to 512) that divides the export, so the device covers all of it.</summary>
    public static long BlockSizeFor(long size)
    {
        for (var block = 4096L; block > 512; block /= 2)
        {
            if (size % block == 0)
            {
                return block;
            }
        }

        return 512;
    }

    private static ulong Seconds(TimeSpan t) => (ulong)Math.Max(1, Math.Ceiling(t.TotalSeconds));
}

/// <summary>The settings of one NBD_CMD_CONNECT.</summary>
internal sealed record NbdConnectParameters(
    long SizeBytes,
    long BlockSizeBytes,
    ushort ServerFlags,
    IReadOnlyList<int> SocketFds,
    ulong ClientFlags,
    TimeSpan? Timeout,
    TimeSpan? DeadConnectionTimeout = null,
    uint? Index = null);

/// <summary>
/// Netlink cannot be used here and the NBD ioctls may still work: the kernel has no "nbd" family (ENOENT, module not
/// loaded), no generic netlink socket could be opened, or NBD_CMD_CONNECT was refused with EINVAL/EOPNOTSUPP.
/// </summary>
internal sealed class NetlinkNbdUnsupportedException(string message, Exception? inner = null) : NbdException(message, inner);

/// <summary>
/// Kernel NBD through netlink: negotiate several connections to the export ourselves, hand all their sockets to the
/// kernel in one NBD_CMD_CONNECT (the kernel picks a free <c>/dev/nbdN</c> and serves the device from its own
/// workers; no thread of ours sits in an ioctl), NBD_CMD_DISCONNECT to detach.
/// </summary>
internal sealed class NetlinkNbdAttacher(ILogger log, KernelNbdOptions options)
{
    /// <summary>Throws <see cref="NetlinkNbdUnsupportedException"/> when the caller should use the ioctls instead.</summary>
    public async Task<AttachedDevice> AttachAsync(string socketPath, string export, CancellationToken ct)
    {
        GenericNetlinkSocket netlink;
        try
        {
            netlink = new GenericNetlinkSocket();
        }
        catch (NetlinkException e)
        {
            throw new NetlinkNbdUnsupportedException($"no generic netlink socket: {e.Status}", e);
        }

        using (netlink)
        {
            var family = netlink.ResolveFamily(NbdNetlink.FamilyName)
                         ?? throw new NetlinkNbdUnsupportedException(
                             $"the kernel has no generic netlink family '{NbdNetlink.FamilyName}' (ENOENT: the nbd module is not loaded)");
            var (sockets, info) = await NbdClientHandshake.OpenAsync(socketPath, export, options.Connections, ct).ConfigureAwait(false);
            try
            {
                if (sockets.Count < options.Connections)
                {
                    log.LogDebug("Export {Export} does not advertise NBD_FLAG_CAN_MULTI_CONN: one connection instead of {Connections}",
                        export, options.Connections);
                }

                var parameters = new NbdConnectParameters(info.Size, NbdNetlink.BlockSizeFor(info.Size), info.TransmissionFlags,
                    sockets.Select(s => (int)s.Handle).ToList(),
                    options.DestroyOnDisconnect ? NbdNetlink.ClientFlagDestroyOnDisconnect : 0,
                    options.RequestTimeout, options.DeadConnectionTimeout);
                var (status, replies) = netlink.Request(NbdNetlink.Connect(family, parameters));
                if (status.Errno is Netlink.Einval or Netlink.Eopnotsupp)
                {
                    throw new NetlinkNbdUnsupportedException($"NBD_CMD_CONNECT refused: {status}");
                }

                if (status.Errno != 0)
                {
                    throw new NetlinkException("NBD_CMD_CONNECT", status);
                }

                var index = NbdNetlink.ConnectedIndex(replies);
                var device = $"/dev/nbd{index}";
                try
                {
                    await WaitForDeviceAsync(device, ct).ConfigureAwait(false);
                }
                catch
                {
                    Disconnect(family, index, device);
                    throw;
                }

                log.LogInformation(
                    "Attached export {Export} as {Device} through kernel NBD over netlink ({Connections} connection(s), {Size} bytes, block size {BlockSize})",
                    export, device, sockets.Count, info.Size, parameters.BlockSizeBytes);
                var owned = sockets;
                sockets = [];
                return new AttachedDevice(device, "nbd", [], () =>
                {
                    Disconnect(family, index, device);
                    foreach (var socket in owned)
                    {
                        socket.Dispose();
                    }

                    return ValueTask.CompletedTask;
                });
            }
            finally
            {
                foreach (var socket in sockets)
                {
                    socket.Dispose();
                }
            }
        }
    }

    /// <summary>The kernel adds the disk before it answers; the node under /dev comes from devtmpfs/udev just after.</summary>
    private async Task WaitForDeviceAsync(string device, CancellationToken ct)
    {
        var deadline = Environment.TickCount64 + (long)options.DeviceTimeout.TotalMilliseconds;
        while (!File.Exists(device))
        {
            if (Environment.TickCount64 > deadline)
            {
                throw new NbdException($"the kernel connected {device} but the device node did not appear within {options.DeviceTimeout.TotalSeconds:0.#} s");
            }

            await Task.Delay(20, ct).ConfigureAwait(false);
        }
    }

    private void Disconnect(ushort family, uint index, string device)
    {
        try
        {
            using var netlink = new GenericNetlinkSocket();
            var (status, _) = netlink.Request(NbdNetlink.Disconnect(family, index));
            if (status.Errno != 0)
            {
                log.LogWarning("NBD_CMD_DISCONNECT of {Device} failed: {Reason}", device, status.ToString());
                return;
            }

            log.LogInformation("Detached {Device} (netlink NBD_CMD_DISCONNECT)", device);
        }
        catch (Exception e) when (e is NbdException or SocketException)
        {
            log.LogWarning("NBD_CMD_DISCONNECT of {Device} failed: {Reason}", device, e.Message);
        }
    }
}
