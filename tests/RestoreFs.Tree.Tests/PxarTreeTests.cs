using System.Text;
using RestoreFs.Datastore;
using RestoreFs.Fuse;
using RestoreFs.Pxar;
using RestoreFs.TestSupport;

namespace RestoreFs.Tree.Tests;

/// <summary>
/// pxar archives at node level, without a kernel: what the archive's directory shows before and after it is opened,
/// and where listings come from — a v1 archive's from its catalog at every depth (name-only entries: the catalog block
/// of each directory is found from its parent's), a split archive's from its entries.
/// </summary>
public sealed class PxarTreeTests : IAsyncDisposable
{
    private static readonly DateTimeOffset T0 = DateTimeOffset.Parse("2026-03-04T05:06:07Z");
    private static readonly DateTime RootMtime = new(2020, 1, 2, 3, 4, 5, DateTimeKind.Utc);
    private static readonly DateTime FileMtime = new(1999, 12, 31, 23, 59, 58, DateTimeKind.Utc);
    private const string Time = "2026-03-04T05:06:07Z";
    private readonly TempDirectory dir = new("restorefs-pxar-tree");
    private readonly TreeContext context;
    private readonly RootDirectory root;
    private readonly FuseRequestContext ctx = new();

    public PxarTreeTests()
    {
        var tree = dir.Combine("tree");
        Directory.CreateDirectory(Path.Combine(tree, "a", "b", "c"));
        File.WriteAllText(Path.Combine(tree, "a", "b", "c", "deep.txt"), "deep");
        File.WriteAllText(Path.Combine(tree, "a", "b", "one.txt"), "1");
        File.WriteAllText(Path.Combine(tree, "a", "x.txt"), "x");
        File.WriteAllText(Path.Combine(tree, "top.txt"), "top");
        File.CreateSymbolicLink(Path.Combine(tree, "a", "b", "c", "deep-link"), "../one.txt");
        File.SetUnixFileMode(Path.Combine(tree, "a", "x.txt"), UnixFileMode.UserRead | UnixFileMode.OtherExecute);
        File.SetLastWriteTimeUtc(Path.Combine(tree, "a", "x.txt"), FileMtime);
        var setfattr = ProcessRunner.Shell($"setfattr -n user.note -v kept '{Path.Combine(tree, "top.txt")}' && ln '{Path.Combine(tree, "top.txt")}' '{Path.Combine(tree, "a", "top-link")}'");
        Assert.True(setfattr.ExitCode == 0, setfattr.StdErr);
        File.SetUnixFileMode(tree, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute);
        Directory.SetLastWriteTimeUtc(tree, RootMtime);

        var store = dir.Combine("store");
        foreach (var (id, split) in new[] { ("7", false), ("8", true) })
        {
            using var writer = BackupWriter.Create(store, new BackupGroup(BackupNamespace.Root, "ct", id), T0, null, precreateChunkDirectories: false);
            PxarBackup.Write(writer, [new PxarBackupSource("root.pxar", tree)], new PxarBackupOptions(Split: split));
            writer.Finish();
        }

        context = TreeTesting.Context(dir, store);
        root = new RootDirectory(context);
    }

    private Task<FuseNode> Walk(params string[] path) => TreeTesting.Walk(root, ctx, path);

    private async Task<IReadOnlyList<FuseDirectoryEntry>> List(params string[] path) => await ((IFuseDirectory)await Walk(path)).ListAsync(ctx, default);

    private static string[] Names(IEnumerable<FuseDirectoryEntry> entries) => entries.Select(e => Encoding.UTF8.GetString(e.Name.Span)).Order(StringComparer.Ordinal).ToArray();

    [Theory]
    [InlineData("7")]
    [InlineData("8")]
    public async Task Archive_directory_has_the_roots_attributes_and_is_listed_by_name_until_opened(string id)
    {
        var before = (await List("snapshots", "ct", id, Time)).Single(e => Encoding.UTF8.GetString(e.Name.Span) == "root.pxar");
        Assert.Null(before.Node);
        Assert.Equal(0x4u, before.Type);
        Assert.NotEqual(0ul, before.Ino);

        var archive = await Walk("snapshots", "ct", id, Time, "root.pxar");
        var attr = archive.GetAttributes();
        Assert.Equal(0x4000u | 0x1E8u, attr.Mode); // drwxr-x---
        Assert.Equal(new DateTimeOffset(RootMtime), attr.MTime);
        Assert.Equal(before.Ino, attr.Ino);
        Assert.Equal(GetEuid(), attr.Uid); // the backup's owner (whoever made the tree), not the mount's 1234

        var after = (await List("snapshots", "ct", id, Time)).Single(e => Encoding.UTF8.GetString(e.Name.Span) == "root.pxar");
        Assert.Same(archive, after.Node);
    }

    [Fact]
    public async Task V1_listings_come_from_the_catalog_at_every_depth_split_ones_from_the_entries()
    {
        string[][] dirs = [[], ["a"], ["a", "b"], ["a", "b", "c"]];
        string[][] expected = [["a", "top.txt"], ["b", "top-link", "x.txt"], ["c", "one.txt"], ["deep-link", "deep.txt"]];
        for (var i = 0; i < dirs.Length; i++)
        {
            var v1 = await List(["snapshots", "ct", "7", Time, "root.pxar", .. dirs[i]]);
            var split = await List(["snapshots", "ct", "8", Time, "root.pxar", .. dirs[i]]);
            Assert.Equal(expected[i], Names(v1));
            Assert.Equal(expected[i], Names(split));
            Assert.All(v1, e => Assert.Null(e.Node));
            Assert.All(split, e => Assert.NotNull(e.Node));
        }
    }

    [Theory]
    [InlineData("7")]
    [InlineData("8")]
    public async Task File_nodes_read_their_contents_and_show_the_entrys_attributes_and_xattrs(string id)
    {
        string[] archive = ["snapshots", "ct", id, Time, "root.pxar"];
        var x = await Walk([.. archive, "a", "x.txt"]);
        var attr = x.GetAttributes();
        Assert.Equal(0x8000u | 0x101u, attr.Mode); // -r-------x, exactly as archived
        Assert.Equal(new DateTimeOffset(FileMtime), attr.MTime);
        Assert.Equal(1ul, attr.Size);
        Assert.Equal(1u, attr.NLink);
        Assert.Equal(GetEuid(), attr.Uid);
        Assert.Empty(await ((IFuseXattrs)x).ListXattrsAsync(ctx, default));
        Assert.Equal("x", await ReadAll(x));
        Assert.Equal("deep", await ReadAll(await Walk([.. archive, "a", "b", "c", "deep.txt"])));

        // A hard link: one inode, nlink 2, the same contents and xattrs under both names.
        var top = await Walk([.. archive, "top.txt"]);
        var link = await Walk([.. archive, "a", "top-link"]);
        Assert.Equal(top.GetAttributes().Ino, link.GetAttributes().Ino);
        Assert.Equal(2u, top.GetAttributes().NLink);
        Assert.Equal(2u, link.GetAttributes().NLink);
        foreach (var node in new[] { top, link })
        {
            Assert.Equal("top", await ReadAll(node));
            var xattr = Assert.Single(await ((IFuseXattrs)node).ListXattrsAsync(ctx, default));
            Assert.Equal("user.note", Encoding.UTF8.GetString(xattr.Name));
            Assert.Equal("kept", Encoding.UTF8.GetString(xattr.Value));
        }

        var symlink = (IFuseSymlink)await Walk([.. archive, "a", "b", "c", "deep-link"]);
        Assert.Equal("../one.txt", Encoding.UTF8.GetString(await symlink.ReadLinkAsync(ctx, default)));
    }

    [Theory]
    [InlineData("7")]
    [InlineData("8")]
    public async Task Opening_an_archive_uses_the_manifest_the_snapshot_already_read(string id)
    {
        // The snapshot's listing reads its manifest; then the file is damaged. The archive's indexes (metadata, payload,
        // catalog) are checked against the manifest already read, so nothing reads the file again.
        Assert.Contains("root.pxar", Names(await List("snapshots", "ct", id, Time)));
        TreeTesting.DamageManifest(context, $"ct/{id}/{Time}");

        string[] archive = ["snapshots", "ct", id, Time, "root.pxar"];
        Assert.Equal(["a", "top.txt"], Names(await List(archive)));
        Assert.Equal("deep", await ReadAll(await Walk([.. archive, "a", "b", "c", "deep.txt"])));
        Assert.Equal(2u, (await Walk([.. archive, "a", "top-link"])).GetAttributes().NLink);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_damaged_directory_leaves_out_its_own_names_not_the_link_counts_of_the_rest(bool split)
    {
        // a/ holds a hard-linked file; b/ thousands of entries over many small chunks, one of them damaged; c/ after it.
        var tree = dir.Combine($"linked-{split}");
        Directory.CreateDirectory(Path.Combine(tree, "a"));
        Directory.CreateDirectory(Path.Combine(tree, "b"));
        Directory.CreateDirectory(Path.Combine(tree, "c"));
        File.WriteAllText(Path.Combine(tree, "a", "target"), "linked");
        Assert.Equal(0, ProcessRunner.Shell($"ln '{Path.Combine(tree, "a", "target")}' '{Path.Combine(tree, "a", "link")}'").ExitCode);
        for (var i = 0; i < 3000; i++)
        {
            File.WriteAllText(Path.Combine(tree, "b", $"entry-{i:D5}-with-a-name-long-enough-to-fill-chunks"), i.ToString());
        }

        File.WriteAllText(Path.Combine(tree, "c", "last"), "c");
        var store = dir.Combine($"store-linked-{split}");
        using (var writer = BackupWriter.Create(store, new BackupGroup(BackupNamespace.Root, "ct", "9"), T0, null, precreateChunkDirectories: false))
        {
            PxarBackup.Write(writer, [new PxarBackupSource("root.pxar", tree)], new PxarBackupOptions(Split: split, AverageChunkSize: 16 * 1024));
            writer.Finish();
        }

        // The middle chunk of the metadata stream (inside b/), and for a unified archive its catalog, which would
        // otherwise count the links without reading b/ at all: the count then has to walk the archive.
        var snapshot = Path.Combine(store, "ct", "9", Time);
        var index = DynamicIndex.Open(Path.Combine(snapshot, split ? "root.mpxar.didx" : "root.pxar.didx"));
        Assert.True(index.ChunkCount >= 5, $"{index.ChunkCount} chunks");
        var damaged = new List<string> { Convert.ToHexStringLower(index.Digest(index.ChunkCount / 2)) };
        if (!split)
        {
            var catalog = DynamicIndex.Open(Path.Combine(snapshot, SnapshotArchives.CatalogFile));
            damaged.AddRange(Enumerable.Range(0, catalog.ChunkCount).Select(i => Convert.ToHexStringLower(catalog.Digest(i))));
        }

        foreach (var digest in damaged)
        {
            var chunk = Path.Combine(store, ".chunks", digest[..4], digest);
            var bytes = File.ReadAllBytes(chunk);
            bytes[bytes.Length / 2] ^= 0x55;
            File.WriteAllBytes(chunk, bytes);
        }

        var linkedContext = TreeTesting.Context(dir, store);
        try
        {
            var linkedRoot = new RootDirectory(linkedContext);
            var archive = new[] { "snapshots", "ct", "9", Time, "root.pxar" };
            Assert.Equal(["a", "b", "c"], Names(await ((IFuseDirectory)await TreeTesting.Walk(linkedRoot, ctx, archive)).ListAsync(ctx, default)));
            await Assert.ThrowsAsync<FuseException>(async () =>
                await ((IFuseDirectory)await TreeTesting.Walk(linkedRoot, ctx, [.. archive, "b"])).ListAsync(ctx, default));

            Assert.Equal(2u, (await TreeTesting.Walk(linkedRoot, ctx, [.. archive, "a", "target"])).GetAttributes().NLink);
            Assert.Equal(2u, (await TreeTesting.Walk(linkedRoot, ctx, [.. archive, "a", "link"])).GetAttributes().NLink);
            Assert.Equal("c", await ReadAll(await TreeTesting.Walk(linkedRoot, ctx, [.. archive, "c", "last"])));
        }
        finally
        {
            await linkedContext.Exports.DisposeAsync();
        }
    }

    private async Task<string> ReadAll(FuseNode node)
    {
        await using var handle = await ((IFuseFile)node).OpenAsync(FuseOpenFlags.ReadOnly, ctx, default);
        var buffer = new byte[64];
        var n = await handle.ReadAsync(0, buffer, default);
        Assert.Equal(0, await handle.ReadAsync(n, buffer, default));
        return Encoding.UTF8.GetString(buffer, 0, n);
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "geteuid")]
    private static extern uint GetEuid();

    public async ValueTask DisposeAsync()
    {
        await context.Exports.DisposeAsync();
        dir.Dispose();
    }
}
