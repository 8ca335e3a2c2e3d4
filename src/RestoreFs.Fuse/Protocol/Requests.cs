using System.Buffers.Binary;

namespace RestoreFs.Fuse.Protocol;

/// <summary>fuse_read_in (READ, READDIR, READDIRPLUS): 40 bytes.</summary>
public readonly record struct ReadIn(ulong Fh, long Offset, uint Size);

/// <summary>fuse_release_in (RELEASE, RELEASEDIR): 24 bytes.</summary>
public readonly record struct ReleaseIn(ulong Fh);

/// <summary>fuse_lseek_in: 24 bytes.</summary>
public readonly record struct LseekIn(ulong Fh, long Offset, uint Whence);

/// <summary>fuse_getxattr_in + name: 8 bytes and a NUL-terminated name (GETXATTR), or 8 bytes (LISTXATTR).</summary>
public readonly record struct XattrIn(uint Size, byte[] Name);

/// <summary>
/// Decodes the argument of each request a read-only server answers into a typed value, checking the length the
/// kernel's struct has (protocol 7.28 and newer). A request that is too short, or a name without its NUL, fails to
/// decode: the caller answers EIO and the request never reaches a node.
/// </summary>
public static class Requests
{
    /// <summary>Bytes each opcode's fixed argument has; -1 for opcodes without a fixed part we read.</summary>
    public static int FixedLength(FuseOpcode op) => op switch
    {
        FuseOpcode.Forget => 8,
        FuseOpcode.GetAttr => 16,
        FuseOpcode.Open or FuseOpcode.OpenDir => 8,
        FuseOpcode.Read or FuseOpcode.ReadDir or FuseOpcode.ReadDirPlus => 40,
        FuseOpcode.Release or FuseOpcode.ReleaseDir => 24,
        FuseOpcode.GetXattr or FuseOpcode.ListXattr => 8,
        FuseOpcode.Access => 8,
        FuseOpcode.Interrupt => 8,
        FuseOpcode.BatchForget => 8,
        FuseOpcode.Lseek => 24,
        FuseOpcode.Flush => 24,
        FuseOpcode.Fsync or FuseOpcode.FsyncDir => 16,
        FuseOpcode.SyncFs => 8,
        _ => 0,
    };

    /// <summary>Whether the kernel waits for an answer to this opcode.</summary>
    public static bool ExpectsReply(FuseOpcode op) =>
        op is not (FuseOpcode.Forget or FuseOpcode.BatchForget or FuseOpcode.Interrupt or FuseOpcode.NotifyReply);

    /// <summary>A name argument: the bytes before the first NUL, which must be present; empty names are refused.</summary>
    public static bool TryName(ReadOnlySpan<byte> arg, out byte[] name)
    {
        var end = arg.IndexOf((byte)0);
        if (end <= 0)
        {
            name = [];
            return false;
        }

        name = arg[..end].ToArray();
        return true;
    }

    public static bool TryRead(ReadOnlySpan<byte> arg, out ReadIn value)
    {
        value = default;
        if (arg.Length < 40)
        {
            return false;
        }

        value = new ReadIn(BinaryPrimitives.ReadUInt64LittleEndian(arg), BinaryPrimitives.ReadInt64LittleEndian(arg[8..]),
            BinaryPrimitives.ReadUInt32LittleEndian(arg[16..]));
        return true;
    }

    public static bool TryRelease(ReadOnlySpan<byte> arg, out ReleaseIn value)
    {
        value = default;
        if (arg.Length < 24)
        {
            return false;
        }

        value = new ReleaseIn(BinaryPrimitives.ReadUInt64LittleEndian(arg));
        return true;
    }

    public static bool TryLseek(ReadOnlySpan<byte> arg, out LseekIn value)
    {
        value = default;
        if (arg.Length < 24)
        {
            return false;
        }

        value = new LseekIn(BinaryPrimitives.ReadUInt64LittleEndian(arg), BinaryPrimitives.ReadInt64LittleEndian(arg[8..]),
            BinaryPrimitives.ReadUInt32LittleEndian(arg[16..]));
        return true;
    }

    public static bool TryGetXattr(ReadOnlySpan<byte> arg, out XattrIn value)
    {
        value = default;
        if (arg.Length < 8 || !TryName(arg[8..], out var name))
        {
            return false;
        }

        value = new XattrIn(BinaryPrimitives.ReadUInt32LittleEndian(arg), name);
        return true;
    }

    public static bool TryListXattr(ReadOnlySpan<byte> arg, out XattrIn value)
    {
        value = default;
        if (arg.Length < 8)
        {
            return false;
        }

        value = new XattrIn(BinaryPrimitives.ReadUInt32LittleEndian(arg), []);
        return true;
    }

    /// <summary>open_in.flags, opendir_in.flags, access_in.mask, interrupt_in.unique's low word: the first u32/u64.</summary>
    public static bool TryU32(ReadOnlySpan<byte> arg, out uint value)
    {
        value = 0;
        if (arg.Length < 4)
        {
            return false;
        }

        value = BinaryPrimitives.ReadUInt32LittleEndian(arg);
        return true;
    }

    public static bool TryU64(ReadOnlySpan<byte> arg, out ulong value)
    {
        value = 0;
        if (arg.Length < 8)
        {
            return false;
        }

        value = BinaryPrimitives.ReadUInt64LittleEndian(arg);
        return true;
    }

    /// <summary>BATCH_FORGET: count, then count × (nodeid, nlookup); a count larger than the request is refused.</summary>
    public static bool TryBatchForget(ReadOnlySpan<byte> arg, out (ulong Node, ulong Count)[] items)
    {
        items = [];
        if (arg.Length < 8)
        {
            return false;
        }

        var count = BinaryPrimitives.ReadUInt32LittleEndian(arg);
        if (count > (arg.Length - 8) / 16)
        {
            return false;
        }

        items = new (ulong, ulong)[count];
        for (var i = 0; i < count; i++)
        {
            var item = arg[(8 + (i * 16))..];
            items[i] = (BinaryPrimitives.ReadUInt64LittleEndian(item), BinaryPrimitives.ReadUInt64LittleEndian(item[8..]));
        }

        return true;
    }
}
