using System.Security.Cryptography;

namespace RestoreFs.Pxar.Tests;

/// <summary>The archives of Vectors/ (made by the real pxar encoder; see Vectors/README.md) and helpers to walk an archive.</summary>
internal static class Vectors
{
    public static byte[] Bytes(string name) => File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "Vectors", name));

    public static PxarArchive V1() => PxarArchive.Open(new MemoryPxarSource(Bytes("v1.pxar"), "v1.pxar"));

    public static PxarArchive V2() =>
        PxarArchive.Open(new MemoryPxarSource(Bytes("v2.mpxar"), "v2.mpxar"), new MemoryPxarSource(Bytes("v2.ppxar"), "v2.ppxar"));

    public static string Sha256(byte[] bytes) => Convert.ToHexStringLower(SHA256.HashData(bytes));

    public static byte[] ReadAll(PxarArchive archive, PxarEntry file)
    {
        using var stream = archive.OpenRead(file);
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }

    /// <summary>Every entry below <paramref name="dir"/>, depth first, as "path kind mode uid gid mtime extra" lines; touches every field.</summary>
    public static List<string> Walk(PxarArchive archive, PxarEntry? dir = null, string prefix = "")
    {
        dir ??= archive.Root;
        var lines = new List<string>();
        foreach (var child in archive.List(dir))
        {
            var path = prefix + System.Text.Encoding.UTF8.GetString(child.Name);
            var extra = child.Kind switch
            {
                PxarEntryKind.File => $"size={child.Size} sha={Sha256(ReadAll(archive, child))[..16]}",
                PxarEntryKind.Symlink => "-> " + System.Text.Encoding.UTF8.GetString(child.SymlinkTarget!),
                PxarEntryKind.CharDevice or PxarEntryKind.BlockDevice => $"dev={child.DeviceMajor}:{child.DeviceMinor}",
                _ => "",
            };
            var xattrs = string.Join(",", child.AllXattrs().Select(x => System.Text.Encoding.UTF8.GetString(x.Name) + "=" + Convert.ToHexStringLower(x.Value)));
            lines.Add($"{path} {child.Kind} {Convert.ToString(child.Mode, 8)} {child.Stat.Uid}:{child.Stat.Gid} {child.Stat.MtimeSeconds}.{child.Stat.MtimeNanos:D9} " +
                      $"ino={(child.IsHardlink ? "link→" : "")}{child.Inode} {extra} [{xattrs}] q={child.QuotaProjectId} f={child.Stat.Flags}");
            if (child.IsDirectory)
            {
                lines.AddRange(Walk(archive, child, path + "/"));
                foreach (var grandchild in archive.List(child))
                {
                    Assert.NotNull(archive.Lookup(child, grandchild.Name));
                }
            }
        }

        return lines;
    }
}
