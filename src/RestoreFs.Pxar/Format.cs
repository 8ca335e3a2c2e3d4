using System.Buffers.Binary;
using System.Numerics;

namespace RestoreFs.Pxar;

/// <summary>Item types and limits of the pxar format (64-bit SipHash-2-4 values of fixed marker strings).</summary>
public static class PxarFormat
{
    public const ulong FormatVersion = 0x730f6c75df16a40d;
    public const ulong Prelude = 0xe309d79d9f7b771b;
    public const ulong Entry = 0xd5956474e588acef;
    public const ulong EntryV1 = 0x11da850a1c1cceff;
    public const ulong Filename = 0x16701121063917b3;
    public const ulong Symlink = 0x27f971e7dbf5dc5f;
    public const ulong Device = 0x9fc9e906586d5ce9;
    public const ulong Xattr = 0x0dab0229b57dcd03;
    public const ulong AclUser = 0x2ce8540a457d55b8;
    public const ulong AclGroup = 0x136e3eceb04c03ab;
    public const ulong AclGroupObj = 0x10868031e9582876;
    public const ulong AclDefault = 0xbbbb13415a6896f5;
    public const ulong AclDefaultUser = 0xc89357b40532cd1f;
    public const ulong AclDefaultGroup = 0xf90a8a5816038ffe;
    public const ulong Fcaps = 0x2da9dd9db5f7fb67;
    public const ulong QuotaProjectId = 0xe07540e82f7d1cbb;
    public const ulong Hardlink = 0x51269c8422bd7275;
    public const ulong Payload = 0x28147a1b0b7c1a25;
    public const ulong PayloadRef = 0x419d3d6bc4ba977e;
    public const ulong Goodbye = 0x2fec4fa642d5731d;
    public const ulong GoodbyeTailMarker = 0xef5eed5b753e1555;
    public const ulong PayloadStartMarker = 0x834c68c2194a4ed2;
    public const ulong PayloadTailMarker = 0x6c72b78b984c81b5;

    public const int HeaderSize = 16;
    public const int StatSize = 40;
    public const int GoodbyeRecordSize = 24;

    /// <summary>Largest content of a FILENAME or SYMLINK item (4096 bytes + NUL).</summary>
    public const int MaxPathContent = 4097;

    /// <summary>Largest content of a HARDLINK item (u64 + path + NUL).</summary>
    public const int MaxHardlinkContent = 4105;

    /// <summary>Largest content of an XATTR or FCAPS item (255-byte name + 64 KiB value).</summary>
    public const int MaxXattrContent = 65791;

    /// <summary>SipHash-2-4 keys: the first two 64-bit halves of SHA-1("PROXMOX ARCHIVE FORMAT").</summary>
    public const ulong HashKey0 = 0x83ac3f1cfbb450db;
    public const ulong HashKey1 = 0xaa4f1b6879369fbd;

    /// <summary>The hash a goodbye record keeps for a child name (and the item type values are of their marker strings).</summary>
    public static ulong HashName(ReadOnlySpan<byte> name) => SipHash24(HashKey0, HashKey1, name);

    public static string ItemName(ulong type) => type switch
    {
        FormatVersion => "FORMAT_VERSION",
        Prelude => "PRELUDE",
        Entry => "ENTRY",
        EntryV1 => "ENTRY_V1",
        Filename => "FILENAME",
        Symlink => "SYMLINK",
        Device => "DEVICE",
        Xattr => "XATTR",
        AclUser => "ACL_USER",
        AclGroup => "ACL_GROUP",
        AclGroupObj => "ACL_GROUP_OBJ",
        AclDefault => "ACL_DEFAULT",
        AclDefaultUser => "ACL_DEFAULT_USER",
        AclDefaultGroup => "ACL_DEFAULT_GROUP",
        Fcaps => "FCAPS",
        QuotaProjectId => "QUOTA_PROJID",
        Hardlink => "HARDLINK",
        Payload => "PAYLOAD",
        PayloadRef => "PAYLOAD_REF",
        Goodbye => "GOODBYE",
        PayloadStartMarker => "PAYLOAD_START_MARKER",
        PayloadTailMarker => "PAYLOAD_TAIL_MARKER",
        _ => $"unknown item {type:x16}",
    };

    /// <summary>Standard SipHash-2-4 with a 64-bit result.</summary>
    public static ulong SipHash24(ulong k0, ulong k1, ReadOnlySpan<byte> data)
    {
        var v0 = k0 ^ 0x736f6d6570736575UL;
        var v1 = k1 ^ 0x646f72616e646f6dUL;
        var v2 = k0 ^ 0x6c7967656e657261UL;
        var v3 = k1 ^ 0x7465646279746573UL;
        var blocks = data.Length / 8;
        for (var i = 0; i < blocks; i++)
        {
            var m = BinaryPrimitives.ReadUInt64LittleEndian(data[(i * 8)..]);
            v3 ^= m;
            Round(ref v0, ref v1, ref v2, ref v3);
            Round(ref v0, ref v1, ref v2, ref v3);
            v0 ^= m;
        }

        var last = (ulong)(data.Length & 0xff) << 56;
        var tail = data[(blocks * 8)..];
        for (var i = 0; i < tail.Length; i++)
        {
            last |= (ulong)tail[i] << (8 * i);
        }

        v3 ^= last;
        Round(ref v0, ref v1, ref v2, ref v3);
        Round(ref v0, ref v1, ref v2, ref v3);
        v0 ^= last;
        v2 ^= 0xff;
        for (var i = 0; i < 4; i++)
        {
            Round(ref v0, ref v1, ref v2, ref v3);
        }

        return v0 ^ v1 ^ v2 ^ v3;
    }

    private static void Round(ref ulong v0, ref ulong v1, ref ulong v2, ref ulong v3)
    {
        v0 += v1;
        v1 = BitOperations.RotateLeft(v1, 13);
        v1 ^= v0;
        v0 = BitOperations.RotateLeft(v0, 32);
        v2 += v3;
        v3 = BitOperations.RotateLeft(v3, 16);
        v3 ^= v2;
        v0 += v3;
        v3 = BitOperations.RotateLeft(v3, 21);
        v3 ^= v0;
        v2 += v1;
        v1 = BitOperations.RotateLeft(v1, 17);
        v1 ^= v2;
        v2 = BitOperations.RotateLeft(v2, 32);
    }
}

/// <summary>A malformed pxar archive: names the archive, the stream offset and what is wrong.</summary>
public class PxarException : Exception
{
    public PxarException(string message, string archive, long offset, Exception? inner = null)
        : base($"{message}; archive {archive} offset {offset}", inner)
    {
        Archive = archive;
        Offset = offset;
    }

    public string Archive { get; }

    public long Offset { get; }
}
