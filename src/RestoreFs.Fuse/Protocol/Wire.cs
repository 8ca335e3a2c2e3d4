using System.Buffers.Binary;

namespace RestoreFs.Fuse.Protocol;

/// <summary>The fixed part of every request (fuse_in_header, 40 bytes).</summary>
public readonly record struct InHeader(uint Length, FuseOpcode Opcode, ulong Unique, ulong NodeId, uint Uid, uint Gid, uint Pid)
{
    public static InHeader Parse(ReadOnlySpan<byte> b) => new(
        BinaryPrimitives.ReadUInt32LittleEndian(b),
        (FuseOpcode)BinaryPrimitives.ReadUInt32LittleEndian(b[4..]),
        BinaryPrimitives.ReadUInt64LittleEndian(b[8..]),
        BinaryPrimitives.ReadUInt64LittleEndian(b[16..]),
        BinaryPrimitives.ReadUInt32LittleEndian(b[24..]),
        BinaryPrimitives.ReadUInt32LittleEndian(b[28..]),
        BinaryPrimitives.ReadUInt32LittleEndian(b[32..]));
}

/// <summary>The negotiated result of INIT.</summary>
public readonly record struct InitResult(uint KernelMinor, uint Minor, uint Flags, uint MaxReadahead);

/// <summary>Encoders of the structs a read-only server writes, each into a span at offset 0.</summary>
public static class Wire
{
    public static void WriteOutHeader(Span<byte> b, int length, int errno, ulong unique)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(b, (uint)length);
        BinaryPrimitives.WriteInt32LittleEndian(b[4..], -errno);
        BinaryPrimitives.WriteUInt64LittleEndian(b[8..], unique);
    }

    public static void WriteAttr(Span<byte> b, FuseAttributes a, ulong ino)
    {
        b[..FuseConstants.AttrSize].Clear();
        var atime = a.ATime ?? a.MTime;
        var ctime = a.CTime ?? a.MTime;
        BinaryPrimitives.WriteUInt64LittleEndian(b, ino);
        BinaryPrimitives.WriteUInt64LittleEndian(b[8..], a.Size);
        BinaryPrimitives.WriteUInt64LittleEndian(b[16..], a.Blocks);
        BinaryPrimitives.WriteInt64LittleEndian(b[24..], atime.Seconds);
        BinaryPrimitives.WriteInt64LittleEndian(b[32..], a.MTime.Seconds);
        BinaryPrimitives.WriteInt64LittleEndian(b[40..], ctime.Seconds);
        BinaryPrimitives.WriteUInt32LittleEndian(b[48..], atime.Nanoseconds);
        BinaryPrimitives.WriteUInt32LittleEndian(b[52..], a.MTime.Nanoseconds);
        BinaryPrimitives.WriteUInt32LittleEndian(b[56..], ctime.Nanoseconds);
        BinaryPrimitives.WriteUInt32LittleEndian(b[60..], a.Mode);
        BinaryPrimitives.WriteUInt32LittleEndian(b[64..], Math.Max(1u, a.NLink));
        BinaryPrimitives.WriteUInt32LittleEndian(b[68..], a.Uid);
        BinaryPrimitives.WriteUInt32LittleEndian(b[72..], a.Gid);
        BinaryPrimitives.WriteUInt32LittleEndian(b[76..], a.RDev);
        BinaryPrimitives.WriteUInt32LittleEndian(b[80..], a.BlockSize == 0 ? 4096 : a.BlockSize);
    }

    private static (ulong Seconds, uint Nanos) Split(TimeSpan t)
    {
        if (t <= TimeSpan.Zero)
        {
            return (0, 0);
        }

        return ((ulong)(t.Ticks / TimeSpan.TicksPerSecond), (uint)(t.Ticks % TimeSpan.TicksPerSecond * 100));
    }

    /// <summary>fuse_entry_out; nodeid 0 with a timeout is a cached negative entry.</summary>
    public static void WriteEntryOut(Span<byte> b, ulong nodeId, TimeSpan entryValid, TimeSpan attrValid, FuseAttributes? attr, ulong ino)
    {
        b[..FuseConstants.EntryOutSize].Clear();
        var (es, en) = Split(entryValid);
        var (as_, an) = Split(attrValid);
        BinaryPrimitives.WriteUInt64LittleEndian(b, nodeId);
        BinaryPrimitives.WriteUInt64LittleEndian(b[16..], es);
        BinaryPrimitives.WriteUInt64LittleEndian(b[24..], as_);
        BinaryPrimitives.WriteUInt32LittleEndian(b[32..], en);
        BinaryPrimitives.WriteUInt32LittleEndian(b[36..], an);
        if (attr is not null)
        {
            WriteAttr(b[40..], attr, ino);
        }
    }

    public static void WriteAttrOut(Span<byte> b, TimeSpan attrValid, FuseAttributes attr, ulong ino)
    {
        b[..FuseConstants.AttrOutSize].Clear();
        var (s, n) = Split(attrValid);
        BinaryPrimitives.WriteUInt64LittleEndian(b, s);
        BinaryPrimitives.WriteUInt32LittleEndian(b[8..], n);
        WriteAttr(b[16..], attr, ino);
    }

    public static void WriteOpenOut(Span<byte> b, ulong fh, OpenOutFlags flags)
    {
        b[..FuseConstants.OpenOutSize].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(b, fh);
        BinaryPrimitives.WriteUInt32LittleEndian(b[8..], (uint)flags);
    }

    /// <summary>Negotiates INIT from the kernel's fuse_init_in; returns the reply body length (0 on refusal).</summary>
    public static InitResult Negotiate(ReadOnlySpan<byte> initIn)
    {
        var minor = BinaryPrimitives.ReadUInt32LittleEndian(initIn[4..]);
        var readahead = BinaryPrimitives.ReadUInt32LittleEndian(initIn[8..]);
        var offered = BinaryPrimitives.ReadUInt32LittleEndian(initIn[12..]);
        return new InitResult(minor, Math.Min(minor, FuseConstants.OurMinor), offered & FuseConstants.RequestedFlags, readahead);
    }

    public static int WriteInitOut(Span<byte> b, InitResult r, ushort maxBackground)
    {
        b[..FuseConstants.InitOutSize].Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(b, FuseConstants.KernelMajor);
        BinaryPrimitives.WriteUInt32LittleEndian(b[4..], r.Minor);
        BinaryPrimitives.WriteUInt32LittleEndian(b[8..], r.MaxReadahead);
        BinaryPrimitives.WriteUInt32LittleEndian(b[12..], r.Flags);
        BinaryPrimitives.WriteUInt16LittleEndian(b[16..], maxBackground);
        BinaryPrimitives.WriteUInt16LittleEndian(b[18..], (ushort)(maxBackground * 3 / 4));
        BinaryPrimitives.WriteUInt32LittleEndian(b[20..], FuseConstants.MaxWrite);
        BinaryPrimitives.WriteUInt32LittleEndian(b[24..], 1);
        BinaryPrimitives.WriteUInt16LittleEndian(b[28..], FuseConstants.MaxPages);
        return r.Minor <= 22 ? 24 : FuseConstants.InitOutSize;
    }

    public static void WriteStatfs(Span<byte> b)
    {
        b[..FuseConstants.KstatfsSize].Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(b[40..], 4096);
        BinaryPrimitives.WriteUInt32LittleEndian(b[44..], 255);
        BinaryPrimitives.WriteUInt32LittleEndian(b[48..], 4096);
    }

    public static int Align8(int n) => (n + 7) & ~7;

    /// <summary>Appends a fuse_dirent if it fits; returns the bytes written (0 when it does not fit).</summary>
    public static int WriteDirent(Span<byte> b, ulong ino, ulong cookie, uint type, ReadOnlySpan<byte> name)
    {
        var length = Align8(24 + name.Length);
        if (length > b.Length)
        {
            return 0;
        }

        b[..length].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(b, ino);
        BinaryPrimitives.WriteUInt64LittleEndian(b[8..], cookie);
        BinaryPrimitives.WriteUInt32LittleEndian(b[16..], (uint)name.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(b[20..], type);
        name.CopyTo(b[24..]);
        return length;
    }

    public static int DirentPlusLength(int nameLength) => Align8(FuseConstants.EntryOutSize + 24 + nameLength);
}
