using System.Buffers.Binary;
using System.IO.Hashing;

namespace RestoreFs.RestoreDaemon.Disks;

/// <param name="Number">As Linux numbers it: GPT entry index + 1; MBR primaries 1–4, logical partitions from 5.</param>
public sealed record Partition(int Number, long Offset, long Length, string Type);

/// <summary>Reads GPT (primary, else the backup at the end) and MBR tables with extended/logical partitions.</summary>
public static class PartitionTable
{
    private const int Sector = 512;

    /// <param name="size">The disk's size (a block device's stream reports length 0).</param>
    public static IReadOnlyList<Partition> Read(Stream disk, long size)
    {
        var mbr = ReadAt(disk, 0, Sector, size);
        if (mbr.Length < Sector || mbr[510] != 0x55 || mbr[511] != 0xAA)
        {
            return [];
        }

        var hasProtective = Enumerable.Range(0, 4).Any(i => mbr[446 + i * 16 + 4] == 0xEE);
        if (hasProtective)
        {
            return ReadGpt(disk, 1, size) ?? ReadGpt(disk, size / Sector - 1, size)
                ?? throw new InvalidDataException("protective MBR but neither the primary nor the backup GPT header is valid");
        }

        // A FAT or NTFS boot sector also ends in 55 AA: only accept plausible partition entries.
        var result = new List<Partition>();
        for (var i = 0; i < 4; i++)
        {
            var e = mbr.AsSpan(446 + i * 16, 16);
            var status = e[0];
            var type = e[4];
            var start = BinaryPrimitives.ReadUInt32LittleEndian(e[8..]);
            var count = BinaryPrimitives.ReadUInt32LittleEndian(e[12..]);
            if (type == 0 || count == 0)
            {
                continue;
            }

            if ((status != 0 && status != 0x80) || (long)(start + (long)count) * Sector > size + Sector)
            {
                return [];
            }

            if (type is 0x05 or 0x0F or 0x85)
            {
                ReadLogical(disk, start, result, size);
            }
            else
            {
                result.Add(new Partition(i + 1, (long)start * Sector, (long)count * Sector, $"mbr:{type:x2}"));
            }
        }

        return result.OrderBy(p => p.Number).ToList();
    }

    private static void ReadLogical(Stream disk, long extendedStart, List<Partition> result, long size)
    {
        var number = 5;
        var ebr = extendedStart;
        var seen = new HashSet<long>();
        while (ebr != 0 && seen.Add(ebr) && seen.Count < 256)
        {
            var sector = ReadAt(disk, ebr * Sector, Sector, size);
            if (sector.Length < Sector || sector[510] != 0x55 || sector[511] != 0xAA)
            {
                break;
            }

            var first = sector.AsSpan(446, 16);
            var next = sector.AsSpan(462, 16);
            var count = BinaryPrimitives.ReadUInt32LittleEndian(first[12..]);
            if (first[4] != 0 && count != 0)
            {
                var start = ebr + BinaryPrimitives.ReadUInt32LittleEndian(first[8..]);
                if ((start + count) * Sector <= size)
                {
                    result.Add(new Partition(number, start * Sector, (long)count * Sector, $"mbr:{first[4]:x2}"));
                }

                number++;
            }

            var link = BinaryPrimitives.ReadUInt32LittleEndian(next[8..]);
            ebr = next[4] is 0x05 or 0x0F or 0x85 && link != 0 ? extendedStart + link : 0;
        }
    }

    private static List<Partition>? ReadGpt(Stream disk, long lba, long size)
    {
        if (lba <= 0)
        {
            return null;
        }

        var header = ReadAt(disk, lba * Sector, Sector, size);
        if (header.Length < 92 || !header.AsSpan(0, 8).SequenceEqual("EFI PART"u8))
        {
            return null;
        }

        var headerSize = (int)BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(12));
        if (headerSize < 92 || headerSize > Sector)
        {
            return null;
        }

        var check = header.AsSpan(0, headerSize).ToArray();
        var storedCrc = BinaryPrimitives.ReadUInt32LittleEndian(check.AsSpan(16));
        check.AsSpan(16, 4).Clear();
        if (Crc32.HashToUInt32(check) != storedCrc)
        {
            return null;
        }

        var entriesLba = (long)BinaryPrimitives.ReadUInt64LittleEndian(header.AsSpan(72));
        var count = (int)BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(80));
        var entrySize = (int)BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(84));
        var entriesCrc = BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(88));
        if (count > 4096 || entrySize < 128 || entrySize > 4096)
        {
            return null;
        }

        var entries = ReadAt(disk, entriesLba * Sector, count * entrySize, size);
        if (entries.Length != count * entrySize || Crc32.HashToUInt32(entries) != entriesCrc)
        {
            return null;
        }

        var result = new List<Partition>();
        for (var i = 0; i < count; i++)
        {
            var e = entries.AsSpan(i * entrySize, entrySize);
            if (e[..16].IndexOfAnyExcept((byte)0) < 0)
            {
                continue;
            }

            var first = (long)BinaryPrimitives.ReadUInt64LittleEndian(e[32..]);
            var last = (long)BinaryPrimitives.ReadUInt64LittleEndian(e[40..]);
            if (last < first || (last + 1) * Sector > size)
            {
                continue;
            }

            result.Add(new Partition(i + 1, first * Sector, (last - first + 1) * Sector, "gpt:" + new Guid(e[..16]).ToString()));
        }

        return result;
    }

    private static byte[] ReadAt(Stream disk, long offset, int length, long size)
    {
        if (offset < 0 || offset >= size)
        {
            return [];
        }

        var buffer = new byte[(int)Math.Min(length, size - offset)];
        disk.Position = offset;
        disk.ReadExactly(buffer);
        return buffer;
    }
}
