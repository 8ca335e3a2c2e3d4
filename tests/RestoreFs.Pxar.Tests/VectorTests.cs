using System.Text;

namespace RestoreFs.Pxar.Tests;

/// <summary>The vectors' expected values (listings, offsets, goodbye tables, contents, metadata) as the format spec gives them.</summary>
public class VectorTests
{
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    [Fact]
    public void VectorFilesAreTheExpectedOnes()
    {
        Assert.Equal("d34717ebd0b2dc299417e170e82fcaf7010ab88462d256c3b2ee07e9c959544f", Vectors.Sha256(Vectors.Bytes("v1.pxar")));
        Assert.Equal("1e8d6a58e8b78178fcf207d9a28b655120d0b8ab63c709cc008e60df89691110", Vectors.Sha256(Vectors.Bytes("v2.mpxar")));
        Assert.Equal("64a7e1ae9342ef128f44f7233755413f2c01af593576c1149e2a23992ce89e8c", Vectors.Sha256(Vectors.Bytes("v2.ppxar")));
        Assert.Equal("e36e15ec7d3f150b7ff1a79b3415ae79ca5cad46ab4431df4578a87f382eafa3", Vectors.Sha256(Vectors.Bytes("catalog.pcat1")));
        Assert.Equal(935, Vectors.Bytes("v1.pxar").Length);
        Assert.Equal(1029, Vectors.Bytes("v2.mpxar").Length);
        Assert.Equal(71, Vectors.Bytes("v2.ppxar").Length);
    }

    [Theory]
    [InlineData("a", 0x0c26e9067c2c7bcfUL)]
    [InlineData("etc", 0xd0c229edbd411e9aUL)]
    [InlineData("passwd", 0x5c270b5c54db0265UL)]
    [InlineData("file.txt", 0x967764f630c3da14UL)]
    [InlineData("dev", 0xd9ce81d496517e20UL)]
    [InlineData("a.txt", 0xdc392d66b611aa72UL)]
    [InlineData("__PROXMOX_FORMAT_ENTRY_V2__", PxarFormat.Entry)]
    [InlineData("__PROXMOX_FORMAT_ENTRY__", PxarFormat.EntryV1)]
    [InlineData("__PROXMOX_FORMAT_FILENAME__", PxarFormat.Filename)]
    [InlineData("__PROXMOX_FORMAT_VERSION__", PxarFormat.FormatVersion)]
    [InlineData("__PROXMOX_FORMAT_PRELUDE__", PxarFormat.Prelude)]
    [InlineData("__PROXMOX_FORMAT_SYMLINK__", PxarFormat.Symlink)]
    [InlineData("__PROXMOX_FORMAT_DEVICE__", PxarFormat.Device)]
    [InlineData("__PROXMOX_FORMAT_XATTR__", PxarFormat.Xattr)]
    [InlineData("__PROXMOX_FORMAT_ACL_USER__", PxarFormat.AclUser)]
    [InlineData("__PROXMOX_FORMAT_ACL_GROUP__", PxarFormat.AclGroup)]
    [InlineData("__PROXMOX_FORMAT_ACL_GROUP_OBJ__", PxarFormat.AclGroupObj)]
    [InlineData("__PROXMOX_FORMAT_ACL_DEFAULT__", PxarFormat.AclDefault)]
    [InlineData("__PROXMOX_FORMAT_ACL_DEFAULT_USER__", PxarFormat.AclDefaultUser)]
    [InlineData("__PROXMOX_FORMAT_ACL_DEFAULT_GROUP__", PxarFormat.AclDefaultGroup)]
    [InlineData("__PROXMOX_FORMAT_FCAPS__", PxarFormat.Fcaps)]
    [InlineData("__PROXMOX_FORMAT_QUOTA_PROJID__", PxarFormat.QuotaProjectId)]
    [InlineData("__PROXMOX_FORMAT_HARDLINK__", PxarFormat.Hardlink)]
    [InlineData("__PROXMOX_FORMAT_PXAR_PAYLOAD__", PxarFormat.Payload)]
    [InlineData("__PROXMOX_FORMAT_PXAR_PAYLOAD_REF__", PxarFormat.PayloadRef)]
    [InlineData("__PROXMOX_FORMAT_GOODBYE__", PxarFormat.Goodbye)]
    [InlineData("__PROXMOX_FORMAT_PXAR_GOODBYE_TAIL_MARKER__", PxarFormat.GoodbyeTailMarker)]
    [InlineData("__PROXMOX_FORMAT_PXAR_PAYLOAD_START_MARKER__", PxarFormat.PayloadStartMarker)]
    [InlineData("__PROXMOX_FORMAT_PXAR_PAYLOAD_TAIL_MARKER__", PxarFormat.PayloadTailMarker)]
    public void NameHashesAndItemTypesAreSipHashWithTheFormatKeys(string text, ulong expected) =>
        Assert.Equal(expected, PxarFormat.HashName(B(text)));

    [Fact]
    public void HashKeysComeFromSha1OfTheFormatName()
    {
        var sha = System.Security.Cryptography.SHA1.HashData(B("PROXMOX ARCHIVE FORMAT"));
        Assert.Equal(PxarFormat.HashKey0, System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(sha));
        Assert.Equal(PxarFormat.HashKey1, System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(sha.AsSpan(8)));
    }

    [Fact]
    public void V1ListsTheTreeInStreamOrderWithTheSpecsOffsets()
    {
        using var a = Vectors.V1();
        Assert.Equal(1, a.FormatVersion);
        Assert.Equal(0, a.Root.EntryOffset);
        Assert.Equal(0x41ed, (int)a.Root.Mode); // 0o40755
        Assert.Equal((0u, 0u), (a.Root.Stat.Uid, a.Root.Stat.Gid));
        Assert.Equal((1700000000L, 123456789u), (a.Root.Stat.MtimeSeconds, a.Root.Stat.MtimeNanos));
        Assert.Equal(751, a.GoodbyeOffset(a.Root));

        var list = a.List(a.Root);
        Assert.Equal(["a.txt", "dev", "dir", "fifo", "hl", "link"], list.Select(e => Encoding.UTF8.GetString(e.Name)));
        Assert.Equal([56L, 187, 295, 526, 603, 652], list.Select(e => e.FilenameOffset));
        Assert.Equal([78L, 207, 315, 547, 78, 673], list.Select(e => e.EntryOffset));

        var txt = list[0];
        Assert.Equal(PxarEntryKind.File, txt.Kind);
        Assert.Equal(0x81a4u, txt.Mode); // 0o100644
        Assert.Equal((1000u, 1000u), (txt.Stat.Uid, txt.Stat.Gid));
        Assert.Equal((1700000001L, 0u), (txt.Stat.MtimeSeconds, txt.Stat.MtimeNanos));
        Assert.Equal(6, txt.Size);
        Assert.Equal(181, txt.ContentOffset);
        Assert.False(txt.ContentInPayloadStream);
        Assert.Equal("hello\n"u8.ToArray(), Vectors.ReadAll(a, txt));
        var xattr = Assert.Single(txt.Xattrs);
        Assert.Equal("user.comment"u8.ToArray(), xattr.Name);
        Assert.Equal("hi"u8.ToArray(), xattr.Value);
        Assert.Equal("hi"u8.ToArray(), txt.GetXattr("user.comment"u8));

        var dev = list[1];
        Assert.Equal(PxarEntryKind.CharDevice, dev.Kind);
        Assert.Equal(0x21b6u, dev.Mode); // 0o20666
        Assert.Equal((1UL, 3UL), (dev.DeviceMajor, dev.DeviceMinor));
        Assert.Equal(0x103UL, dev.RDev);

        var dir = list[2];
        Assert.Equal(PxarEntryKind.Directory, dir.Kind);
        Assert.Equal(0x41e8u, dir.Mode); // 0o40750
        Assert.Equal(462, a.GoodbyeOffset(dir));
        var b = Assert.Single(a.List(dir));
        Assert.Equal("b"u8.ToArray(), b.Name);
        Assert.Equal((371L, 389L), (b.FilenameOffset, b.EntryOffset));
        Assert.Equal(0x8180u, b.Mode); // 0o100600
        Assert.Equal("x"u8.ToArray(), Vectors.ReadAll(a, b));
        Assert.Equal(461, b.ContentOffset);

        var fifo = list[3];
        Assert.Equal(PxarEntryKind.Fifo, fifo.Kind);
        Assert.Equal(0x11a4u, fifo.Mode); // 0o10644

        var hl = list[4];
        Assert.True(hl.IsHardlink);
        Assert.Equal(56L, hl.HardlinkTargetOffset);
        Assert.Equal(txt.Inode, hl.Inode);
        Assert.Equal(txt.Stat, hl.Stat);
        Assert.Equal("hello\n"u8.ToArray(), Vectors.ReadAll(a, hl));
        Assert.Equal(PxarEntryKind.File, hl.Kind);

        var link = list[5];
        Assert.Equal(PxarEntryKind.Symlink, link.Kind);
        Assert.Equal(0xa1ffu, link.Mode); // 0o120777
        Assert.Equal("a.txt"u8.ToArray(), link.SymlinkTarget);
    }

    [Fact]
    public void V1RootGoodbyeTableIsTheSpecsInStoredOrder()
    {
        using var a = Vectors.V1();
        var records = a.GoodbyeRecords(a.Root);
        Assert.Equal(
            [(0xd9ce81d496517e20UL, 564L, 108L), (0x2a98c23ed399e2bcUL, 456, 231), (0xff2fad2a54ae626eUL, 148, 49),
             (0x04fe0b2ecf0fc0efUL, 99, 99), (0xb808adae8721840aUL, 225, 77), (0xdc392d66b611aa72UL, 695, 131)],
            records.Select(r => (r.Hash, r.Back, r.Size)));
        // The crate's readdir order is the table order.
        Assert.Equal(["dev", "dir", "hl", "link", "fifo", "a.txt"],
            records.Select(r => Encoding.UTF8.GetString(a.Lookup(a.Root, Encoding.UTF8.GetString(
                a.List(a.Root).Single(e => e.FilenameOffset == r.FilenameOffset).Name))!.Name)));
        var dirRecords = a.GoodbyeRecords(a.LookupPath("dir")!);
        Assert.Equal((91L, 91L), (dirRecords[0].Back, dirRecords[0].Size));
    }

    [Fact]
    public void LookupsFindEveryNameAndNothingElse()
    {
        foreach (var make in new Func<PxarArchive>[] { Vectors.V1, Vectors.V2 })
        {
            using var a = make();
            foreach (var name in new[] { "a.txt", "dev", "dir", "fifo", "hl", "link" })
            {
                var e = a.Lookup(a.Root, name);
                Assert.NotNull(e);
                Assert.Equal(name, Encoding.UTF8.GetString(e.Name));
            }

            Assert.Null(a.Lookup(a.Root, "b"));
            Assert.Null(a.Lookup(a.Root, "a.tx"));
            Assert.Null(a.Lookup(a.Root, "missing"));
            Assert.Equal("x"u8.ToArray(), Vectors.ReadAll(a, a.LookupPath("dir/b")!));
            Assert.Equal("x"u8.ToArray(), Vectors.ReadAll(a, a.LookupPath("/dir//b")!));
            Assert.Same(a.Root, a.LookupPath("/"));
            Assert.Null(a.LookupPath("a.txt/b"));
            Assert.Null(a.LookupPath("dir/c"));
            Assert.Equal(a.LookupPath("a.txt")!.Inode, a.LookupPath("hl")!.Inode);
        }
    }

    [Fact]
    public void V2IsTheSameTreeWithPayloadRefs()
    {
        using var v1 = Vectors.V1();
        using var v2 = Vectors.V2();
        Assert.Equal(2, v2.FormatVersion);
        Assert.Equal(69, v2.Root.EntryOffset);
        Assert.Equal("{\"exclude-patterns\":\"/tmp\\n\"}"u8.ToArray(), v2.ReadPrelude());
        Assert.Null(v1.ReadPrelude());

        var txt = v2.LookupPath("a.txt")!;
        Assert.True(txt.ContentInPayloadStream);
        Assert.Equal((32L, 6L), (txt.ContentOffset, txt.Size));
        var b = v2.LookupPath("dir/b")!;
        Assert.Equal((54L, 1L), (b.ContentOffset, b.Size));
        var hl = v2.LookupPath("hl")!;
        Assert.Equal(hl.FilenameOffset - 572, hl.HardlinkTargetOffset);
        Assert.Equal(txt.FilenameOffset, hl.HardlinkTargetOffset);

        // Same tree, field by field, except where the inode (an offset) lives.
        static IEnumerable<string> Strip(IEnumerable<string> lines) => lines.Select(l => System.Text.RegularExpressions.Regex.Replace(l, "ino=(link→)?[0-9]+", "ino=$1"));
        var w1 = Vectors.Walk(v1);
        var w2 = Vectors.Walk(v2);
        Assert.Equal(7, w1.Count);
        Assert.Equal(Strip(w1), Strip(w2));
        Assert.Contains(w1, l => l.StartsWith("a.txt File 100644 1000:1000 1700000001.000000000", StringComparison.Ordinal) &&
                                 l.Contains("size=6 sha=5891b5b522d5df08", StringComparison.Ordinal) && l.Contains("user.comment=6869", StringComparison.Ordinal));
    }

    [Fact]
    public void HardlinkCountsComeFromTheTreeOrTheCatalog()
    {
        foreach (var make in new Func<PxarArchive>[] { Vectors.V1, Vectors.V2 })
        {
            using var a = make();
            var txt = a.LookupPath("a.txt")!;
            Assert.Equal(new Dictionary<ulong, int> { [txt.Inode] = 2 }, a.HardlinkCounts());
            var catalog = new PxarCatalog(new MemoryPxarSource(Vectors.Bytes("catalog.pcat1")));
            Assert.Equal(new Dictionary<ulong, int> { [txt.Inode] = 2 }, a.HardlinkCounts(catalog, catalog.RootOffset));
        }
    }

    [Fact]
    public void FileStreamsSeekAndReadRanges()
    {
        using var a = Vectors.V2();
        var txt = a.LookupPath("a.txt")!;
        Span<byte> buf = stackalloc byte[10];
        Assert.Equal(3, a.Read(txt, 3, buf));
        Assert.Equal("lo\n"u8.ToArray(), buf[..3].ToArray());
        Assert.Equal(0, a.Read(txt, 6, buf));
        Assert.Equal(0, a.Read(txt, 100, buf));
        using var s = a.OpenRead(txt);
        s.Seek(-2, SeekOrigin.End);
        Assert.Equal(2, s.Read(buf));
        Assert.Equal("o\n"u8.ToArray(), buf[..2].ToArray());
    }

    [Fact]
    public void V1ReaderWithoutPayloadStreamRefusesASplitArchive()
    {
        var ex = Assert.Throws<PxarException>(() => PxarArchive.Open(new MemoryPxarSource(Vectors.Bytes("v2.mpxar"), "v2.mpxar")));
        Assert.Contains("payload stream", ex.Message);
        Assert.Equal("v2.mpxar", ex.Archive);
    }
}
