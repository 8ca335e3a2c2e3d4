using System.Buffers.Binary;

namespace RestoreFs.RestoreDaemon.Disks;

/// <summary>Recognises file systems (and LVM physical volumes) from their superblock magic: busybox has no blkid.</summary>
public static class FsProbe
{
    public const string LvmMember = "LVM2_member";
    public const string Swap = "swap";

    public static string? Detect(Stream device)
    {
        var head = new byte[72 * 1024];
        device.Position = 0;
        var n = device.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        var b = head.AsSpan(0, n);
        if (n < 4096)
        {
            return null;
        }

        if (b[..4].SequenceEqual("XFSB"u8))
        {
            return "xfs";
        }

        if (n >= 0x10000 + 0x48 && b.Slice(0x10000 + 0x40, 8).SequenceEqual("_BHRfS_M"u8))
        {
            return "btrfs";
        }

        if (BinaryPrimitives.ReadUInt16LittleEndian(b[(0x400 + 0x38)..]) == 0xEF53)
        {
            var compat = BinaryPrimitives.ReadUInt32LittleEndian(b[(0x400 + 0x5C)..]);
            var incompat = BinaryPrimitives.ReadUInt32LittleEndian(b[(0x400 + 0x60)..]);
            return (incompat & 0x2C0) != 0 ? "ext4" : (compat & 0x4) != 0 ? "ext3" : "ext2";
        }

        for (var sector = 0; sector < 4; sector++)
        {
            var label = b.Slice(sector * 512, 32);
            if (label[..8].SequenceEqual("LABELONE"u8) && label.Slice(24, 8).SequenceEqual("LVM2 001"u8))
            {
                return LvmMember;
            }
        }

        if (b.Slice(3, 8).SequenceEqual("NTFS    "u8))
        {
            return "ntfs";
        }

        if (b.Slice(3, 8).SequenceEqual("EXFAT   "u8))
        {
            return "exfat";
        }

        if (n >= 0x8006 && b[0x8001..0x8006].SequenceEqual("CD001"u8))
        {
            return "iso9660";
        }

        if (b.Slice(4096 - 10, 10).SequenceEqual("SWAPSPACE2"u8))
        {
            return Swap;
        }

        if (b[510] == 0x55 && b[511] == 0xAA && (b[0] == 0xEB || b[0] == 0xE9)
            && (b.Slice(0x36, 5).SequenceEqual("FAT12"u8) || b.Slice(0x36, 5).SequenceEqual("FAT16"u8) || b.Slice(0x52, 5).SequenceEqual("FAT32"u8)))
        {
            return "vfat";
        }

        return null;
    }

    /// <summary>Mount options that never write (no journal replay) for a type.</summary>
    public static string? ReadOnlyOptions(string type) => type switch
    {
        "ext2" or "ext3" or "ext4" => "noload",
        "xfs" => "norecovery",
        "btrfs" => "rescue=nologreplay",
        "vfat" => "utf8",
        "exfat" => "iocharset=utf8",
        "ntfs3" or "ntfs" => "iocharset=utf8",
        _ => null,
    };
}
