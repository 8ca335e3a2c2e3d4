using System.Buffers.Binary;

namespace RestoreFs.RestoreDaemon.Disks;

/// <summary>
/// Recognises file systems and other volume contents from their superblock magic (busybox has no blkid). The names
/// are blkid's: ext2, ext3, ext4, xfs, btrfs, vfat, exfat, ntfs, iso9660, jfs, reiserfs, f2fs, swap, LVM2_member, crypto_LUKS,
/// linux_raid_member, zfs_member, BitLocker.
/// </summary>
public static class FsProbe
{
    public const string LvmMember = "LVM2_member";
    public const string Swap = "swap";
    public const string Luks = "crypto_LUKS";
    public const string RaidMember = "linux_raid_member";
    public const string ZfsMember = "zfs_member";

    public const string JournalDevice = "jbd";

    public const string BitLocker = "BitLocker";

    private static ReadOnlySpan<byte> LuksMagic => [(byte)'L', (byte)'U', (byte)'K', (byte)'S', 0xBA, 0xBE];

    private static ReadOnlySpan<byte> Luks2SecondaryMagic => [(byte)'S', (byte)'K', (byte)'U', (byte)'L', 0xBA, 0xBE];

    /// <summary>How many bytes from the start of a volume the probes look at (btrfs' superblock ends at 64 KiB + 4 KiB).</summary>
    public const int ProbeBytes = 72 * 1024;

    /// <summary>Types that hold no mountable file system of their own.</summary>
    public static bool IsContainer(string? type) => type is LvmMember or Swap or Luks or RaidMember or JournalDevice or ZfsMember or BitLocker;

    /// <summary>Why a volume of a container type cannot be mounted.</summary>
    public static string ContainerReason(string type) => type switch
    {
        LvmMember => "is an LVM physical volume (its logical volumes are under lvm/)",
        Swap => "is swap space, not a file system",
        Luks => "is encrypted (LUKS); it cannot be opened without its passphrase",
        RaidMember => "is a member of a Linux software RAID (md) array (its contents are under md/)",
        JournalDevice => "is an external ext3/ext4 journal, not a file system",
        ZfsMember => "is a member of a ZFS pool (its datasets and volumes are under zfs/)",
        BitLocker => "is encrypted with BitLocker, which files/ cannot open (attach the disk image and unlock the partition "
                     + "with its recovery password where BitLocker is supported, e.g. cryptsetup open --type bitlk --readonly)",
        _ => $"holds {type}, not a file system",
    };

    /// <summary>Detects the content of the volume starting at <paramref name="offset"/> of <paramref name="device"/>.</summary>
    /// <param name="length">The volume's length (bounds the probe); -1 = to the end of the stream.</param>
    public static string? Detect(Stream device, long offset = 0, long length = -1)
    {
        var want = length < 0 ? ProbeBytes : (int)Math.Min(ProbeBytes, length);
        var head = new byte[want];
        device.Position = offset;
        var n = device.ReadAtLeast(head, want, throwOnEndOfStream: false);
        return Detect(head.AsSpan(0, n));
    }

    /// <summary>As <see cref="Detect(Stream, long, long)"/>, and an md superblock at the end of the volume (versions 1.0
    /// and 0.90, whose members start with the array's own data) counts first, as blkid counts it: a RAID1 member would
    /// otherwise pass for the file system or LVM volume the array holds.</summary>
    public static string? DetectWithEnd(Stream device, long offset, long length) =>
        MdSuperblock.ReadEnd(device, offset, length) is not null ? RaidMember : Detect(device, offset, length);

    /// <summary>Detects the content from the first bytes of a volume (up to <see cref="ProbeBytes"/>).</summary>
    public static string? Detect(ReadOnlySpan<byte> b)
    {
        if (b.Length < 1024)
        {
            return null;
        }

        // Signatures at offset 0 first: they are the most specific.
        if (b[..4].SequenceEqual("XFSB"u8) && ValidXfs(b))
        {
            return "xfs";
        }

        if (b[..6].SequenceEqual(LuksMagic) || b[..6].SequenceEqual(Luks2SecondaryMagic))
        {
            return Luks;
        }

        for (var sector = 0; sector < 4 && (sector + 1) * 512 <= b.Length; sector++)
        {
            var label = b.Slice(sector * 512, 32);
            if (label[..8].SequenceEqual("LABELONE"u8) && label.Slice(24, 8).SequenceEqual("LVM2 001"u8)
                && BinaryPrimitives.ReadUInt64LittleEndian(label[8..]) == (ulong)sector)
            {
                return LvmMember;
            }
        }

        // BitLocker (Windows 7 and later) replaces the NTFS boot sector's OEM name with its own.
        if (b.Slice(3, 8).SequenceEqual("-FVE-FS-"u8))
        {
            return BitLocker;
        }

        if (b.Slice(3, 8).SequenceEqual("NTFS    "u8))
        {
            return "ntfs";
        }

        if (b.Slice(3, 8).SequenceEqual("EXFAT   "u8))
        {
            return "exfat";
        }

        if (b.Length >= 0x10000 + 0x48 && b.Slice(0x10000 + 0x40, 8).SequenceEqual("_BHRfS_M"u8))
        {
            return "btrfs";
        }

        if (b.Length >= 0x400 + 0x100 && BinaryPrimitives.ReadUInt16LittleEndian(b[(0x400 + 0x38)..]) == 0xEF53)
        {
            var compat = BinaryPrimitives.ReadUInt32LittleEndian(b[(0x400 + 0x5C)..]);
            var incompat = BinaryPrimitives.ReadUInt32LittleEndian(b[(0x400 + 0x60)..]);
            var roCompat = BinaryPrimitives.ReadUInt32LittleEndian(b[(0x400 + 0x64)..]);
            const uint IncompatJournalDev = 0x8;
            if ((incompat & IncompatJournalDev) != 0)
            {
                return JournalDevice;
            }

            // Features ext2/ext3 do not have: extents, 64bit, flex_bg, … or huge_file, gdt_csum, dir_nlink, extra_isize, metadata_csum.
            var ext4 = (incompat & ~0x1Fu) != 0 || (roCompat & ~0x7u) != 0;
            return ext4 ? "ext4" : (compat & 0x4) != 0 ? "ext3" : "ext2";
        }

        // Older Linux file systems (their modules load on demand): JFS at 32 KiB, ReiserFS 3.6 at 64 KiB (3.5 at 8 KiB),
        // F2FS at 1 KiB.
        if (b.Length >= 0x8004 && b.Slice(0x8000, 4).SequenceEqual("JFS1"u8))
        {
            return "jfs";
        }

        foreach (var at in new[] { 0x10000 + 52, 0x2000 + 52 })
        {
            if (b.Length >= at + 9 && (b.Slice(at, 8).SequenceEqual("ReIsErFs"u8) || b.Slice(at, 9).SequenceEqual("ReIsEr2Fs"u8)
                                       || b.Slice(at, 9).SequenceEqual("ReIsEr3Fs"u8)))
            {
                return "reiserfs";
            }
        }

        if (b.Length >= 0x404 && BinaryPrimitives.ReadUInt32LittleEndian(b[0x400..]) == 0xF2F52010)
        {
            return "f2fs";
        }

        if (b.Length >= 0x8006 && b[0x8001..0x8006].SequenceEqual("CD001"u8))
        {
            return "iso9660";
        }

        // md superblock 1.1 at 0, 1.2 at 4 KiB (0.90 and 1.0 sit at the end: DetectWithEnd).
        if (BinaryPrimitives.ReadUInt32LittleEndian(b) == 0xA92B4EFC
            || (b.Length >= 4096 + 4 && BinaryPrimitives.ReadUInt32LittleEndian(b[4096..]) == 0xA92B4EFC))
        {
            return RaidMember;
        }

        foreach (var page in new[] { 4096, 8192, 16384, 65536 })
        {
            if (b.Length >= page)
            {
                var magic = b.Slice(page - 10, 10);
                if (magic.SequenceEqual("SWAPSPACE2"u8) || magic.SequenceEqual("SWAP-SPACE"u8) || magic.SequenceEqual("S1SUSPEND\0"u8))
                {
                    return Swap;
                }
            }
        }

        if (IsFat(b))
        {
            return "vfat";
        }

        if (IsZfsLabel(b))
        {
            return ZfsMember;
        }

        return null;
    }

    /// <summary>
    /// A ZFS vdev label (the first of four: at the start of the device): its configuration is an XDR-encoded name-value
    /// list at 16 KiB, which starts with the encoding (1 = XDR), version 0, the unique-names flag, and the pair
    /// <c>version</c>; a pool member's list names its <c>pool_guid</c>.
    /// </summary>
    private static bool IsZfsLabel(ReadOnlySpan<byte> b)
    {
        const int At = 16 * 1024;
        if (b.Length < At + 1024)
        {
            return false;
        }

        var list = b[At..];
        ReadOnlySpan<byte> head = [0, 0, 0, 0, 0, 0, 0, 0, 1]; // after encoding and endianness: reserved, version 0, flags
        return list[0] == 1 && list.Slice(3, head.Length).SequenceEqual(head)
               && list.Slice(20, 11).SequenceEqual("\0\0\0\u0007version"u8)
               && list[..Math.Min(list.Length, 8192)].IndexOf("pool_guid"u8) >= 0;
    }

    private static bool ValidXfs(ReadOnlySpan<byte> b)
    {
        var blockSize = BinaryPrimitives.ReadUInt32BigEndian(b[4..]);
        return blockSize >= 512 && blockSize <= 65536 && (blockSize & (blockSize - 1)) == 0;
    }

    /// <summary>A FAT12/16/32 boot sector: a jump, a sane BIOS parameter block and the type string FAT formatters write.</summary>
    private static bool IsFat(ReadOnlySpan<byte> b)
    {
        if (b[510] != 0x55 || b[511] != 0xAA || !(b[0] == 0xEB && b[2] == 0x90 || b[0] == 0xE9))
        {
            return false;
        }

        var bytesPerSector = BinaryPrimitives.ReadUInt16LittleEndian(b[0x0B..]);
        var sectorsPerCluster = b[0x0D];
        var reserved = BinaryPrimitives.ReadUInt16LittleEndian(b[0x0E..]);
        var fats = b[0x10];
        var media = b[0x15];
        var saneBpb = bytesPerSector is 512 or 1024 or 2048 or 4096
                      && sectorsPerCluster != 0 && (sectorsPerCluster & (sectorsPerCluster - 1)) == 0
                      && reserved != 0 && fats is 1 or 2 && (media == 0xF0 || media >= 0xF8);
        var typeString = b.Slice(0x36, 3).SequenceEqual("FAT"u8) || b.Slice(0x52, 5).SequenceEqual("FAT32"u8);
        return saneBpb && typeString;
    }

    /// <summary>
    /// Mount data for a type, most wanted first: every variant replays no journal; only the character-set options
    /// differ (an older kernel or a missing nls module rejects them, and the next variant is tried).
    /// </summary>
    public static IReadOnlyList<string?> MountData(string type) => type switch
    {
        "ext2" or "ext3" or "ext4" => ["noload"],
        "xfs" => ["norecovery"],
        "btrfs" => ["rescue=nologreplay", "nologreplay"],
        "vfat" => ["utf8", null],
        "exfat" => ["iocharset=utf8", null],
        "ntfs3" or "ntfs" => ["iocharset=utf8", null],
        "iso9660" => [null],
        "f2fs" => ["norecovery", null],
        _ => [null],
    };

    /// <summary>Kernel types whose journal is replayed on a read-only mount of a writable device (no option needed).</summary>
    public static bool Replays(string kernelType) => kernelType is "ext4" or "xfs" or "btrfs";

    /// <summary>A btrfs superblock's file system id (lower-case hex), how many devices the file system has, and this
    /// device's id; null when the bytes (from the start of a volume, at least 64 KiB + 4 KiB) hold no btrfs.</summary>
    public static (string Fsid, ulong NumDevices, ulong DevId)? BtrfsIdentity(ReadOnlySpan<byte> head)
    {
        const int At = 0x10000;
        if (head.Length < At + 0x1000 || !head.Slice(At + 0x40, 8).SequenceEqual("_BHRfS_M"u8))
        {
            return null;
        }

        var sb = head.Slice(At, 0x1000);
        return (Convert.ToHexStringLower(sb.Slice(0x20, 16)), BinaryPrimitives.ReadUInt64LittleEndian(sb[0x88..]),
            BinaryPrimitives.ReadUInt64LittleEndian(sb[0xC9..]));
    }

    /// <summary>The UUID of a LUKS1/LUKS2 header (both keep it at byte 168, 40 bytes, NUL-padded), lower case; null if none.</summary>
    public static string? LuksUuid(ReadOnlySpan<byte> header)
    {
        if (header.Length < 208 || !(header[..6].SequenceEqual(LuksMagic) || header[..6].SequenceEqual(Luks2SecondaryMagic)))
        {
            return null;
        }

        var field = header.Slice(168, 40);
        var end = field.IndexOf((byte)0);
        var text = System.Text.Encoding.ASCII.GetString(end < 0 ? field : field[..end]).Trim().ToLowerInvariant();
        return text.Length == 36 && Guid.TryParse(text, out _) ? text : null;
    }

    /// <summary>Mount options that never write (no journal replay) for a type: the first of <see cref="MountData"/>.</summary>
    public static string? ReadOnlyOptions(string type) => MountData(type)[0];

    /// <summary>Kernel file systems the restore image carries but loads only for a volume that needs one.</summary>
    public static bool LoadsOnDemand(string kernelType) => kernelType is "jfs" or "reiserfs" or "f2fs";

    /// <summary>The kernel's name of the driver for a detected type.</summary>
    public static string KernelType(string type) => type switch
    {
        "ext2" or "ext3" => "ext4", // the ext4 driver mounts all three (Debian builds no separate ext2/ext3)
        "ntfs" => "ntfs3",
        _ => type,
    };
}
