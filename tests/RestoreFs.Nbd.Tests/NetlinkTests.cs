using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using RestoreFs.Nbd;
using RestoreFs.TestSupport;

namespace RestoreFs.Nbd.Tests;

/// <summary>Collects formatted log lines, to check which attach path was taken and why.</summary>
internal sealed class ListLoggerFactory : ILoggerFactory
{
    public ConcurrentQueue<string> Lines { get; } = new();

    public string Text => string.Join('\n', Lines);

    public ILogger CreateLogger(string categoryName) => new ListLogger(this, categoryName);

    public void AddProvider(ILoggerProvider provider)
    {
    }

    public void Dispose()
    {
    }

    private sealed class ListLogger(ListLoggerFactory owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            owner.Lines.Enqueue($"{logLevel} {category}: {formatter(state, exception)}");
    }
}

/// <summary>
/// Kernel NBD attach through generic netlink: golden bytes of the requests, parsing of the kernel's answers, real
/// round trips with this kernel's netlink controller, and the attach path choice against our real NBD server.
/// </summary>
public sealed class NetlinkTests
{
    private static string Hex(byte[] bytes) => Convert.ToHexStringLower(bytes);

    private static byte[] Bytes(string hex) => Convert.FromHexString(hex.Replace(" ", string.Empty, StringComparison.Ordinal));

    [Fact]
    public void Get_family_request_for_nbd_golden_bytes()
    {
        var request = new GenericNetlinkRequest(Netlink.ControllerFamily, Netlink.ControllerGetFamily)
            .String(Netlink.ControllerAttributeFamilyName, "nbd");
        // nlmsghdr: length 28, type 0x10 (nlctrl), flags REQUEST|ACK, seq 7, port 0; genlmsghdr: cmd 3 (GETFAMILY),
        // version 1, reserved; attribute CTRL_ATTR_FAMILY_NAME (2), length 8: "nbd\0".
        Assert.Equal("1c000000 1000 0500 07000000 00000000 03 01 0000 0800 0200 6e626400".Replace(" ", string.Empty, StringComparison.Ordinal),
            Hex(request.ToArray(7)));
    }

    [Fact]
    public void Connect_request_with_two_sockets_golden_bytes()
    {
        var request = NbdNetlink.Connect(0x21, new NbdConnectParameters(
            SizeBytes: 1 << 20, BlockSizeBytes: 4096, ServerFlags: 0x0103, SocketFds: [5, 6],
            ClientFlags: NbdNetlink.ClientFlagDestroyOnDisconnect, Timeout: TimeSpan.FromMinutes(5)));
        var expected = string.Concat(
            "6c000000", "2100", "0500", "09000000", "00000000", // nlmsghdr: 108 bytes, family 0x21, REQUEST|ACK, seq 9
            "01", "01", "0000",                                 // NBD_CMD_CONNECT, version 1
            "0c00", "0200", "0000100000000000",                 // NBD_ATTR_SIZE_BYTES = 1 MiB
            "0c00", "0300", "0010000000000000",                 // NBD_ATTR_BLOCK_SIZE_BYTES = 4096
            "0c00", "0400", "2c01000000000000",                 // NBD_ATTR_TIMEOUT = 300 s
            "0c00", "0500", "0301000000000000",                 // NBD_ATTR_SERVER_FLAGS = 0x0103
            "0c00", "0600", "0100000000000000",                 // NBD_ATTR_CLIENT_FLAGS = DESTROY_ON_DISCONNECT
            "1c00", "0780",                                     // NBD_ATTR_SOCKETS | NLA_F_NESTED, 28 bytes
            "0c00", "0180", "0800", "0100", "05000000",         //   NBD_SOCK_ITEM | NESTED { NBD_SOCK_FD = 5 }
            "0c00", "0180", "0800", "0100", "06000000");        //   NBD_SOCK_ITEM | NESTED { NBD_SOCK_FD = 6 }
        Assert.Equal(expected, Hex(request.ToArray(9)));
    }

    [Fact]
    public void Connect_request_reads_back_with_index_and_dead_connection_timeout()
    {
        var bytes = NbdNetlink.Connect(0x21, new NbdConnectParameters(3 << 20, 512, 0x0001, [7, 8, 9], 0, null,
            DeadConnectionTimeout: TimeSpan.FromSeconds(1.5), Index: 4)).ToArray(1);
        var message = Assert.Single(Netlink.SplitMessages(bytes));
        var parsed = Netlink.ParseGeneric(message);
        Assert.Equal(NbdNetlink.CommandConnect, parsed.Command);
        Assert.Equal(4u, parsed.Find(NbdNetlink.AttributeIndex)!.Value.U32());
        Assert.Equal(3ul << 20, parsed.Find(NbdNetlink.AttributeSizeBytes)!.Value.U64());
        Assert.Equal(2ul, parsed.Find(NbdNetlink.AttributeDeadConnectionTimeout)!.Value.U64()); // rounded up to whole seconds
        Assert.Null(parsed.Find(NbdNetlink.AttributeTimeout));
        var sockets = parsed.Find(NbdNetlink.AttributeSockets)!.Value;
        Assert.True(sockets.IsNested);
        Assert.Equal(new uint[] { 7, 8, 9 }, sockets.Children().Select(item =>
        {
            Assert.Equal(NbdNetlink.SocketItem, item.Type);
            return Assert.Single(item.Children()).U32();
        }));
    }

    [Fact]
    public void Parses_an_error_with_the_kernels_reason_capped_and_uncapped()
    {
        // ENOENT, only the request's header echoed (NLM_F_CAPPED), then NLMSGERR_ATTR_MSG "Unknown family".
        var capped = Bytes("38000000 0200 0003 07000000 34120000 feffffff" +
                           "1c000000 1000 0500 07000000 00000000" +
                           "1300 0100 556e6b6e6f776e2066616d696c7900 00");
        var status = Netlink.ParseError(Assert.Single(Netlink.SplitMessages(capped)));
        Assert.Equal(Netlink.Enoent, status.Errno);
        Assert.Equal("Unknown family", status.Message);
        Assert.Contains("errno 2", status.ToString(), StringComparison.Ordinal);

        // EINVAL with the whole 28-byte request echoed (not capped) before the attributes.
        var uncapped = Bytes("38000000 0200 0002 08000000 34120000 eaffffff" +
                             "1c000000 1000 0500 08000000 00000000 03010000 0800 0200 6e626400" +
                             "0800 0100 6e6f7400");
        status = Netlink.ParseError(Assert.Single(Netlink.SplitMessages(uncapped)));
        Assert.Equal(Netlink.Einval, status.Errno);
        Assert.Equal("not", status.Message);
    }

    [Fact]
    public void Parses_a_family_reply_and_the_ack_in_one_datagram()
    {
        var datagram = Bytes(
            "50000000 1000 0000 07000000 34120000" +                  // CTRL_CMD_NEWFAMILY reply, 80 bytes
            "01020000" +                                              // cmd 1, version 2
            "0600 0100 2100 0000" +                                   // CTRL_ATTR_FAMILY_ID = 0x21 (u16, padded)
            "0800 0200 6e626400" +                                    // CTRL_ATTR_FAMILY_NAME = "nbd"
            "0800 0300 01000000" +                                    // CTRL_ATTR_VERSION = 1
            "2400 0700" +                                             // CTRL_ATTR_MCAST_GROUPS (nested, no flag)
            "2000 0100 0800 0200 05000000 1100 0100 6e62645f6d635f67726f757000 000000" +
            "24000000 0200 0001 07000000 34120000 00000000" +        // the ack: NLMSG_ERROR with error 0
            "1c000000 1000 0500 07000000 00000000");
        var messages = Netlink.SplitMessages(datagram);
        Assert.Equal(2, messages.Count);
        var family = Netlink.ParseGeneric(messages[0]);
        Assert.Equal(Netlink.ControllerNewFamily, family.Command);
        Assert.Equal((ushort)0x21, family.Find(Netlink.ControllerAttributeFamilyId)!.Value.U16());
        Assert.Equal("nbd", family.Find(Netlink.ControllerAttributeFamilyName)!.Value.AsString());
        Assert.Equal(1u, family.Find(Netlink.ControllerAttributeVersion)!.Value.U32());
        var group = Assert.Single(family.Find(7)!.Value.Children()).Children();
        Assert.Equal(5u, group.Single(a => a.Type == 2).U32());
        Assert.Equal("nbd_mc_group", group.Single(a => a.Type == 1).AsString());
        Assert.Equal(new NetlinkStatus(0, null), Netlink.ParseError(messages[1]));
    }

    [Fact]
    public void Connect_reply_gives_the_device_index()
    {
        var reply = Netlink.ParseGeneric(Assert.Single(Netlink.SplitMessages(Bytes("1c000000 2100 0000 09000000 34120000 01010000 0800 0100 03000000"))));
        Assert.Equal(3u, NbdNetlink.ConnectedIndex([reply]));
        var withoutIndex = Netlink.ParseGeneric(Assert.Single(Netlink.SplitMessages(Bytes("14000000 2100 0000 09000000 34120000 01010000"))));
        Assert.Throws<NbdException>(() => NbdNetlink.ConnectedIndex([withoutIndex]));
    }

    [Fact]
    public void Malformed_answers_are_errors_not_guesses()
    {
        Assert.Throws<NbdException>(() => Netlink.SplitMessages(Bytes("30000000 0200 0000 07000000 00000000 feffffff")));
        var badAttribute = Assert.Single(Netlink.SplitMessages(Bytes("1c000000 2100 0000 09000000 00000000 01010000 2000 0100 03000000")));
        Assert.Throws<NbdException>(() => Netlink.ParseGeneric(badAttribute));
        var shortU32 = Netlink.ParseGeneric(Assert.Single(Netlink.SplitMessages(Bytes("1c000000 2100 0000 09000000 00000000 01010000 0600 0100 0300 0000"))));
        Assert.Throws<NbdException>(() => shortU32.Find(1)!.Value.U32());
    }

    [Theory]
    [InlineData(1L << 30, 4096L)]
    [InlineData((1L << 20) + 2048, 2048L)]
    [InlineData((1L << 20) + 512, 512L)]
    [InlineData(1000L, 512L)]
    public void Block_size_divides_the_export(long size, long expected) => Assert.Equal(expected, NbdNetlink.BlockSizeFor(size));

    [Fact]
    public void The_kernel_resolves_nlctrl_to_its_fixed_id()
    {
        using var netlink = new GenericNetlinkSocket();
        Assert.NotEqual(0u, netlink.PortId);
        Assert.Equal(Netlink.ControllerFamily, netlink.ResolveFamily("nlctrl"));
        var (status, replies) = netlink.Request(new GenericNetlinkRequest(Netlink.ControllerFamily, Netlink.ControllerGetFamily)
            .String(Netlink.ControllerAttributeFamilyName, "nlctrl"));
        Assert.Equal(0, status.Errno);
        var reply = Assert.Single(replies);
        Assert.Equal(Netlink.ControllerNewFamily, reply.Command);
        Assert.Equal("nlctrl", reply.Find(Netlink.ControllerAttributeFamilyName)!.Value.AsString());
        Assert.Equal((ushort)0x10, reply.Find(Netlink.ControllerAttributeFamilyId)!.Value.U16());
    }

    [Fact]
    public void The_kernel_answers_the_nbd_family_lookup_as_the_module_state_says()
    {
        using var netlink = new GenericNetlinkSocket();
        var (status, replies) = netlink.Request(new GenericNetlinkRequest(Netlink.ControllerFamily, Netlink.ControllerGetFamily)
            .String(Netlink.ControllerAttributeFamilyName, "nbd"));
        if (!Directory.Exists("/sys/module/nbd")) // checked after the lookup: the kernel may load the module for it
        {
            Assert.Equal(Netlink.Enoent, status.Errno);
            Assert.Empty(replies);
            Assert.Null(netlink.ResolveFamily("nbd"));
            Assert.Equal(File.Exists("/dev/nbd0") || Directory.Exists("/sys/block/nbd0"), KernelNbdAttacher.Probe().Available);
        }
        else
        {
            Assert.Equal(0, status.Errno);
            Assert.True(netlink.ResolveFamily("nbd") > Netlink.ControllerFamily);
            Assert.True(KernelNbdAttacher.Probe().Available);
        }
    }

    [Fact]
    public async Task Handshake_opens_several_connections_when_the_export_allows_it()
    {
        using var dir = new TempDirectory("restorefs-netlink");
        var data = new byte[(1 << 20) + 512];
        new Random(5).NextBytes(data);
        await using var server = new NbdServer(new NbdServerOptions { UnixSocketPath = dir.Combine("nbd.sock") }, NullLoggerFactory.Instance);
        server.AddExport("disk", new MemorySource(data));
        await server.StartAsync(CancellationToken.None);

        var (sockets, info) = await NbdClientHandshake.OpenAsync(server.SocketPath!, "disk", 3, CancellationToken.None);
        try
        {
            Assert.Equal(3, sockets.Count);
            Assert.All(sockets, s => Assert.True(s.Connected));
            Assert.Equal(data.Length, info.Size);
            Assert.True(info.CanMultiConn);
            Assert.NotEqual(0, info.TransmissionFlags & Protocol.NbdWire.TxReadOnly);
        }
        finally
        {
            sockets.ForEach(s => s.Dispose());
        }

        var refused = await Assert.ThrowsAsync<NbdException>(() => NbdClientHandshake.OpenAsync(server.SocketPath!, "missing", 3, CancellationToken.None));
        Assert.Contains("missing", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Kernel_attach_uses_netlink_or_says_why_not()
    {
        using var dir = new TempDirectory("restorefs-netlink");
        var data = new byte[8 << 20];
        new Random(9).NextBytes(data);
        await using var server = new NbdServer(new NbdServerOptions { UnixSocketPath = dir.Combine("nbd.sock") }, NullLoggerFactory.Instance);
        server.AddExport("disk", new MemorySource(data));
        await server.StartAsync(CancellationToken.None);
        var logs = new ListLoggerFactory();
        var attacher = new KernelNbdAttacher(logs.CreateLogger<KernelNbdAttacher>());
        var request = new AttachRequest(dir.Combine("unused.raw"), server.SocketPath, "disk", data.Length);

        bool family;
        using (var netlink = new GenericNetlinkSocket())
        {
            family = netlink.ResolveFamily("nbd") is not null;
        }

        if (!family && !File.Exists("/dev/nbd0"))
        {
            // No nbd module (this machine): netlink says ENOENT, the ioctl path finds no device; both reasons are told.
            var e = await Assert.ThrowsAsync<NbdException>(() => attacher.AttachAsync(request, CancellationToken.None));
            Assert.Contains("no free /dev/nbd*", e.Message, StringComparison.Ordinal);
            Assert.Contains("family 'nbd'", e.Message, StringComparison.Ordinal);
            Assert.Contains("netlink is not usable", logs.Text, StringComparison.Ordinal);
            Assert.Contains("ENOENT", logs.Text, StringComparison.Ordinal);
            Assert.Contains("using the NBD ioctls", logs.Text, StringComparison.Ordinal);
            return;
        }

        Requires.Root();
        var device = await attacher.AttachAsync(request, CancellationToken.None);
        await using (device)
        {
            Assert.Equal("nbd", device.Kind);
            Assert.Matches("^/dev/nbd[0-9]+$", device.DevicePath);
            Assert.Contains(family ? "through kernel NBD over netlink" : "through kernel NBD with ioctls", logs.Text, StringComparison.Ordinal);
            var read = new byte[data.Length];
            await using (var stream = new FileStream(device.DevicePath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
            {
                await stream.ReadExactlyAsync(read);
            }

            Assert.True(read.AsSpan().SequenceEqual(data), $"{device.DevicePath} does not read back the export");
        }

        if (family)
        {
            Assert.Contains("Detached", logs.Text, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Factory_says_which_way_it_attaches()
    {
        var logs = new ListLoggerFactory();
        var attacher = BlockDeviceAttacher.CreateDefault(logs);
        if (KernelNbdAttacher.Probe().Available)
        {
            Assert.IsNotType<LoopAttacher>(attacher);
            Assert.Contains("kernel NBD is available", logs.Text, StringComparison.Ordinal);
        }
        else
        {
            Assert.IsType<LoopAttacher>(attacher);
            Assert.Contains("no /dev/nbd* (the kernel has no NBD module loaded): attaching with a read-only loop device", logs.Text, StringComparison.Ordinal);
        }
    }
}
