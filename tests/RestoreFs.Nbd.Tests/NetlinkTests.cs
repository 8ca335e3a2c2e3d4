using RestoreFs.Nbd;

namespace RestoreFs.Nbd.Tests;

/// <summary>The netlink encoding of kernel NBD attach: golden bytes, and real round trips with this kernel.</summary>
public sealed class NetlinkTests
{
    [Fact]
    public void Get_family_request_golden_bytes()
    {
        var message = GenericNetlink.Message(GenericNetlink.ControllerFamily, GenericNetlink.CtrlCmdGetFamily, 7,
            GenericNetlink.String(GenericNetlink.CtrlAttrFamilyName, "nbd"));
        // nlmsghdr: len 28, type 0x10 (nlctrl), flags REQUEST|ACK, seq 7, pid 0; genl: cmd 3, version 1;
        // attribute: len 8, type 2, "nbd\0".
        Assert.Equal("1c000000" + "1000" + "0500" + "07000000" + "00000000" + "03010000" + "0800" + "0200" + "6e626400",
            Convert.ToHexStringLower(message));
    }

    [Fact]
    public void Connect_attributes_nest_one_item_per_socket()
    {
        var attributes = NetlinkNbdAttacher.ConnectAttributes(1 << 20, 0x0003, [5, 6]);
        var hex = Convert.ToHexStringLower(attributes);
        Assert.StartsWith("0c00" + "0200" + "0000100000000000", hex); // SIZE_BYTES = 1 MiB
        // SOCKETS (7 | NESTED): two SOCK_ITEMs (1 | NESTED), each with SOCK_FD (1) = fd.
        Assert.EndsWith("1c00" + "0780" + "0c00" + "0180" + "0800" + "0100" + "05000000" + "0c00" + "0180" + "0800" + "0100" + "06000000", hex);
        Assert.Equal(0, attributes.Length % 4);
    }

    [Fact]
    public void Parses_errors_and_attributes()
    {
        var error = new byte[36];
        BitConverter.GetBytes(36u).CopyTo(error, 0);
        BitConverter.GetBytes((ushort)2).CopyTo(error, 4);
        BitConverter.GetBytes(-2).CopyTo(error, 16);
        Assert.Equal(-2, GenericNetlink.Parse(error).Error);

        var reply = GenericNetlink.Message(0x20, 1, 1, [.. GenericNetlink.U32(NetlinkNbdAttacher.AttrIndex, 3)]);
        var (code, attributes) = GenericNetlink.Parse(reply);
        Assert.Equal(0, code);
        Assert.Equal(3u, BitConverter.ToUInt32(attributes[NetlinkNbdAttacher.AttrIndex]));
    }

    [Fact]
    public void The_kernel_answers_family_lookups()
    {
        using var netlink = new GenericNetlinkSocket();
        // The controller resolves itself: a real round trip of our encoding and parsing.
        Assert.Equal(GenericNetlink.ControllerFamily, netlink.ResolveFamily("nlctrl"));
        var nbd = netlink.ResolveFamily("nbd");
        Assert.Equal(Directory.Exists("/sys/module/nbd"), nbd is not null);
        Assert.Equal(nbd is not null, NetlinkNbdAttacher.Available());
    }
}
