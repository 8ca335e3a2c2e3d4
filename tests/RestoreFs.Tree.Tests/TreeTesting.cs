using System.Text;
using Microsoft.Extensions.Logging.Abstractions;
using RestoreFs.Datastore;
using RestoreFs.Fuse;
using RestoreFs.TestSupport;

namespace RestoreFs.Tree.Tests;

/// <summary>The tree of a mount without a kernel, as the node-level tests build and walk it.</summary>
internal static class TreeTesting
{
    /// <summary>A mount's context over <paramref name="store"/>: shown as uid 1234, gid 55; run-time files in <paramref name="dir"/>.</summary>
    public static TreeContext Context(TempDirectory dir, string store, Func<TreeOptions, TreeOptions>? adjust = null)
    {
        var options = new TreeOptions
        {
            Uid = 1234, Gid = 55, RuntimeDirectory = dir.Combine("run"), StorePath = store, MountPoint = dir.Combine("mnt"),
        };
        return new(DatastoreReader.Open(store), adjust is null ? options : adjust(options), NullLoggerFactory.Instance);
    }

    /// <summary>Flips the last byte of a snapshot's <c>index.json.blob</c> (<paramref name="snapshot"/>: "vm/100/2026-…Z"), so
    /// that any further read of the manifest fails its checks.</summary>
    public static void DamageManifest(TreeContext context, string snapshot)
    {
        var path = Path.Combine(context.Store.GetSnapshot(BackupNamespace.Root, snapshot).DirectoryPath, "index.json.blob");
        var bytes = File.ReadAllBytes(path);
        bytes[^1] ^= 1;
        File.WriteAllBytes(path, bytes);
    }

    /// <summary>Looks <paramref name="path"/> up name by name from <paramref name="from"/>, as the kernel would.</summary>
    public static async Task<FuseNode> Walk(FuseNode from, FuseRequestContext ctx, IEnumerable<string> path)
    {
        var node = from;
        foreach (var part in path)
        {
            node = await ((IFuseDirectory)node).LookupAsync(Encoding.UTF8.GetBytes(part), ctx, default)
                   ?? throw new FileNotFoundException(string.Join('/', path));
        }

        return node;
    }
}
