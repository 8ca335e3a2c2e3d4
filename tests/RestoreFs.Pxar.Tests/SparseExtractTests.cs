using RestoreFs.TestSupport;

namespace RestoreFs.Pxar.Tests;

/// <summary>Extraction leaves the all-zero blocks of files as holes (as PBS's extractor does): a sparse file takes back
/// the room it had, byte for byte the same.</summary>
public sealed class SparseExtractTests : IDisposable
{
    private readonly TempDirectory dir = new("restorefs-pxar-sparse");

    public void Dispose() => dir.Dispose();

    private static long AllocatedBytes(string path) =>
        long.Parse(ProcessRunner.Run("stat", ["-c", "%b", path], TimeSpan.FromSeconds(10)).EnsureSuccess("stat").StdOut.Trim(),
            System.Globalization.CultureInfo.InvariantCulture) * 512;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Holes_stay_holes_and_the_bytes_are_the_same(bool split)
    {
        var src = dir.Combine($"src-{split}");
        Directory.CreateDirectory(src);
        var data = new byte[10_000];
        new Random(5).NextBytes(data);
        using (var f = File.Create(Path.Combine(src, "image.raw")))
        {
            f.Position = 32 << 20; // a hole, data, a hole, a little data at the very end (at no block boundary)
            f.Write(data);
            f.Position = (64 << 20) - 7;
            f.Write(data.AsSpan(0, 7));
        }

        using (var f = File.Create(Path.Combine(src, "trailing-hole.db")))
        {
            f.Write(data);
            f.SetLength(48 << 20);
        }

        File.WriteAllBytes(Path.Combine(src, "zeros.bin"), new byte[3 << 20]); // written zeros: allocated in the source
        File.WriteAllBytes(Path.Combine(src, "dense.bin"), data);

        var meta = new MemoryStream();
        var payload = split ? new MemoryStream() : null;
        DirectoryArchiver.Write(src, meta, payload);
        using var archive = PxarArchive.Open(new MemoryPxarSource(meta.ToArray(), "sparse"),
            payload is null ? null : new MemoryPxarSource(payload.ToArray(), "sparse-payload"));
        var target = dir.Combine($"out-{split}");
        Directory.CreateDirectory(target);
        Assert.Empty(Extractor.Extract(archive, archive.Root, target));

        foreach (var name in new[] { "image.raw", "trailing-hole.db", "zeros.bin", "dense.bin" })
        {
            var (a, b) = (Path.Combine(src, name), Path.Combine(target, name));
            Assert.Equal(new FileInfo(a).Length, new FileInfo(b).Length);
            Assert.True(File.ReadAllBytes(a).AsSpan().SequenceEqual(File.ReadAllBytes(b)), name + " differs");
        }

        Assert.True(AllocatedBytes(Path.Combine(target, "image.raw")) <= 64 << 10, "image.raw: its holes were written");
        Assert.True(AllocatedBytes(Path.Combine(target, "trailing-hole.db")) <= 64 << 10, "trailing-hole.db: its hole was written");
        Assert.True(AllocatedBytes(Path.Combine(target, "zeros.bin")) <= 64 << 10, "zeros.bin: its zeros were written");
        Assert.True(AllocatedBytes(Path.Combine(target, "dense.bin")) >= data.Length, "dense.bin lost blocks");
    }
}
