using RestoreFs.TestSupport;

namespace RestoreFs.Pxar.Tests;

/// <summary>Backing up a tree leaves the access times of its files and directories as they were (O_NOATIME, as PBS's
/// client reads): a backup of a live server must not look like every file was just read.</summary>
public sealed class BackupAccessTimeTests : IDisposable
{
    private static readonly DateTime Old = new(2001, 2, 3, 4, 5, 6, DateTimeKind.Utc);
    private readonly TempDirectory dir = new("restorefs-pxar-atime");

    public void Dispose() => dir.Dispose();

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Backing_up_a_tree_leaves_its_access_times_alone(bool split)
    {
        Requires.Root();
        var root = dir.Combine("tree");
        Directory.CreateDirectory(Path.Combine(root, "etc", "deep"));
        File.WriteAllText(Path.Combine(root, "etc", "hostname"), "server\n");
        File.WriteAllBytes(Path.Combine(root, "etc", "deep", "data.bin"), new byte[300_000]);
        File.WriteAllText(Path.Combine(root, "top.txt"), "top\n");
        // Listed first, then aged, then checked by stat only: nothing here reads a directory after the ageing.
        var entries = Directory.EnumerateFileSystemEntries(root, "*", SearchOption.AllDirectories).Append(root).ToList();
        foreach (var entry in entries)
        {
            File.SetLastAccessTimeUtc(entry, Old);
        }

        var meta = new MemoryStream();
        var stats = DirectoryArchiver.Write(root, meta, split ? new MemoryStream() : null);
        Assert.Equal(3, stats.Files);
        var changed = entries.Where(e => File.GetLastAccessTimeUtc(e) != Old).Select(e => Path.GetRelativePath(root, e)).ToList();
        Assert.True(changed.Count == 0, $"access times changed: {string.Join(", ", changed)}");
    }
}
