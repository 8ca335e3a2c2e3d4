using System.Text;
using RestoreFs.RestoreDaemon.Disks;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>The thin pool metadata reader against metadata written by thin-provisioning-tools' thin_restore.</summary>
public sealed class ThinMetadataTests : IDisposable
{
    private readonly TempDirectory dir = new("restorefs-thinmeta");

    public void Dispose() => dir.Dispose();

    /// <summary>Pool metadata (4 MiB) from XML: device 1 with a range and singles, device 7 with many scattered blocks.</summary>
    private string Restore(out List<ThinRun> expected1, out List<(long Virtual, long Data)> expected7)
    {
        var xml = new StringBuilder();
        xml.Append("<superblock uuid=\"\" time=\"2\" transaction=\"5\" flags=\"0\" version=\"2\" data_block_size=\"256\" nr_data_blocks=\"100000\">\n");
        xml.Append("<device dev_id=\"1\" mapped_blocks=\"13\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">\n");
        xml.Append("<range_mapping origin_begin=\"0\" data_begin=\"100\" length=\"10\" time=\"0\"/>\n");
        xml.Append("<single_mapping origin_block=\"10\" data_block=\"5\" time=\"1\"/>\n");
        xml.Append("<single_mapping origin_block=\"20\" data_block=\"6\" time=\"1\"/>\n");
        xml.Append("<single_mapping origin_block=\"21\" data_block=\"7\" time=\"1\"/>\n");
        xml.Append("</device>\n");
        // Enough entries for several B-tree levels (a leaf holds ~250), scattered so that nothing merges.
        expected7 = [];
        var random = new Random(7);
        var v = 0L;
        for (var i = 0; i < 3000; i++)
        {
            v += 1 + random.Next(3);
            expected7.Add((v, 50000 - (i * 2)));
        }

        xml.Append(System.Globalization.CultureInfo.InvariantCulture, $"<device dev_id=\"7\" mapped_blocks=\"{expected7.Count}\" transaction=\"3\" creation_time=\"1\" snap_time=\"1\">\n");
        foreach (var (virt, data) in expected7)
        {
            xml.Append(System.Globalization.CultureInfo.InvariantCulture, $"<single_mapping origin_block=\"{virt}\" data_block=\"{data}\" time=\"1\"/>\n");
        }

        xml.Append("</device>\n</superblock>\n");
        File.WriteAllText(dir.Combine("meta.xml"), xml.ToString());
        var meta = dir.Combine("meta.bin");
        using (var f = File.Create(meta))
        {
            f.SetLength(4 << 20);
        }

        ProcessRunner.Run(Requires.Tool("thin_restore"), ["-q", "-i", dir.Combine("meta.xml"), "-o", meta], TimeSpan.FromMinutes(1)).EnsureSuccess("thin_restore");
        expected1 = [new ThinRun(0, 100, 10), new ThinRun(10, 5, 1), new ThinRun(20, 6, 2)];
        return meta;
    }

    private static ThinMetadata Open(byte[] bytes) =>
        ThinMetadata.Open(n => bytes.AsSpan((int)(n * ThinMetadata.BlockSize), ThinMetadata.BlockSize).ToArray(), bytes.Length);

    [Fact]
    public void Runs_equal_what_thin_restore_wrote()
    {
        var md = Open(File.ReadAllBytes(Restore(out var expected1, out var expected7)));
        Assert.Equal(256u, md.DataBlockSectors);
        Assert.Equal(5ul, md.TransactionId);
        Assert.Equal(expected1, md.Runs(1, 1000));
        Assert.Equal(expected7.Select(x => new ThinRun(x.Virtual, x.Data, 1)), md.Runs(7, long.MaxValue));
        Assert.Null(md.Runs(2, 1000));
        // Mappings past the LV's end are left out.
        Assert.Equal([new ThinRun(0, 100, 10)], md.Runs(1, 10));
    }

    [Fact]
    public void A_damaged_block_is_a_typed_error_naming_it()
    {
        var bytes = File.ReadAllBytes(Restore(out _, out _));
        var damagedSuper = (byte[])bytes.Clone();
        damagedSuper[100] ^= 1;
        var e = Assert.Throws<ThinMetadataException>(() => Open(damagedSuper));
        Assert.Contains("superblock", e.Message, StringComparison.Ordinal);

        // The mapping root of the superblock (offset 320): damage that node.
        var root = BitConverter.ToInt64(bytes, 320);
        var damagedNode = (byte[])bytes.Clone();
        damagedNode[(root * ThinMetadata.BlockSize) + 40] ^= 0x10;
        var md = Open(damagedNode);
        e = Assert.Throws<ThinMetadataException>(() => md.Runs(1, 1000));
        Assert.Contains($"node {root}", e.Message, StringComparison.Ordinal);

        Assert.Throws<ThinMetadataException>(() => Open(new byte[8192]));
    }

    [Fact]
    public void A_data_block_past_the_data_lv_is_named_whatever_its_number()
    {
        // Pool metadata is the guest's to write (its checksums too): a 40-bit block number with 1 GiB blocks is past
        // any data LV, and so is one just past this pool's end. Both are named, neither wraps around.
        const long Chunk = 1L << 30;
        IReadOnlyList<(long, string, long, long)> data = [(0L, "/dev/a", 1L << 20, 4 * Chunk), (4 * Chunk, "/dev/b", 0L, 4 * Chunk)];
        foreach (var block in new[] { (1L << 40) - 1, 1L << 33, 8L })
        {
            var e = Assert.Throws<ThinMetadataException>(() => DiskCatalog.ThinPieces(3, [new ThinRun(1, block, 1)], Chunk, 16 * Chunk, data));
            Assert.Contains($"data block {block}, past the pool's 8 blocks", e.Message, StringComparison.Ordinal);
        }

        // Inside: the run crosses from the first segment of the data LV to the second.
        Assert.Equal([(Chunk, "/dev/a", (1L << 20) + (3 * Chunk), Chunk), (2 * Chunk, "/dev/b", 0L, Chunk)],
            DiskCatalog.ThinPieces(3, [new ThinRun(1, 3, 2)], Chunk, 16 * Chunk, data));
    }
}
