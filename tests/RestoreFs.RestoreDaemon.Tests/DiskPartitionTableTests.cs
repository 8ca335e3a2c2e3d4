using System.Buffers.Binary;
using System.Text.Json;
using RestoreFs.RestoreDaemon.Disks;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>The partition-table parser against tables written by sgdisk and sfdisk, with sfdisk's own reading as the
/// reference for numbers, offsets and sizes.</summary>
public sealed class DiskPartitionTableTests : IDisposable
{
    private readonly TempDirectory dir = new("restorefs-ptable");

    public void Dispose() => dir.Dispose();

    private static PartitionTableInfo Read(string image)
    {
        using var s = File.OpenRead(image);
        return PartitionTable.ReadTable(s, s.Length);
    }

    /// <summary>sfdisk's view: (number, offset, length) of every partition that is not an extended container.</summary>
    private static List<(int Number, long Offset, long Length)> Sfdisk(string image)
    {
        var json = DiskTools.Run("sfdisk", "-J", image).StdOut;
        using var doc = JsonDocument.Parse(json);
        var result = new List<(int, long, long)>();
        foreach (var p in doc.RootElement.GetProperty("partitiontable").GetProperty("partitions").EnumerateArray())
        {
            var type = p.GetProperty("type").GetString()!;
            if (type is "5" or "f" or "85")
            {
                continue;
            }

            var node = p.GetProperty("node").GetString()!;
            var number = int.Parse(node[image.Length..].TrimStart('p'));
            result.Add((number, p.GetProperty("start").GetInt64() * 512, p.GetProperty("size").GetInt64() * 512));
        }

        return result.OrderBy(r => r.Item1).ToList();
    }

    private static List<(int, long, long)> Ours(PartitionTableInfo t) => t.Partitions.Select(p => (p.Number, p.Offset, p.Length)).ToList();

    private string Gpt()
    {
        var img = DiskTools.Sparse(dir.Combine("gpt.img"), 64 << 20);
        // Entries 1, 3 and 7 (numbers follow the entry index, gaps included), one partition named.
        DiskTools.Run("sgdisk", "-n", "1:2048:+8M", "-t", "1:8300", "-c", "1:root",
            "-n", "3:0:+4M", "-t", "3:ef00", "-n", "7:0:+16M", "-t", "7:8e00", img);
        return img;
    }

    [Fact]
    public void Gpt_partitions_are_numbered_by_entry_as_sfdisk_reads_them()
    {
        var img = Gpt();
        var table = Read(img);
        Assert.Equal("gpt", table.Scheme);
        Assert.Empty(table.Notes);
        Assert.Equal([1, 3, 7], table.Partitions.Select(p => p.Number));
        Assert.Equal(Sfdisk(img), Ours(table));
        Assert.Equal("root", table.Partitions[0].Name);
        Assert.Equal("gpt:0fc63daf-8483-4772-8e79-3d69d8477de4", table.Partitions[0].Type);
        Assert.Equal("gpt:c12a7328-f81f-11d2-ba4b-00a0c93ec93b", table.Partitions[1].Type);
    }

    [Theory]
    [InlineData(512 + 16, "header")]       // the primary header's CRC field
    [InlineData(1024 + 200, "entries")]    // inside the primary partition entries
    public void A_damaged_primary_gpt_falls_back_to_the_backup(long offset, string what)
    {
        var img = Gpt();
        var reference = Sfdisk(img);
        Corrupt(img, offset);
        var table = Read(img);
        Assert.Equal("gpt", table.Scheme);
        Assert.Equal(reference, Ours(table));
        Assert.Contains(table.Notes, n => n.Contains("backup GPT", StringComparison.Ordinal));
        Assert.Contains(table.Notes, n => n.Contains("primary GPT", StringComparison.Ordinal) && n.Contains(what == "header" ? "header" : "entries", StringComparison.Ordinal));
    }

    [Fact]
    public void A_primary_gpt_whose_usable_area_leaves_the_disk_is_not_used_as_linux_does_not()
    {
        // A valid header (checksums right) that says its usable LBAs run past the disk's end: Linux refuses it.
        var img = Gpt();
        var reference = Sfdisk(img);
        var disk = File.ReadAllBytes(img);
        var header = disk.AsSpan(512, 92);
        BinaryPrimitives.WriteUInt64LittleEndian(header[48..], (ulong)(disk.Length / 512) + 1000); // last usable LBA
        header[16..20].Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(header[16..], System.IO.Hashing.Crc32.HashToUInt32(header));
        File.WriteAllBytes(img, disk);

        var table = Read(img);
        Assert.Equal(reference, Ours(table));
        Assert.Contains(table.Notes, n => n.Contains("primary GPT", StringComparison.Ordinal) && n.Contains("usable LBAs", StringComparison.Ordinal));
        Assert.Contains(table.Notes, n => n.Contains("using the backup GPT", StringComparison.Ordinal));
    }

    [Fact]
    public void A_damaged_backup_gpt_does_not_matter_while_the_primary_is_good()
    {
        var img = Gpt();
        var reference = Sfdisk(img);
        Corrupt(img, new FileInfo(img).Length - 512 + 16);
        var table = Read(img);
        Assert.Equal(reference, Ours(table));
        Assert.Empty(table.Notes);
    }

    [Fact]
    public void Both_gpt_copies_damaged_is_an_error_naming_both()
    {
        var img = Gpt();
        Corrupt(img, 512 + 16);
        Corrupt(img, new FileInfo(img).Length - 512 + 16);
        using var s = File.OpenRead(img);
        var e = Assert.Throws<InvalidDataException>(() => PartitionTable.ReadTable(s, s.Length));
        Assert.Contains("primary GPT", e.Message);
        Assert.Contains("backup GPT", e.Message);
    }

    [Fact]
    public void A_gpt_is_found_even_when_the_protective_mbr_is_wiped()
    {
        var img = Gpt();
        var reference = Sfdisk(img);
        using (var f = new FileStream(img, FileMode.Open, FileAccess.Write))
        {
            f.Write(new byte[512]);
        }

        var table = Read(img);
        Assert.Equal("gpt", table.Scheme);
        Assert.Equal(reference, Ours(table));
        Assert.Contains(table.Notes, n => n.Contains("no boot signature", StringComparison.Ordinal));
    }

    [Fact]
    public void Mbr_with_extended_and_logical_partitions_is_numbered_as_linux_does()
    {
        var img = DiskTools.Sparse(dir.Combine("mbr.img"), 128 << 20);
        // 1 primary, 2 extended holding 5, 6 and 7, 3 primary after it; slot 4 empty.
        ProcessRunner.Run(Requires.Tool("sfdisk"), ["-q", img], stdin: """
            label: dos
            start=2048, size=16384, type=83
            start=18432, size=131072, type=5
            start=149504, size=8192, type=c
            start=20480, size=16384, type=83
            start=38912, size=32768, type=8e
            start=73728, size=20480, type=82
            """u8.ToArray()).EnsureSuccess("sfdisk");
        var table = Read(img);
        Assert.Equal("mbr", table.Scheme);
        Assert.Equal([1, 3, 5, 6, 7], table.Partitions.Select(p => p.Number));
        Assert.Equal(Sfdisk(img), Ours(table));
        Assert.Equal("mbr:82", table.Partitions.Single(p => p.Number == 7).Type);
    }

    [Fact]
    public void A_fat_boot_sector_is_not_a_partition_table()
    {
        var img = DiskTools.Sparse(dir.Combine("fat.img"), 16 << 20);
        DiskTools.Run("mkfs.vfat", img);
        Assert.Equal("vfat", FsProbe.Detect(File.ReadAllBytes(img).AsSpan(0, FsProbe.ProbeBytes)));
        Assert.Empty(Read(img).Partitions);
    }

    [Fact]
    public void Random_bytes_are_no_table()
    {
        var img = dir.Combine("random.img");
        File.WriteAllBytes(img, DiskProbeTests.RandomBytes(4 << 20, 11));
        var table = Read(img);
        Assert.Equal("none", table.Scheme);
        Assert.Empty(table.Partitions);
    }

    [Fact]
    public void A_partition_past_the_end_is_truncated_and_a_looping_ebr_chain_ends()
    {
        // Written by hand: sfdisk refuses both.
        var sectors = 8192L;
        var disk = new byte[sectors * 512];
        var mbr = disk.AsSpan(0, 512);
        Entry(mbr, 0, 0x83, 2048, 100_000);           // ends far beyond the 8192-sector disk
        Entry(mbr, 1, 0x05, 4096, 4096);              // extended
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        var ebr = disk.AsSpan(4096 * 512, 512);
        Entry(ebr, 0, 0x83, 64, 1000);                // logical 5 at 4096 + 64
        Entry(ebr, 1, 0x05, 0, 4096);                 // "next" EBR = the same one: a loop
        ebr[510] = 0x55;
        ebr[511] = 0xAA;
        var img = dir.Combine("hand.img");
        File.WriteAllBytes(img, disk);

        var table = Read(img);
        Assert.Equal([(1, 2048L * 512, (sectors - 2048) * 512), (5, (4096L + 64) * 512, 1000L * 512)], Ours(table));
        Assert.Contains(table.Notes, n => n.Contains("truncated", StringComparison.Ordinal));
        Assert.Contains(table.Notes, n => n.Contains("loops", StringComparison.Ordinal));
    }

    [Fact]
    public void An_ebr_chain_of_more_than_256_partitions_stops_at_linuxs_limit()
    {
        // 100 EBRs one after another, each with three logical partitions (slots 1, 3 and 4) and the link in slot 2; the
        // first without slot 4, so that the 256th partition is not the last of its EBR.
        const int Ebrs = 100;
        var disk = new byte[(2048L + Ebrs * 8) * 512];
        var mbr = disk.AsSpan(0, 512);
        Entry(mbr, 0, 0x05, 2048, Ebrs * 8);
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        for (var i = 0; i < Ebrs; i++)
        {
            var ebr = disk.AsSpan((2048 + i * 8) * 512, 512);
            Entry(ebr, 0, 0x83, 1, 2);
            Entry(ebr, 1, 0x05, (uint)((i + 1) * 8), 8);
            Entry(ebr, 2, 0x83, 3, 2);
            if (i > 0)
            {
                Entry(ebr, 3, 0x83, 5, 2);
            }

            ebr[510] = 0x55;
            ebr[511] = 0xAA;
        }

        var img = dir.Combine("many.img");
        File.WriteAllBytes(img, disk);
        var table = Read(img);
        Assert.Equal(Enumerable.Range(5, 256 - 4), table.Partitions.Select(p => p.Number));
        Assert.Contains(table.Notes, n => n.Contains("more than 256 partitions", StringComparison.Ordinal));
    }

    private static void Entry(Span<byte> sector, int slot, byte type, uint start, uint count)
    {
        var e = sector.Slice(446 + slot * 16, 16);
        e[4] = type;
        BinaryPrimitives.WriteUInt32LittleEndian(e[8..], start);
        BinaryPrimitives.WriteUInt32LittleEndian(e[12..], count);
    }

    private static void Corrupt(string image, long offset)
    {
        using var f = new FileStream(image, FileMode.Open, FileAccess.ReadWrite);
        f.Position = offset;
        var b = f.ReadByte();
        f.Position = offset;
        f.WriteByte((byte)(b ^ 0xFF));
    }
}
