using System.Text;
using RestoreFs.Datastore;
using RestoreFs.Fuse;
using RestoreFs.Pxar;
using RestoreFs.TestSupport;
using RestoreFs.Tree.Pxar;

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
        var (store, damaged) = LinkedArchive($"rest-{split}", split, linkInDamagedDirectory: false);
        Damage(damaged);
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

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_link_count_that_left_names_out_is_made_again_and_nlink_grows_when_they_can_be_read(bool split)
    {
        // The store out of reach for a moment while the links were counted (here: a chunk of b/ unreadable, then whole
        // again): a/target's second name, in b/, was not counted. That count must not stand for the life of the mount,
        // or `rsync -H` and `cp -a` split the link for good.
        var (store, damaged) = LinkedArchive($"again-{split}", split, linkInDamagedDirectory: true);
        var good = damaged.Select(File.ReadAllBytes).ToList();
        Damage(damaged);
        var linkedContext = TreeTesting.Context(dir, store);
        try
        {
            var linkedRoot = new RootDirectory(linkedContext);
            var archive = new[] { "snapshots", "ct", "9", Time, "root.pxar" };
            var target = await TreeTesting.Walk(linkedRoot, ctx, [.. archive, "a", "target"]);
            Assert.Equal(1u, target.GetAttributes().NLink);
            Assert.True(target.AttrTimeout <= TimeSpan.FromSeconds(1), "a short count must not be cached by the kernel for long");

            for (var i = 0; i < damaged.Count; i++)
            {
                File.WriteAllBytes(damaged[i], good[i]);
            }

            var clock = System.Diagnostics.Stopwatch.StartNew();
            var soon = target.GetAttributes().NLink;
            if (clock.Elapsed < PxarArchiveState.LinkRecountInterval / 2)
            {
                Assert.Equal(1u, soon); // within the interval: answered from the count made, no recount per stat
            }

            await Task.Delay(PxarArchiveState.LinkRecountInterval + TimeSpan.FromMilliseconds(100));
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
            while (target.GetAttributes().NLink != 2 && DateTime.UtcNow < deadline)
            {
                await Task.Delay(50); // the recount runs in the background; the stat that started it answers at once
            }

            Assert.Equal(2u, target.GetAttributes().NLink);
            Assert.Equal(PxarNode.Forever, target.AttrTimeout);
            Assert.Equal(2u, (await TreeTesting.Walk(linkedRoot, ctx, [.. archive, "b", "entry-01500-link"])).GetAttributes().NLink);
            Assert.Equal("linked", await ReadAll(await TreeTesting.Walk(linkedRoot, ctx, [.. archive, "b", "entry-01500-link"])));
        }
        finally
        {
            await linkedContext.Exports.DisposeAsync();
        }
    }

    /// <summary>
    /// ct/9 with root.pxar of a/ (target and, unless <paramref name="linkInDamagedDirectory"/>, its hard link), b/
    /// (thousands of entries over many small chunks; with <paramref name="linkInDamagedDirectory"/> the link is there,
    /// as entry-01500-link) and c/last. Returns the store and the chunk files to damage: the middle chunk of the metadata
    /// stream (inside b/) and, for a unified archive, its catalog, which would otherwise count the links without reading
    /// b/ at all (the count then has to walk the archive).
    /// </summary>
    private (string Store, List<string> Damaged) LinkedArchive(string name, bool split, bool linkInDamagedDirectory)
    {
        var tree = dir.Combine($"linked-{name}");
        Directory.CreateDirectory(Path.Combine(tree, "a"));
        Directory.CreateDirectory(Path.Combine(tree, "b"));
        Directory.CreateDirectory(Path.Combine(tree, "c"));
        File.WriteAllText(Path.Combine(tree, "a", "target"), "linked");
        for (var i = 0; i < 3000; i++)
        {
            if (i != 1500 || !linkInDamagedDirectory)
            {
                File.WriteAllText(Path.Combine(tree, "b", $"entry-{i:D5}-with-a-name-long-enough-to-fill-chunks"), i.ToString());
            }
        }

        var link = linkInDamagedDirectory ? Path.Combine(tree, "b", "entry-01500-link") : Path.Combine(tree, "a", "link");
        Assert.Equal(0, ProcessRunner.Shell($"ln '{Path.Combine(tree, "a", "target")}' '{link}'").ExitCode);
        File.WriteAllText(Path.Combine(tree, "c", "last"), "c");
        var store = dir.Combine($"store-linked-{name}");
        using (var writer = BackupWriter.Create(store, new BackupGroup(BackupNamespace.Root, "ct", "9"), T0, null, precreateChunkDirectories: false))
        {
            PxarBackup.Write(writer, [new PxarBackupSource("root.pxar", tree)], new PxarBackupOptions(Split: split, AverageChunkSize: 16 * 1024));
            writer.Finish();
        }

        var snapshot = Path.Combine(store, "ct", "9", Time);
        var index = DynamicIndex.Open(Path.Combine(snapshot, split ? "root.mpxar.didx" : "root.pxar.didx"));
        Assert.True(index.ChunkCount >= 5, $"{index.ChunkCount} chunks");
        var digests = new List<string> { Convert.ToHexStringLower(index.Digest(index.ChunkCount / 2)) };
        if (!split)
        {
            var catalog = DynamicIndex.Open(Path.Combine(snapshot, SnapshotArchives.CatalogFile));
            digests.AddRange(Enumerable.Range(0, catalog.ChunkCount).Select(i => Convert.ToHexStringLower(catalog.Digest(i))));
        }

        return (store, digests.Select(d => Path.Combine(store, ".chunks", d[..4], d)).ToList());
    }

    private static void Damage(IEnumerable<string> chunkFiles)
    {
        foreach (var chunk in chunkFiles)
        {
            var bytes = File.ReadAllBytes(chunk);
            bytes[bytes.Length / 2] ^= 0x55;
            File.WriteAllBytes(chunk, bytes);
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
