using System.Diagnostics;
using RestoreFs.TestSupport;

namespace RestoreFs.Pxar.Tests;

/// <summary>
/// Hard-link counts of split archives from a scan of the metadata stream's item headers: equal to a walk of the tree and
/// to the file system's own st_nlink, over a real directory with links across directories; malformed streams end in a
/// <see cref="PxarException"/>; payload chunks are never read.
/// </summary>
public sealed class HardlinkScanTests : IDisposable
{
    private readonly TempDirectory dir = new("restorefs-pxar-links");

    /// <summary>Counts the reads of a source (to show which stream a scan touches).</summary>
    private sealed class CountingSource(IPxarSource inner) : IPxarSource
    {
        public long Reads;

        public string Name => inner.Name;

        public long Length => inner.Length;

        public int Read(long offset, Span<byte> dst)
        {
            Interlocked.Increment(ref Reads);
            return inner.Read(offset, dst);
        }
    }

    /// <summary>12 directories of 40 small files, and 60 files with 1…4 more names in other directories.</summary>
    private string MakeLinkedTree()
    {
        var root = dir.Combine("tree");
        var r = new Random(14);
        var files = new List<string>();
        for (var d = 0; d < 12; d++)
        {
            Directory.CreateDirectory(Path.Combine(root, $"d{d:D2}", "sub"));
            for (var i = 0; i < 40; i++)
            {
                var path = Path.Combine(root, $"d{d:D2}", i % 3 == 0 ? "sub" : "", $"f{i:D2}");
                var data = new byte[r.Next(0, 3000)];
                r.NextBytes(data);
                File.WriteAllBytes(path, data);
                files.Add(path);
            }
        }

        // Links from later and earlier directories, 1…4 extra names each (name order decides which name is the target).
        var linked = 0;
        for (var k = 0; k < 60; k++)
        {
            var target = files[r.Next(files.Count)];
            for (var n = r.Next(1, 5); n > 0; n--)
            {
                var link = Path.Combine(root, $"d{r.Next(12):D2}", $"link{k:D2}-{n}");
                if (!File.Exists(link))
                {
                    Native.Link(target, link);
                    linked++;
                }
            }
        }

        Assert.True(linked > 60);
        return root;
    }

    [Fact]
    public void ScanEqualsTheWalkAndTheFileSystemsLinkCounts()
    {
        var root = MakeLinkedTree();
        var meta = new MemoryStream();
        var payload = new MemoryStream();
        DirectoryArchiver.Write(root, meta, payload, null);
        var payloadSource = new CountingSource(new MemoryPxarSource(payload.ToArray(), "links.ppxar"));
        using var a = PxarArchive.Open(new MemoryPxarSource(meta.ToArray(), "links.mpxar"), payloadSource);
        Assert.Equal(2, a.FormatVersion);

        var readsBefore = payloadSource.Reads;
        var sw = Stopwatch.StartNew();
        var scanned = a.HardlinkCountsByScan();
        var scanMs = sw.ElapsedMilliseconds;
        Assert.Equal(readsBefore, payloadSource.Reads); // no payload chunk touched
        sw.Restart();
        var walked = a.HardlinkCountsByWalk();
        Console.WriteLine($"hard links: {scanned.Count} linked files, scan {scanMs} ms, walk {sw.ElapsedMilliseconds} ms");
        Assert.Equal(walked.OrderBy(p => p.Key), scanned.OrderBy(p => p.Key));
        Assert.Equal(scanned, a.HardlinkCounts());

        // Against the file system: every name's nlink (find prints st_nlink with %n).
        var expected = 0;
        var listing = ProcessRunner.Run("find", [root, "-type", "f", "-printf", "%n %P\\n"], TimeSpan.FromSeconds(60)).EnsureSuccess("find");
        foreach (var line in listing.StdOut.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var space = line.IndexOf(' ');
            var (nlink, path) = (int.Parse(line[..space]), line[(space + 1)..]);
            var entry = a.LookupPath(path)!;
            Assert.Equal((path, nlink), (path, scanned.TryGetValue(entry.Inode, out var n) ? n : 1));
            expected += nlink > 1 ? 1 : 0;
        }

        Assert.True(expected > 40, $"{expected} names with links");
    }

    /// <summary>Counts loads of fixed-size blocks through a small LRU, as a chunk cache would decode chunks.</summary>
    private sealed class BlockLoadingSource(IPxarSource inner, int blockSize, int cached) : IPxarSource
    {
        private readonly LinkedList<long> lru = new();

        public int Loads { get; private set; }

        public string Name => inner.Name;

        public long Length => inner.Length;

        public int Read(long offset, Span<byte> dst)
        {
            for (var b = offset / blockSize; b <= (offset + Math.Max(dst.Length, 1) - 1) / blockSize; b++)
            {
                if (!lru.Remove(b))
                {
                    Loads++;
                    if (lru.Count == cached)
                    {
                        lru.RemoveLast();
                    }
                }

                lru.AddFirst(b);
            }

            return inner.Read(offset, dst);
        }
    }

    /// <summary>
    /// A unified archive with a catalog: the counts from the catalog's hard-link names equal the walk's, and the archive
    /// is read in stream order — through a cache of four 64 KiB blocks, each block is loaded at most about twice (a
    /// directory's entry and its goodbye table lie at its two ends). Names resolved one by one from the root, each
    /// target read on the way, loaded this archive's 13 blocks 87 times.
    /// </summary>
    [Fact]
    public void CatalogCountsEqualTheWalkAndReadTheArchiveInStreamOrder()
    {
        var root = MakeLinkedTree();
        var archive = new MemoryStream();
        var catalogBytes = new MemoryStream();
        var writer = new PxarCatalogWriter(catalogBytes);
        writer.BeginDirectory("links.pxar.didx"u8);
        DirectoryArchiver.Write(root, archive, null, writer);
        writer.EndDirectory();
        writer.Finish();
        var bytes = archive.ToArray();
        const int BlockSize = 64 * 1024;
        var blocks = (bytes.Length + BlockSize - 1) / BlockSize;
        Assert.True(blocks >= 8, $"{blocks} blocks");

        using var walkedArchive = PxarArchive.Open(new MemoryPxarSource(bytes, "links.pxar"));
        var walked = walkedArchive.HardlinkCountsByWalk();
        var source = new BlockLoadingSource(new MemoryPxarSource(bytes, "links.pxar"), BlockSize, cached: 4);
        using var a = PxarArchive.Open(source);
        var catalog = new PxarCatalog(new MemoryPxarSource(catalogBytes.ToArray(), "catalog.pcat1"));
        var loadsBefore = source.Loads;
        var counted = a.HardlinkCounts(catalog, catalog.Root.Single().ChildBlockOffset);
        var loads = source.Loads - loadsBefore;
        Console.WriteLine($"catalog count: {counted.Count} linked files, {loads} block loads for {blocks} blocks");
        Assert.True(counted.Count > 40);
        Assert.Equal(walked.OrderBy(p => p.Key), counted.OrderBy(p => p.Key));
        Assert.True(loads <= 2 * blocks, $"{loads} block loads for {blocks} blocks");
    }

    /// <summary>A catalog in which two directories list the same block (a tree no encoder writes; followed naively, n
    /// such levels are 2^n visits) is refused with a <see cref="PxarException"/> naming the catalog.</summary>
    [Fact]
    public void CatalogWithASharedDirectoryBlockIsRefused()
    {
        // magic | block 8: h "x" | block 13: d "p" → 8, d "q" → 8 | root 23: d "a.pxar.didx" → 13 | root offset.
        byte[] catalogBytes =
        [
            .. PxarCatalogWriter.Magic,
            4, 1, (byte)'h', 1, (byte)'x',
            9, 2, (byte)'d', 1, (byte)'p', 5, (byte)'d', 1, (byte)'q', 5,
            15, 1, (byte)'d', 11, .. "a.pxar.didx"u8, 10,
            23, 0, 0, 0, 0, 0, 0, 0,
        ];
        var catalog = new PxarCatalog(new MemoryPxarSource(catalogBytes, "shared.pcat1"));
        var block = catalog.Root.Single().ChildBlockOffset;
        Assert.Equal(13, block);
        using var a = Vectors.V1();
        var e = Assert.Throws<PxarException>(() => a.HardlinkCounts(catalog, block));
        Assert.Equal("shared.pcat1", e.Archive);
        Assert.Contains("two directories", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ScanOfACorruptedStreamEndsInAPxarExceptionOrCounts()
    {
        var original = Vectors.Bytes("v2.mpxar");
        var payload = Vectors.Bytes("v2.ppxar");
        var sw = Stopwatch.StartNew();
        var failures = 0;
        for (var i = 0; i < original.Length; i++)
        {
            foreach (var mask in new byte[] { 0x01, 0x80, 0xff })
            {
                var bytes = (byte[])original.Clone();
                bytes[i] ^= mask;
                PxarArchive a;
                try
                {
                    a = PxarArchive.Open(new MemoryPxarSource(bytes, "hostile.mpxar"), new MemoryPxarSource(payload, "hostile.ppxar"));
                }
                catch (PxarException)
                {
                    continue;
                }

                using (a)
                {
                    try
                    {
                        foreach (var (_, n) in a.HardlinkCountsByScan())
                        {
                            Assert.InRange(n, 2, original.Length);
                        }
                    }
                    catch (PxarException e)
                    {
                        Assert.Equal("hostile.mpxar", e.Archive);
                        failures++;
                    }
                }
            }
        }

        Assert.True(failures > 0);
        Assert.True(sw.ElapsedMilliseconds < 20_000, $"took {sw.ElapsedMilliseconds} ms");
        Assert.Throws<InvalidOperationException>(() => Vectors.V1().HardlinkCountsByScan());
    }

    public void Dispose() => dir.Dispose();

    private static class Native
    {
        [System.Runtime.InteropServices.DllImport("libc", SetLastError = true, EntryPoint = "link")]
        private static extern int LinkNative(string oldPath, string newPath);

        public static void Link(string target, string link)
        {
            if (LinkNative(target, link) != 0)
            {
                throw new IOException($"link {link} → {target} failed: errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()}");
            }
        }
    }
}
