using System.Text;

namespace RestoreFs.Pxar.Tests;

public class CatalogTests
{
    [Fact]
    public void TheCatalogVectorReadsAsTheSpecSays()
    {
        var cat = new PxarCatalog(new MemoryPxarSource(Vectors.Bytes("catalog.pcat1"), "catalog.pcat1"));
        Assert.Equal(19, cat.RootOffset);
        var root = cat.Root;
        Assert.Equal(["a.txt", "dev", "dir", "fifo", "hl", "link"], root.Select(e => e.NameText));
        Assert.Equal("fcdphl", new string(root.Select(e => (char)e.Type).ToArray()));
        Assert.Equal((6L, 1700000001L), (root[0].Size, root[0].MtimeSeconds));
        Assert.Equal(8, root[2].ChildBlockOffset);
        var dir = Assert.Single(cat.ReadBlock(8));
        Assert.Equal(("b", 1L, 1700000004L), (dir.NameText, dir.Size, dir.MtimeSeconds));
    }

    [Fact]
    public void TheWriterReproducesTheCatalogVectorFromTheArchive()
    {
        using var a = Vectors.V1();
        var output = new MemoryStream();
        var writer = new PxarCatalogWriter(output);
        void Walk(PxarEntry dir)
        {
            foreach (var e in a.List(dir))
            {
                switch (e.IsHardlink ? (PxarEntryKind)(-1) : e.Kind)
                {
                    case PxarEntryKind.Directory:
                        writer.BeginDirectory(e.Name);
                        Walk(e);
                        writer.EndDirectory();
                        break;
                    case PxarEntryKind.File: writer.AddFile(e.Name, e.Size, e.Stat.MtimeSeconds); break;
                    case PxarEntryKind.Symlink: writer.AddEntry(PxarCatalogEntryType.Symlink, e.Name); break;
                    case PxarEntryKind.CharDevice: writer.AddEntry(PxarCatalogEntryType.CharDevice, e.Name); break;
                    case PxarEntryKind.Fifo: writer.AddEntry(PxarCatalogEntryType.Fifo, e.Name); break;
                    default: writer.AddEntry(PxarCatalogEntryType.Hardlink, e.Name); break;
                }
            }
        }

        Walk(a.Root);
        writer.Finish();
        Assert.Equal(Convert.ToHexStringLower(Vectors.Bytes("catalog.pcat1")), Convert.ToHexStringLower(output.ToArray()));
    }

    [Fact]
    public void ListingFromTheCatalogGivesTheArchivesNamesTypesAndInodes()
    {
        using var a = Vectors.V1();
        var cat = new PxarCatalog(new MemoryPxarSource(Vectors.Bytes("catalog.pcat1"), "catalog.pcat1"));
        void Check(PxarEntry dir, IReadOnlyList<PxarCatalogEntry> block)
        {
            var decoded = a.List(dir);
            var named = a.ListFromCatalog(dir, block);
            Assert.NotNull(named);
            Assert.Equal(decoded.Select(e => Encoding.UTF8.GetString(e.Name)), named.Select(n => Encoding.UTF8.GetString(n.Name)));
            Assert.Equal(decoded.Select(e => e.Kind), named.Select(n => n.Kind));
            Assert.Equal(decoded.Select(e => e.Inode), named.Select(n => n.Inode));
            Assert.Equal(decoded.Select(e => e.FilenameOffset), named.Select(n => n.FilenameOffset));
            foreach (var sub in decoded.Where(e => e.IsDirectory))
            {
                Check(sub, cat.ReadBlock(block.Single(c => c.Name.AsSpan().SequenceEqual(sub.Name)).ChildBlockOffset));
            }
        }

        Check(a.Root, cat.Root);

        // The hard link "hl" shows its target's inode, as a decoded listing does.
        var names = a.ListFromCatalog(a.Root, cat.Root)!;
        Assert.Equal(names.Single(n => n.Name.AsSpan().SequenceEqual("a.txt"u8)).Inode, names.Single(n => n.Name.AsSpan().SequenceEqual("hl"u8)).Inode);
    }

    [Theory]
    [InlineData("drop")]
    [InlineData("extra")]
    [InlineData("rename")]
    [InlineData("slash")]
    [InlineData("dotdot")]
    [InlineData("duplicate")]
    public void ACatalogBlockThatDoesNotMatchTheDirectoryIsNotUsed(string damage)
    {
        using var a = Vectors.V1();
        var cat = new PxarCatalog(new MemoryPxarSource(Vectors.Bytes("catalog.pcat1"), "catalog.pcat1"));
        var block = cat.Root.ToList();
        switch (damage)
        {
            case "drop": block.RemoveAt(1); break;
            case "extra": block.Add(new PxarCatalogEntry(PxarCatalogEntryType.File, "zzz"u8.ToArray())); break;
            case "rename": block[0] = block[0] with { Name = "b.txt"u8.ToArray() }; break;
            case "slash": block[0] = block[0] with { Name = "a/txt"u8.ToArray() }; break;
            case "dotdot": block[0] = block[0] with { Name = ".."u8.ToArray() }; break;
            case "duplicate": block[1] = block[0]; break;
        }

        Assert.Null(a.ListFromCatalog(a.Root, block));
    }

    [Theory]
    [InlineData(0L, "00")]
    [InlineData(127L, "7f")]
    [InlineData(128L, "8001")]
    [InlineData(300L, "ac02")]
    [InlineData(long.MaxValue, "ffffffffffffffff7f")]
    [InlineData(-1L, "8100")]
    [InlineData(-128L, "808100")]
    [InlineData(1700000001L, "81e2cfaa06")]
    [InlineData(-1700000001L, "81e2cfaa8600")]
    public void VarintsAreTheSpecsExamples(long value, string hex)
    {
        var s = new MemoryStream();
        CatalogVarint.WriteSigned(s, value);
        Assert.Equal(hex, Convert.ToHexStringLower(s.ToArray()));
        var pos = 0;
        Assert.Equal(value, CatalogVarint.ReadSigned(s.ToArray(), ref pos));
        Assert.Equal(s.Length, pos);
    }

    [Fact]
    public void DamagedCatalogsGiveTypedErrors()
    {
        var original = Vectors.Bytes("catalog.pcat1");
        for (var i = 0; i < original.Length; i++)
        {
            foreach (var mask in new byte[] { 0x01, 0x80, 0xff })
            {
                var bytes = (byte[])original.Clone();
                bytes[i] ^= mask;
                try
                {
                    var cat = new PxarCatalog(new MemoryPxarSource(bytes, "c"));
                    foreach (var e in cat.Root.Where(e => e.Type == PxarCatalogEntryType.Directory))
                    {
                        cat.ReadBlock(e.ChildBlockOffset);
                    }
                }
                catch (PxarException)
                {
                }
            }
        }

        for (var length = 0; length < original.Length; length++)
        {
            var cut = original[..length];
            try
            {
                var cat = new PxarCatalog(new MemoryPxarSource(cut, "c"));
                _ = cat.Root;
            }
            catch (PxarException)
            {
            }
        }

        Assert.Equal(Encoding.ASCII.GetBytes("a.txt"), new PxarCatalog(new MemoryPxarSource(original)).Root[0].Name);
    }
}
