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

    [Fact]
    public void ScanEqualsTheWalkAndTheFileSystemsLinkCounts()
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
