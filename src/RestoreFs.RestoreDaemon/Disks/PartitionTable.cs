using System.Buffers.Binary;
using System.IO.Hashing;

namespace RestoreFs.RestoreDaemon.Disks;

/// <param name="Number">As Linux numbers it: GPT entry index + 1; MBR primaries 1–4 by slot, logical partitions from 5.</param>
/// <param name="Offset">Byte offset on the disk.</param>
/// <param name="Length">Bytes.</param>
/// <param name="Type">"gpt:&lt;type GUID&gt;" or "mbr:&lt;type byte in hex&gt;".</param>
public sealed record Partition(int Number, long Offset, long Length, string Type)
{
    /// <summary>GPT partition name (UTF-16 in the entry), empty for MBR.</summary>
    public string Name { get; init; } = "";

    /// <summary>
    /// What a partition of a type that never holds a file system is for (GRUB's BIOS boot partition, Windows' reserved
    /// partition, FreeBSD's boot and swap), or a swap partition; null for every other type. Only asked when nothing was
    /// recognised in the partition (a mistyped partition with a file system is still mounted).
    /// </summary>
    public string? NoFileSystemKind => Type switch
    {
        "gpt:21686148-6449-6e6f-744e-656564454649" => "BIOS boot partition (GRUB's core image)",
        "gpt:e3c9e316-0b5c-4db8-817d-f92df00215ae" => "Microsoft reserved partition",
        "gpt:83bd6b9d-7f41-11dc-be0b-001560b84f0f" => "FreeBSD boot partition",
        "gpt:516e7cb5-6ecf-11d6-8ff8-00022d09712b" => "FreeBSD swap partition",
        "gpt:0657fd6d-a4ab-43c4-84e5-0933c84b4f4f" or "mbr:82" =>
            "Linux swap partition without a swap signature (swap encrypted with a key made at each boot looks like this)",
        _ => null,
    };
}

/// <param name="Scheme"><c>gpt</c>, <c>mbr</c> or <c>none</c>.</param>
/// <param name="Notes">What was odd and how it was handled, e.g. the backup GPT used because the primary is damaged.</param>
public sealed record PartitionTableInfo(string Scheme, IReadOnlyList<Partition> Partitions, IReadOnlyList<string> Notes);

/// <summary>
/// Reads GPT (the primary header, else the backup at the end of the disk) and MBR tables with extended and logical
/// partitions, numbered as Linux numbers them. Logical sectors of 512 bytes (4096 is tried for GPT as well).
/// </summary>
public static class PartitionTable
{
    private const int MaxPartitions = 256; // Linux's DISK_MAX_PARTS

    /// <summary>The partitions (empty when there is no table).</summary>
    /// <param name="size">The disk's size in bytes (a block device's stream reports length 0).</param>
    public static IReadOnlyList<Partition> Read(Stream disk, long size) => ReadTable(disk, size).Partitions;

    /// <summary>The table with what was noticed on the way. Throws <see cref="InvalidDataException"/> when a
    /// protective MBR announces a GPT and neither GPT header is valid.</summary>
    public static PartitionTableInfo ReadTable(Stream disk, long size)
    {
        var notes = new List<string>();
        var mbr = ReadAt(disk, 0, 512, size);
        var hasSignature = mbr.Length == 512 && mbr[510] == 0x55 && mbr[511] == 0xAA;
        var protective = hasSignature && Enumerable.Range(0, 4).Any(i => mbr[446 + i * 16 + 4] == 0xEE);
        if (protective || !hasSignature)
        {
            // Without an MBR signature Linux ignores a GPT; we still look for one (a wiped first sector should not
            // hide the partitions), but only a header with a valid CRC counts.
            List<string>? firstNotes = null;
            foreach (var sector in new[] { 512, 4096 })
            {
                var tried = new List<string>();
                var gpt = ReadGpt(disk, size, sector, tried);
                firstNotes ??= tried;
                if (gpt is not null)
                {
                    notes.AddRange(tried);
                    if (!hasSignature)
                    {
                        notes.Add("the MBR has no boot signature (55 AA); using the GPT found anyway");
                    }

                    if (sector != 512)
                    {
                        notes.Add($"the GPT uses {sector}-byte logical sectors");
                    }

                    return new PartitionTableInfo("gpt", gpt, notes);
                }
            }

            notes.AddRange(firstNotes!);
            if (protective)
            {
                throw new InvalidDataException(
                    $"protective MBR but neither the primary nor the backup GPT is valid ({string.Join("; ", notes)})");
            }

            return new PartitionTableInfo("none", [], []);
        }

        return ReadMbr(disk, mbr, size, notes);
    }

    private static PartitionTableInfo ReadMbr(Stream disk, byte[] mbr, long size, List<string> notes)
    {
        var sectors = size / 512;
        // A FAT or NTFS boot sector also ends in 55 AA: as Linux does, reject a table with boot flags other than 0/0x80.
        for (var i = 0; i < 4; i++)
        {
            var status = mbr[446 + i * 16];
            if (status is not 0 and not 0x80)
            {
                return new PartitionTableInfo("none", [], [$"MBR slot {i + 1} has boot flag 0x{status:x2}: not a partition table"]);
            }
        }

        var result = new List<Partition>();
        var nextLogical = 5;
        foreach (var (i, type, start, entryCount) in Slots(mbr))
        {
            var count = entryCount;
            if (start == 0 || start >= sectors)
            {
                notes.Add($"MBR partition {i + 1} starts at sector {start}, outside the disk ({sectors} sectors): skipped");
                continue;
            }

            if (start + count > sectors)
            {
                notes.Add($"MBR partition {i + 1} ends beyond the disk: truncated to its end");
                count = sectors - start;
            }

            if (IsExtended(type))
            {
                ReadLogical(disk, start, count, size, result, ref nextLogical, notes);
            }
            else
            {
                result.Add(new Partition(i + 1, start * 512, count * 512, $"mbr:{type:x2}"));
            }
        }

        return new PartitionTableInfo("mbr", result.OrderBy(p => p.Number).ToList(), notes);
    }

    private static bool IsExtended(byte type) => type is 0x05 or 0x0F or 0x85;

    /// <summary>The used slots (type and sector count not 0) of an MBR or EBR: slot index 0–3, type, start sector
    /// (as stored: absolute in an MBR, relative in an EBR), sector count.</summary>
    private static IEnumerable<(int Slot, byte Type, long Start, long Count)> Slots(byte[] sector)
    {
        for (var i = 0; i < 4; i++)
        {
            var e = sector.AsSpan(446 + i * 16, 16);
            var type = e[4];
            long start = BinaryPrimitives.ReadUInt32LittleEndian(e[8..]);
            long count = BinaryPrimitives.ReadUInt32LittleEndian(e[12..]);
            if (type != 0 && count != 0)
            {
                yield return (i, type, start, count);
            }
        }
    }

    /// <summary>The chain of extended boot records, as Linux's msdos.c walks it.</summary>
    private static void ReadLogical(Stream disk, long extendedStart, long extendedCount, long size, List<Partition> result,
        ref int number, List<string> notes)
    {
        var sectors = size / 512;
        var ebr = extendedStart;
        var seen = new HashSet<long>();
        while (number <= MaxPartitions)
        {
            if (!seen.Add(ebr))
            {
                notes.Add($"the extended partition's chain loops at sector {ebr}: stopped");
                return;
            }

            var sector = ReadAt(disk, ebr * 512, 512, size);
            if (sector.Length < 512 || sector[510] != 0x55 || sector[511] != 0xAA)
            {
                if (ebr != extendedStart)
                {
                    notes.Add($"extended boot record at sector {ebr} has no signature: the chain ends there");
                }

                return;
            }

            long nextEbr = -1;
            foreach (var (i, type, relative, count) in Slots(sector))
            {
                if (number > MaxPartitions)
                {
                    notes.Add($"more than {MaxPartitions} partitions: the rest of the extended partition's chain is skipped");
                    return;
                }

                if (IsExtended(type))
                {
                    // The link to the next EBR is relative to the start of the outermost extended partition.
                    if (nextEbr < 0)
                    {
                        nextEbr = extendedStart + relative;
                    }

                    continue;
                }

                var start = ebr + relative;
                // Slots 3 and 4 of an EBR sometimes hold garbage: Linux keeps them only inside the extended partition.
                if (i >= 2 && (start < extendedStart || start + count > extendedStart + extendedCount))
                {
                    continue;
                }

                if (start >= sectors)
                {
                    notes.Add($"logical partition {number} starts beyond the disk: skipped");
                    number++;
                    continue;
                }

                result.Add(new Partition(number, start * 512, Math.Min(count, sectors - start) * 512, $"mbr:{type:x2}"));
                number++;
            }

            if (nextEbr < 0 || nextEbr >= sectors)
            {
                return;
            }

            ebr = nextEbr;
        }
    }

    /// <summary>The GPT for one logical sector size, null when neither header (with its entries) is valid;
    /// <paramref name="notes"/> says what was wrong with which copy.</summary>
    private static List<Partition>? ReadGpt(Stream disk, long size, int sectorSize, List<string> notes)
    {
        var lastLba = size / sectorSize - 1;
        if (lastLba < 2)
        {
            notes.Add("the disk is too small for a GPT");
            return null;
        }

        var primary = ReadGptHeader(disk, 1, size, sectorSize, out var primaryProblem);
        if (primary is not null)
        {
            var entries = ReadGptEntries(disk, primary, size, sectorSize, out primaryProblem);
            if (entries is not null)
            {
                return entries;
            }
        }

        // The backup header is at the disk's last LBA (or where the primary says, e.g. on a disk grown since).
        var candidates = new List<long> { lastLba };
        if (primary is not null && primary.AlternateLba > 1 && primary.AlternateLba < (ulong)lastLba)
        {
            candidates.Add((long)primary.AlternateLba);
        }

        notes.Add($"primary GPT: {primaryProblem}");
        foreach (var lba in candidates)
        {
            var backup = ReadGptHeader(disk, lba, size, sectorSize, out var backupProblem);
            var entries = backup is null ? null : ReadGptEntries(disk, backup, size, sectorSize, out backupProblem);
            if (entries is not null)
            {
                notes.Add($"using the backup GPT at LBA {lba}");
                return entries;
            }

            notes.Add($"backup GPT: {backupProblem}");
        }

        return null;
    }

    private sealed record GptHeader(ulong MyLba, ulong AlternateLba, ulong FirstUsable, ulong LastUsable, ulong EntriesLba, uint Count,
        uint EntrySize, uint EntriesCrc);

    private static GptHeader? ReadGptHeader(Stream disk, long lba, long size, int sectorSize, out string? problem)
    {
        var header = ReadAt(disk, lba * sectorSize, sectorSize, size);
        if (header.Length < 92 || !header.AsSpan(0, 8).SequenceEqual("EFI PART"u8))
        {
            problem = $"no GPT signature at LBA {lba}";
            return null;
        }

        var headerSize = BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(12));
        if (headerSize < 92 || headerSize > sectorSize)
        {
            problem = $"header at LBA {lba} has an impossible size {headerSize}";
            return null;
        }

        var check = header.AsSpan(0, (int)headerSize).ToArray();
        var storedCrc = BinaryPrimitives.ReadUInt32LittleEndian(check.AsSpan(16));
        check.AsSpan(16, 4).Clear();
        if (Crc32.HashToUInt32(check) != storedCrc)
        {
            problem = $"header at LBA {lba} has a bad CRC";
            return null;
        }

        var h = new GptHeader(
            MyLba: BinaryPrimitives.ReadUInt64LittleEndian(header.AsSpan(24)),
            AlternateLba: BinaryPrimitives.ReadUInt64LittleEndian(header.AsSpan(32)),
            FirstUsable: BinaryPrimitives.ReadUInt64LittleEndian(header.AsSpan(40)),
            LastUsable: BinaryPrimitives.ReadUInt64LittleEndian(header.AsSpan(48)),
            EntriesLba: BinaryPrimitives.ReadUInt64LittleEndian(header.AsSpan(72)),
            Count: BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(80)),
            EntrySize: BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(84)),
            EntriesCrc: BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(88)));
        if (h.MyLba != (ulong)lba)
        {
            problem = $"header at LBA {lba} says it is at LBA {h.MyLba}";
            return null;
        }

        var lastLba = (ulong)(size / sectorSize) - 1;
        if (h.FirstUsable > lastLba || h.LastUsable > lastLba || h.LastUsable < h.FirstUsable)
        {
            // As Linux checks it: a header that does not fit the disk is not used (the kernel then takes the other copy).
            problem = $"header at LBA {lba} has usable LBAs {h.FirstUsable}–{h.LastUsable} outside the disk's {lastLba + 1}";
            return null;
        }

        if (h.Count == 0 || h.Count > 4096 || h.EntrySize < 128 || h.EntrySize > 4096 || (h.EntrySize & (h.EntrySize - 1)) != 0)
        {
            problem = $"header at LBA {lba} has an impossible entry table ({h.Count} entries of {h.EntrySize} bytes)";
            return null;
        }

        problem = null;
        return h;
    }

    private static List<Partition>? ReadGptEntries(Stream disk, GptHeader h, long size, int sectorSize, out string? problem)
    {
        var bytes = (int)(h.Count * h.EntrySize);
        var entries = h.EntriesLba < (ulong)(size / sectorSize) ? ReadAt(disk, (long)h.EntriesLba * sectorSize, bytes, size) : [];
        if (entries.Length != bytes)
        {
            problem = $"partition entries at LBA {h.EntriesLba} lie beyond the disk";
            return null;
        }

        if (Crc32.HashToUInt32(entries) != h.EntriesCrc)
        {
            problem = $"partition entries at LBA {h.EntriesLba} have a bad CRC";
            return null;
        }

        var lastLba = (ulong)(size / sectorSize) - 1;
        var result = new List<Partition>();
        for (var i = 0; i < h.Count && i < MaxPartitions; i++)
        {
            var e = entries.AsSpan(i * (int)h.EntrySize, (int)h.EntrySize);
            if (e[..16].IndexOfAnyExcept((byte)0) < 0)
            {
                continue; // unused entry
            }

            var first = BinaryPrimitives.ReadUInt64LittleEndian(e[32..]);
            var last = BinaryPrimitives.ReadUInt64LittleEndian(e[40..]);
            if (last < first || first > lastLba)
            {
                continue; // Linux skips these too
            }

            last = Math.Min(last, lastLba);
            var nameBytes = e.Slice(56, 72);
            var name = System.Text.Encoding.Unicode.GetString(nameBytes);
            var nul = name.IndexOf('\0', StringComparison.Ordinal);
            result.Add(new Partition(i + 1, (long)first * sectorSize, (long)(last - first + 1) * sectorSize, "gpt:" + new Guid(e[..16]))
            {
                Name = nul >= 0 ? name[..nul] : name,
            });
        }

        problem = null;
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
        var n = disk.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);
        return n == buffer.Length ? buffer : buffer[..n];
    }
}
