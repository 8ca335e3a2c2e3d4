using System.Buffers.Binary;
using System.IO.Hashing;
using RestoreFs.RestoreDaemon.Disks;

namespace RestoreFs.Fuzz;

/// <summary>
/// The restore daemon's readers of guest disks: everything on a backed-up disk is the guest's to write, so a partition
/// table, a superblock or thin pool metadata may be made to hurt. Checksummed structures (GPT headers and entries,
/// thin metadata blocks) are also tried with their checksums made right, so that mutations reach past them, as an
/// attacker who writes the disk would.
/// </summary>
public static partial class Targets
{
    /// <summary>A disk: its partition table, then what every partition (and the whole disk) is probed for.</summary>
    private static void Disk(byte[] input)
    {
        ProbeDisk(input);
        var fixedUp = WithGptChecksums(input);
        if (!fixedUp.AsSpan().SequenceEqual(input))
        {
            ProbeDisk(fixedUp);
        }
    }

    private static void ProbeDisk(byte[] disk)
    {
        using var stream = new MemoryStream(disk, writable: false);
        IReadOnlyList<Partition> partitions = [];
        try
        {
            var table = PartitionTable.ReadTable(stream, disk.Length);
            partitions = table.Partitions;
            if (table.Scheme is not ("gpt" or "mbr" or "none"))
            {
                throw new FuzzInvariantException($"scheme '{table.Scheme}'");
            }
        }
        catch (InvalidDataException)
        {
            // A protective MBR without a valid GPT: named, and the disk is still probed whole.
        }

        var numbers = new HashSet<int>();
        foreach (var p in partitions)
        {
            if (p.Number is < 1 or > 256 || !numbers.Add(p.Number))
            {
                throw new FuzzInvariantException($"partition number {p.Number} (out of range or twice)");
            }

            if (p.Offset < 0 || p.Length <= 0 || p.Offset % 512 != 0 || p.Offset > disk.Length - p.Length)
            {
                throw new FuzzInvariantException($"partition {p.Number} at {p.Offset}, {p.Length} bytes, on a disk of {disk.Length}");
            }

            _ = p.NoFileSystemKind;
        }

        ProbeVolume(stream, 0, disk.Length);
        foreach (var p in partitions)
        {
            ProbeVolume(stream, p.Offset, p.Length);
        }
    }

    private static void ProbeVolume(Stream device, long offset, long length)
    {
        var type = FsProbe.DetectWithEnd(device, offset, length);
        _ = FsProbe.Detect(device, offset, length);
        if (type is not null)
        {
            _ = FsProbe.KernelType(type);
            _ = FsProbe.MountData(type);
            if (FsProbe.IsContainer(type))
            {
                _ = FsProbe.ContainerReason(type);
            }
        }

        if (MdSuperblock.Read(device, offset, length) is { } sb)
        {
            CheckMd(sb);
        }

        var head = new byte[(int)Math.Min(FsProbe.ProbeBytes, length)];
        device.Position = offset;
        var n = device.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        if (FsProbe.BtrfsIdentity(head.AsSpan(0, n)) is { } btrfs && btrfs.Fsid.Length != 32)
        {
            throw new FuzzInvariantException($"btrfs fsid '{btrfs.Fsid}'");
        }

        if (FsProbe.LuksUuid(head.AsSpan(0, n)) is { } uuid && !Guid.TryParse(uuid, out _))
        {
            throw new FuzzInvariantException($"LUKS UUID '{uuid}'");
        }
    }

    private static void CheckMd(MdSuperblock sb)
    {
        if (sb.Uuid.Length != 32 || sb.Version is not ("0.90" or "1.0" or "1.1" or "1.2"))
        {
            throw new FuzzInvariantException($"md superblock {sb.Version} with UUID '{sb.Uuid}'");
        }

        // The name becomes a directory of files/: never empty, never . or .., only safe characters.
        var name = sb.DisplayName;
        if (name.Length == 0 || name is "." or ".." || name.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.')))
        {
            throw new FuzzInvariantException($"md array directory name '{name}'");
        }

        _ = sb.LevelName;
        _ = sb.Personality;
    }

    /// <summary>The disk with every GPT header it has (primary and backup, 512- and 4096-byte sectors) given the
    /// right CRCs for its entries and itself.</summary>
    private static byte[] WithGptChecksums(byte[] input)
    {
        var disk = (byte[])input.Clone();
        foreach (var sectorSize in new[] { 512, 4096 })
        {
            var lastLba = disk.Length / sectorSize - 1;
            foreach (var lba in new long[] { 1, lastLba })
            {
                var at = lba * sectorSize;
                if (lba < 1 || at + 92 > disk.Length || !disk.AsSpan((int)at, 8).SequenceEqual("EFI PART"u8))
                {
                    continue;
                }

                var header = disk.AsSpan((int)at, (int)Math.Min(sectorSize, disk.Length - at));
                var count = BinaryPrimitives.ReadUInt32LittleEndian(header[80..]);
                var entrySize = BinaryPrimitives.ReadUInt32LittleEndian(header[84..]);
                var entriesLba = BinaryPrimitives.ReadUInt64LittleEndian(header[72..]);
                var bytes = (long)count * entrySize;
                if (bytes <= 1 << 20 && entriesLba < (ulong)(disk.Length / sectorSize) && (long)entriesLba * sectorSize + bytes <= disk.Length)
                {
                    var crc = Crc32.HashToUInt32(disk.AsSpan((int)((long)entriesLba * sectorSize), (int)bytes));
                    BinaryPrimitives.WriteUInt32LittleEndian(header[88..], crc);
                }

                var headerSize = (int)Math.Clamp(BinaryPrimitives.ReadUInt32LittleEndian(header[12..]), 92u, (uint)header.Length);
                header[16..20].Clear();
                BinaryPrimitives.WriteUInt32LittleEndian(header[16..], Crc32.HashToUInt32(header[..headerSize]));
            }
        }

        return disk;
    }

    /// <summary>One 4 KiB block put where each md superblock version lies in a member, saying (for 1.x) the sector it
    /// is at, as a real one does.</summary>
    private static void MdTarget(byte[] input)
    {
        const int Member = 256 * 1024;
        var (v10, v090) = MdSuperblock.EndOffsets(Member);
        foreach (var (at, version) in new[] { (0L, "1.1"), (4096L, "1.2"), (v10, "1.0"), (v090, "0.90") })
        {
            var member = new byte[Member];
            var block = input.AsSpan(0, Math.Min(input.Length, 4096));
            block.CopyTo(member.AsSpan((int)at));
            if (version != "0.90" && block.Length >= 152)
            {
                BinaryPrimitives.WriteUInt64LittleEndian(member.AsSpan((int)at + 144), (ulong)(at / 512));
            }

            using var device = new MemoryStream(member, writable: false);
            foreach (var sb in new[] { MdSuperblock.Read(device, 0, Member), MdSuperblock.ReadEnd(device, 0, Member) })
            {
                if (sb is not null)
                {
                    CheckMd(sb);
                }
            }

            _ = FsProbe.DetectWithEnd(device, 0, Member);
            // The same member as a partition of a larger disk: offsets are relative to the volume.
            var disk = new byte[Member + 8192];
            member.CopyTo(disk, 8192);
            using var larger = new MemoryStream(disk, writable: false);
            if (MdSuperblock.Read(larger, 8192, Member) is { } inPartition)
            {
                CheckMd(inPartition);
            }
        }
    }

    /// <summary>Thin pool metadata (whole 4 KiB blocks), as found and with every block's checksum made right: each
    /// device's runs and where they would lie on a data LV of two segments.</summary>
    private static void ThinTarget(byte[] input)
    {
        var blocks = input.Length / ThinMetadata.BlockSize;
        var metadata = input.AsSpan(0, blocks * ThinMetadata.BlockSize).ToArray();
        ReadThin(metadata);
        for (var b = 0; b < blocks; b++)
        {
            var block = metadata.AsSpan(b * ThinMetadata.BlockSize, ThinMetadata.BlockSize);
            var crc = ThinMetadata.Crc32CRaw(block[4..]) ^ (b == 0 ? 160774u : 121107u);
            BinaryPrimitives.WriteUInt32LittleEndian(block, crc);
        }

        ReadThin(metadata);
    }

    private static void ReadThin(byte[] metadata)
    {
        ThinMetadata md;
        try
        {
            md = ThinMetadata.Open(n => metadata.AsSpan((int)(n * ThinMetadata.BlockSize), ThinMetadata.BlockSize).ToArray(), metadata.Length);
        }
        catch (ThinMetadataException)
        {
            return;
        }

        var chunk = (long)md.DataBlockSectors * 512;
        foreach (var device in new ulong[] { 0, 1, 2, 3, 7 })
        {
            foreach (var virtualBlocks in new long[] { 1 << 20, 15 })
            {
                List<ThinRun>? runs;
                try
                {
                    runs = md.Runs(device, virtualBlocks);
                }
                catch (ThinMetadataException)
                {
                    continue;
                }

                if (runs is null)
                {
                    continue;
                }

                var end = -1L;
                foreach (var r in runs)
                {
                    if (r.Count < 1 || r.Virtual <= end || r.Virtual + r.Count > virtualBlocks || r.Data < 0)
                    {
                        throw new FuzzInvariantException($"thin device {device}: run {r} after block {end}");
                    }

                    end = r.Virtual + r.Count - 1;
                }

                // The pool's own block size, and the largest the format allows (1 GiB): block numbers are 40 bits.
                foreach (var blockBytes in new[] { chunk, 1L << 30 })
                {
                    CheckThinPieces(device, runs, blockBytes, virtualBlocks * blockBytes);
                }
            }
        }
    }

    private static void CheckThinPieces(ulong device, List<ThinRun> runs, long chunk, long size)
    {
        IReadOnlyList<(long, string, long, long)> data = [(0L, "/dev/a", 1L << 20, 3000 * chunk), (3000 * chunk, "/dev/b", 0L, 3000 * chunk)];
        try
        {
            var at = 0L;
            foreach (var (offset, _, deviceOffset, length) in DiskCatalog.ThinPieces(device, runs, chunk, size, data))
            {
                if (offset < at || length <= 0 || offset + length > size || deviceOffset < 0)
                {
                    throw new FuzzInvariantException($"thin device {device}: piece at {offset}, {length} bytes (device offset {deviceOffset})");
                }

                at = offset + length;
            }
        }
        catch (ThinMetadataException)
        {
            // A data block past the data LV: named.
        }
    }
}
