using System.Buffers.Binary;
using RestoreFs.Fuse;
using RestoreFs.Fuse.Protocol;

namespace RestoreFs.Fuse.Tests;

/// <summary>Golden bytes of every struct the codec writes (layouts from the kernel's fuse.h).</summary>
public sealed class WireTests
{
    private static readonly FuseAttributes Attr = new(Ino: 7, Size: 0x1122, Mode: 0x81A4, Uid: 1000, Gid: 100,
        MTime: DateTimeOffset.FromUnixTimeSeconds(1700000000).AddTicks(5), NLink: 1, Blocks: 9, BlockSize: 4096);

    [Fact]
    public void Out_header_carries_length_negated_errno_and_unique()
    {
        var b = new byte[16];
        Wire.WriteOutHeader(b, 16, Errno.ENOENT, 0x0102030405060708);
        Assert.Equal("10000000" + "feffffff" + "0807060504030201", Convert.ToHexStringLower(b));
    }

    [Fact]
    public void Attr_layout()
    {
        var b = new byte[88];
        Wire.WriteAttr(b, Attr, 7);
        Assert.Equal(7ul, BinaryPrimitives.ReadUInt64LittleEndian(b));
        Assert.Equal(0x1122ul, BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(8)));
        Assert.Equal(9ul, BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(16)));
        Assert.Equal(1700000000L, BinaryPrimitives.ReadInt64LittleEndian(b.AsSpan(32)));
        Assert.Equal(500u, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(52)));
        Assert.Equal(0x81A4u, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(60)));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(64)));
        Assert.Equal(1000u, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(68)));
        Assert.Equal(100u, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(72)));
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(80)));
    }

    [Fact]
    public void Entry_out_and_negative_entry()
    {
        var b = new byte[128];
        Wire.WriteEntryOut(b, 42, TimeSpan.FromSeconds(3600), TimeSpan.FromMilliseconds(1500), Attr, 7);
        Assert.Equal(42ul, BinaryPrimitives.ReadUInt64LittleEndian(b));
        Assert.Equal(0ul, BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(8)));
        Assert.Equal(3600ul, BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(16)));
        Assert.Equal(1ul, BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(24)));
        Assert.Equal(500_000_000u, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(36)));
        Assert.Equal(7ul, BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(40)));

        var negative = new byte[128];
        Wire.WriteEntryOut(negative, 0, TimeSpan.FromSeconds(1), TimeSpan.Zero, null, 0);
        Assert.Equal(0ul, BinaryPrimitives.ReadUInt64LittleEndian(negative));
        Assert.Equal(1ul, BinaryPrimitives.ReadUInt64LittleEndian(negative.AsSpan(16)));
        Assert.True(negative.AsSpan(40).IndexOfAnyExcept((byte)0) < 0);
    }

    [Fact]
    public void Attr_out_open_out_and_statfs()
    {
        var attrOut = new byte[104];
        Wire.WriteAttrOut(attrOut, TimeSpan.FromSeconds(2), Attr, 7);
        Assert.Equal(2ul, BinaryPrimitives.ReadUInt64LittleEndian(attrOut));
        Assert.Equal(7ul, BinaryPrimitives.ReadUInt64LittleEndian(attrOut.AsSpan(16)));

        var open = new byte[16];
        Wire.WriteOpenOut(open, 5, OpenOutFlags.KeepCache);
        Assert.Equal("0500000000000000" + "02000000" + "00000000", Convert.ToHexStringLower(open));

        var statfs = new byte[80];
        Wire.WriteStatfs(statfs);
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32LittleEndian(statfs.AsSpan(40)));
        Assert.Equal(255u, BinaryPrimitives.ReadUInt32LittleEndian(statfs.AsSpan(44)));
    }

    [Fact]
    public void Dirent_is_padded_to_eight_and_refuses_what_does_not_fit()
    {
        var b = new byte[64];
        var n = Wire.WriteDirent(b, 9, 3, 8, "abc"u8);
        Assert.Equal(32, n);
        Assert.Equal("0900000000000000" + "0300000000000000" + "03000000" + "08000000" + "6162630000000000", Convert.ToHexStringLower(b.AsSpan(0, 32)));
        Assert.Equal(0, Wire.WriteDirent(new byte[31], 9, 3, 8, "abc"u8));
        Assert.Equal(160, Wire.DirentPlusLength(3));
    }

    [Fact]
    public void Init_negotiation_ands_the_offer_and_asks_for_one_mebibyte_reads()
    {
        var initIn = new byte[64];
        BinaryPrimitives.WriteUInt32LittleEndian(initIn, 7);
        BinaryPrimitives.WriteUInt32LittleEndian(initIn.AsSpan(4), 45);
        BinaryPrimitives.WriteUInt32LittleEndian(initIn.AsSpan(8), 131072);
        BinaryPrimitives.WriteUInt32LittleEndian(initIn.AsSpan(12), 0x73fffffb);
        var result = Wire.Negotiate(initIn);
        Assert.Equal(FuseConstants.OurMinor, result.Minor);
        Assert.Equal(0x00C46001u & 0x73fffffb, result.Flags);
        var b = new byte[64];
        Assert.Equal(64, Wire.WriteInitOut(b, result, 64));
        Assert.Equal(7u, BinaryPrimitives.ReadUInt32LittleEndian(b));
        Assert.Equal(131072u, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(8)));
        Assert.Equal(64, BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(16)));
        Assert.Equal(131072u, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(20)));
        Assert.Equal(256, BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(28)));
    }
}
