using System.Text;
using RestoreFs.TestSupport;

namespace RestoreFs.Pxar.Tests;

/// <summary>
/// chattr flags and quota project ids (what PBS keeps beside the stat) survive a backup and an extraction: on a real
/// xfs (a loop-mounted image, so immutable files cannot outlive the test; xfs keeps project ids without quotas, which
/// this host kernel's ext4 cannot), a tree with immutable and append-only files (one with a second hard link), an
/// immutable directory with a file in it, nodump, noatime and project ids; `lsattr` of the extracted tree equals the
/// source's.
/// </summary>
public sealed class InodeFlagsTests : IDisposable
{
    private readonly TempDirectory dir = new("restorefs-pxar-chattr");
    private readonly string mnt;

    public InodeFlagsTests()
    {
        Requires.Root();
        var image = dir.Combine("fs.img");
        mnt = dir.Combine("mnt");
        Directory.CreateDirectory(mnt);
        Run("truncate", "-s", "320M", image);
        Run("mkfs.xfs", "-q", image);
        Run("mount", "-o", "loop", image, mnt);
    }

    public void Dispose()
    {
        MountTable.LazyUnmount(mnt);
        dir.Dispose();
    }

    private static string Run(string tool, params string[] args) =>
        ProcessRunner.Run(tool, args, TimeSpan.FromMinutes(1)).EnsureSuccess(tool + " " + string.Join(' ', args)).StdOut;

    /// <summary>Relative path → lsattr's flags and project id (`lsattr -p -d`), for every entry below a root.</summary>
    private static SortedDictionary<string, string> Attributes(string root)
    {
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var path in Directory.EnumerateFileSystemEntries(root, "*", SearchOption.AllDirectories).Append(root))
        {
            if (new FileInfo(path).LinkTarget is not null)
            {
                continue;
            }

            var fields = Run("lsattr", "-p", "-d", path).Split(' ', StringSplitOptions.RemoveEmptyEntries);
            result[Path.GetRelativePath(root, path)] = fields[0] + " " + fields[1];
        }

        return result;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Chattr_flags_and_project_ids_survive_backup_and_extraction(bool split)
    {
        var src = Path.Combine(mnt, "src");
        Directory.CreateDirectory(Path.Combine(src, "locked"));
        Directory.CreateDirectory(Path.Combine(src, "synced"));
        File.WriteAllText(Path.Combine(src, "immutable.bin"), "cannot change\n");
        File.WriteAllText(Path.Combine(src, "append.log"), "line 1\n");
        File.WriteAllText(Path.Combine(src, "nodump.txt"), "skip me\n");
        File.WriteAllText(Path.Combine(src, "noatime.txt"), "quiet\n");
        File.WriteAllText(Path.Combine(src, "locked", "inside.txt"), "in a locked directory\n");
        File.CreateSymbolicLink(Path.Combine(src, "link"), "immutable.bin");
        Run("ln", Path.Combine(src, "immutable.bin"), Path.Combine(src, "synced", "second-name.bin"));
        Run("chattr", "-p", "42", Path.Combine(src, "synced"));
        Run("chattr", "-p", "7", Path.Combine(src, "nodump.txt"));
        Run("chattr", "+d", Path.Combine(src, "nodump.txt"));
        Run("chattr", "+A", Path.Combine(src, "noatime.txt"));
        Run("chattr", "+a", Path.Combine(src, "append.log"));
        Run("chattr", "+i", Path.Combine(src, "immutable.bin"));
        Run("chattr", "+i", Path.Combine(src, "locked"));
        var expected = Attributes(src);
        Assert.Contains("i", expected["immutable.bin"].Split(' ')[1]);
        Assert.StartsWith("42 ", expected["synced"], StringComparison.Ordinal);

        // Nothing is cleaned up by hand: the file system image goes with the test (immutable files and all).
        {
            var meta = new MemoryStream();
            var payload = split ? new MemoryStream() : null;
            DirectoryArchiver.Write(src, meta, payload);
            using var archive = PxarArchive.Open(new MemoryPxarSource(meta.ToArray(), "flags"),
                payload is null ? null : new MemoryPxarSource(payload.ToArray(), "flags-payload"));
            var immutable = archive.LookupPath("immutable.bin"u8.ToArray())!;
            Assert.Equal(0x400000UL, immutable.Stat.Flags & 0x400000UL); // pxar's immutable bit
            Assert.Equal(42UL, archive.LookupPath("synced"u8.ToArray())!.QuotaProjectId);
            Assert.Null(archive.LookupPath("noatime.txt"u8.ToArray())!.QuotaProjectId);

            var target = Path.Combine(mnt, "out");
            Directory.CreateDirectory(target);
            {
                Assert.Empty(Extractor.Extract(archive, archive.Root, target));
                var got = Attributes(target);
                got.Remove("."); // the target's own attributes are the source root's; compared below with its name
                var want = new SortedDictionary<string, string>(expected, StringComparer.Ordinal);
                want.Remove(".");
                Assert.Equal(want, got);
                Assert.Equal("cannot change\n", File.ReadAllText(Path.Combine(target, "synced", "second-name.bin")));
                Assert.Equal(2, int.Parse(Run("stat", "-c", "%h", Path.Combine(target, "immutable.bin")).Trim(), System.Globalization.CultureInfo.InvariantCulture));
            }
        }
    }
}
