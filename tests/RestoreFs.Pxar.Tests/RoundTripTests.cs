using System.Text;

namespace RestoreFs.Pxar.Tests;

/// <summary>A real directory tree → encoder (v1 and split v2) → reader: equal to find/getfattr's view of the tree on every field.</summary>
[Collection("torture")]
public class RoundTripTests(TortureTree tree)
{
    private static string L(byte[] b) => Encoding.Latin1.GetString(b);

    private static char TypeLetter(PxarEntryKind k) => k switch
    {
        PxarEntryKind.Directory => 'd',
        PxarEntryKind.File => 'f',
        PxarEntryKind.Symlink => 'l',
        PxarEntryKind.CharDevice => 'c',
        PxarEntryKind.BlockDevice => 'b',
        PxarEntryKind.Fifo => 'p',
        _ => 's',
    };

    internal static void Collect(PxarArchive a, PxarEntry dir, string prefix, SortedDictionary<string, string> listing,
        SortedDictionary<string, string> xattrs, Dictionary<ulong, List<string>> inodes, Dictionary<string, PxarEntry> entries)
    {
        foreach (var e in a.List(dir))
        {
            var path = prefix + L(e.Name);
            var size = e.Kind == PxarEntryKind.File ? e.Size.ToString() : "-";
            var target = e.Kind == PxarEntryKind.Symlink ? L(e.SymlinkTarget!) : "";
            listing[path] = $"{TypeLetter(e.Kind)} {Convert.ToString(e.Mode & 0xfff, 8)} {e.Stat.Uid}:{e.Stat.Gid} {e.Stat.MtimeSeconds}.{e.Stat.MtimeNanos:D9} {size} {target}";
            var x = e.AllXattrs();
            if (x.Count > 0)
            {
                xattrs[path] = string.Join(",", x.Select(v => L(v.Name) + "=" + Convert.ToHexStringLower(v.Value)).Order(StringComparer.Ordinal));
            }

            if (e.Kind == PxarEntryKind.File)
            {
                (inodes.TryGetValue(e.Inode, out var names) ? names : inodes[e.Inode] = []).Add(path);
            }

            entries[path] = e;
            Assert.Equal(e.Inode, a.Lookup(dir, e.Name)!.Inode);
            if (e.IsDirectory)
            {
                Collect(a, e, path + "/", listing, xattrs, inodes, entries);
            }
        }
    }

    [Fact]
    public void TortureTreeSurvivesV1AndSplitV2OnEveryField()
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var expected = tree.ExpectedListing();
        var expectedXattrs = tree.ExpectedXattrs();
        Assert.Contains("acl", expectedXattrs.Keys);
        Assert.Contains("caps", expectedXattrs.Keys);

        foreach (var split in new[] { false, true })
        {
            var meta = new MemoryStream();
            var payload = split ? new MemoryStream() : null;
            var catalogStream = new MemoryStream();
            var catalog = new PxarCatalogWriter(catalogStream);
            sw.Restart();
            var stats = DirectoryArchiver.Write(tree.Root, meta, payload, catalog);
            Console.WriteLine($"archived in {sw.ElapsedMilliseconds} ms");
            catalog.Finish();
            Assert.Equal(2, stats.Hardlinks);

            using var a = PxarArchive.Open(new MemoryPxarSource(meta.ToArray(), "torture"), payload is null ? null : new MemoryPxarSource(payload.ToArray(), "torture.ppxar"));
            Assert.Equal(split ? 2 : 1, a.FormatVersion);
            var listing = new SortedDictionary<string, string>(StringComparer.Ordinal);
            var xattrs = new SortedDictionary<string, string>(StringComparer.Ordinal);
            var inodes = new Dictionary<ulong, List<string>>();
            var entries = new Dictionary<string, PxarEntry>();
            sw.Restart();
            Collect(a, a.Root, "", listing, xattrs, inodes, entries);
            xattrs["."] = string.Join(",", a.Root.AllXattrs().Select(v => L(v.Name) + "=" + Convert.ToHexStringLower(v.Value)).Order(StringComparer.Ordinal));
            Console.WriteLine($"read back in {sw.ElapsedMilliseconds} ms");

            Assert.Equal(expected.Keys, listing.Keys);
            foreach (var (path, line) in expected)
            {
                Assert.Equal((path, line), (path, listing[path]));
            }

            Assert.Equal(expectedXattrs, xattrs);
            Assert.Equal((1234567890L, 500000000u), (a.Root.Stat.MtimeSeconds, a.Root.Stat.MtimeNanos));

            // Hard links: one inode, three names; contents equal the file's.
            Assert.Equal(["a.txt", "hard1", "sub/hard2"], inodes[entries["a.txt"].Inode].Order(StringComparer.Ordinal));
            Assert.True(entries["hard1"].IsHardlink && entries["sub/hard2"].IsHardlink && !entries["a.txt"].IsHardlink);
            Assert.Equal(new Dictionary<ulong, int> { [entries["a.txt"].Inode] = 3 }, a.HardlinkCounts());

            // Devices and contents.
            Assert.Equal((1UL, 3UL), (entries["chr"].DeviceMajor, entries["chr"].DeviceMinor));
            Assert.Equal((7UL, 200UL), (entries["blk"].DeviceMajor, entries["blk"].DeviceMinor));
            foreach (var (path, e) in entries.Where(p => p.Value.Kind == PxarEntryKind.File))
            {
                if (!path.Contains('\u00ff', StringComparison.Ordinal) && !path.StartsWith("zero", StringComparison.Ordinal))
                {
                    Assert.Equal(File.ReadAllBytes(Path.Combine(tree.Root, path)), Vectors.ReadAll(a, e));
                }
            }

            Assert.Equal("x"u8.ToArray(), Vectors.ReadAll(a, a.LookupPath(Encoding.Latin1.GetBytes("bad\u00ff\u00fename"))!));
            var deep = a.LookupPath(string.Concat(Enumerable.Repeat("d/", 30)).Insert(0, "deep/").TrimEnd('/') + "/bottom");
            Assert.Null(deep);
            Assert.Equal("bottom\n"u8.ToArray(), Vectors.ReadAll(a, a.LookupPath("deep/" + string.Concat(Enumerable.Repeat("d/", 29)) + "bottom")!));

            // The catalog lists the same names and file sizes.
            var cat = new PxarCatalog(new MemoryPxarSource(catalogStream.ToArray(), "catalog"));
            var root = cat.Root;
            Assert.Equal(a.List(a.Root).Select(e => L(e.Name)), root.Select(e => L(e.Name)));
            Assert.Equal(PxarCatalogEntryType.Hardlink, root.Single(e => e.NameText == "hard1").Type);
            Assert.Equal(entries["bigfile"].Size, root.Single(e => e.NameText == "bigfile").Size);
            Assert.Equal(5000, cat.ReadBlock(root.Single(e => e.NameText == "big").ChildBlockOffset).Count);
        }
    }

    [Fact]
    public void ExtractingTheArchiveGivesBackTheTree()
    {
        foreach (var split in new[] { false, true })
        {
            var meta = new MemoryStream();
            var payload = split ? new MemoryStream() : null;
            DirectoryArchiver.Write(tree.Root, meta, payload);
            using var a = PxarArchive.Open(new MemoryPxarSource(meta.ToArray(), "torture"), payload is null ? null : new MemoryPxarSource(payload.ToArray(), "p"));
            var target = tree.Combine($"extract-{split}");
            Directory.CreateDirectory(target);
            Assert.Empty(Extractor.Extract(a, a.Root, target));
            Assert.Equal(tree.ExpectedListing(), tree.ExpectedListing(target));
            Assert.Equal(tree.ExpectedXattrs(), tree.ExpectedXattrs(target));
            Assert.Equal(File.ReadAllBytes(Path.Combine(tree.Root, "bigfile")), File.ReadAllBytes(Path.Combine(target, "bigfile")));
            Assert.Equal(3, LinkCount(Path.Combine(target, "sub/hard2")));
            RestoreFs.TestSupport.ProcessRunner.Run("rm", ["-rf", target], TimeSpan.FromMinutes(1)).EnsureSuccess("rm");
        }
    }

    private static int LinkCount(string path)
    {
        var r = RestoreFs.TestSupport.ProcessRunner.Run("stat", ["-c", "%h", path], TimeSpan.FromSeconds(10));
        return int.Parse(r.EnsureSuccess("stat").StdOut.Trim(), System.Globalization.CultureInfo.InvariantCulture);
    }
}
