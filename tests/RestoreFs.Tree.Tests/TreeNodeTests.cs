using System.Text;
using RestoreFs.Datastore;
using RestoreFs.Fuse;
using RestoreFs.TestSupport;
using RestoreFs.Tree;

namespace RestoreFs.Tree.Tests;

/// <summary>The tree at node level, without a kernel: layout, attributes, reads, errors, new snapshots.</summary>
public sealed class TreeNodeTests : IAsyncDisposable
{
    private static readonly DateTimeOffset T0 = DateTimeOffset.Parse("2026-03-04T05:06:07Z");
    private readonly TempDirectory dir = new("restorefs-tree");
    private readonly byte[] data = DatastoreBuilder.Data(2 * BackupWriter.DefaultChunkSize + 5, 21, 1);
    private readonly TreeContext context;
    private readonly RootDirectory root;
    private readonly FuseRequestContext ctx = new();

    public TreeNodeTests()
    {
        var store = dir.Combine("store");
        DatastoreBuilder.Write(store, "vm/100", T0, new Dictionary<string, byte[]> { ["drive-scsi0"] = data },
            blobs: new Dictionary<string, byte[]> { ["qemu-server.conf"] = "cores: 4\n"u8.ToArray() });
        DatastoreBuilder.Write(store, "ct/5", T0, new Dictionary<string, byte[]> { ["disk"] = [1, 2] }, ns: "team");
        context = TreeTesting.Context(dir, store);
        root = new RootDirectory(context);
    }

    private Task<FuseNode> Walk(params string[] path) => TreeTesting.Walk(root, ctx, path);

    private async Task<string[]> Names(params string[] path) =>
        (await ((IFuseDirectory)await Walk(path)).ListAsync(ctx, default)).Select(e => Encoding.UTF8.GetString(e.Name.Span)).ToArray();

    [Fact]
    public async Task Layout_follows_namespaces_types_groups_and_times()
    {
        Assert.Equal(["snapshots"], await Names());
        Assert.Equal(["vm", "ns"], await Names("snapshots"));
        Assert.Equal(["team"], await Names("snapshots", "ns"));
        Assert.Equal(["ct"], await Names("snapshots", "ns", "team"));
        Assert.Equal(["2026-03-04T05:06:07Z"], await Names("snapshots", "vm", "100"));
        Assert.Equal(["drive-scsi0.img", "drive-scsi0.img.dev", "drive-scsi0.img.nbd", "index", "qemu-server.conf"],
            (await Names("snapshots", "vm", "100", "2026-03-04T05:06:07Z")).Select(n => n == "index.json" ? "index" : n).Order(StringComparer.Ordinal).ToArray());
    }

    [Fact]
    public async Task Image_attributes_and_reads()
    {
        var image = await Walk("snapshots", "vm", "100", "2026-03-04T05:06:07Z", "drive-scsi0.img");
        var attr = image.GetAttributes();
        Assert.Equal((ulong)data.Length, attr.Size);
        Assert.Equal(0x8124u, attr.Mode);
        Assert.Equal(1234u, attr.Uid);
        Assert.Equal(T0, attr.MTime);
        Assert.Same(image, await Walk("snapshots", "vm", "100", "2026-03-04T05:06:07Z", "drive-scsi0.img"));
        await using var handle = await ((IFuseFile)image).OpenAsync(FuseOpenFlags.ReadOnly, ctx, default);
        var buffer = new byte[1 << 20];
        var n = await handle.ReadAsync(BackupWriter.DefaultChunkSize - 100, buffer, default);
        Assert.Equal(buffer.Length, n);
        Assert.Equal(data.AsSpan(BackupWriter.DefaultChunkSize - 100, n).ToArray(), buffer);
        Assert.Equal(BackupWriter.DefaultChunkSize, await handle.SeekDataOrHoleAsync(0, data: false, default));
        Assert.Equal(2L * BackupWriter.DefaultChunkSize, await handle.SeekDataOrHoleAsync(BackupWriter.DefaultChunkSize, data: true, default));
    }

    [Fact]
    public async Task Images_and_blobs_use_the_manifest_the_snapshot_already_read()
    {
        // Listing the snapshot reads its manifest; damaged afterwards, the file is not read again to open an image or a blob.
        Assert.Contains("drive-scsi0.img", await Names("snapshots", "vm", "100", "2026-03-04T05:06:07Z"));
        TreeTesting.DamageManifest(context, "vm/100/2026-03-04T05:06:07Z");

        var image = (IFuseFile)await Walk("snapshots", "vm", "100", "2026-03-04T05:06:07Z", "drive-scsi0.img");
        await using var handle = await image.OpenAsync(FuseOpenFlags.ReadOnly, ctx, default);
        var buffer = new byte[4096];
        Assert.Equal(buffer.Length, await handle.ReadAsync(5, buffer, default));
        Assert.Equal(data.AsSpan(5, buffer.Length).ToArray(), buffer);

        var conf = (IFuseFile)await Walk("snapshots", "vm", "100", "2026-03-04T05:06:07Z", "qemu-server.conf");
        await using var confHandle = await conf.OpenAsync(FuseOpenFlags.ReadOnly, ctx, default);
        Assert.Equal("cores: 4\n", Encoding.UTF8.GetString(buffer, 0, await confHandle.ReadAsync(0, buffer, default)));
    }

    [Fact]
    public async Task A_manifest_that_could_not_be_read_is_read_again_and_the_snapshot_fills_in()
    {
        // The store out of reach for a moment when a snapshot is first looked into (here: its manifest unreadable,
        // then whole again): the snapshot shows what it can, and nothing of that is kept for good.
        const string snapshot = "2026-03-04T05:06:07Z";
        var path = Path.Combine(context.Store.GetSnapshot(BackupNamespace.Root, "vm/100/" + snapshot).DirectoryPath, "index.json.blob");
        var good = File.ReadAllBytes(path);
        TreeTesting.DamageManifest(context, "vm/100/" + snapshot);
        var directory = (IFuseDirectory)await Walk("snapshots", "vm", "100", snapshot);

        Assert.DoesNotContain("drive-scsi0.img", await Names("snapshots", "vm", "100", snapshot));
        Assert.Null(await directory.LookupAsync("drive-scsi0.img"u8.ToArray(), ctx, default));
        Assert.False(directory.ListingIsImmutable);
        Assert.True(directory.NegativeTimeout <= TimeSpan.FromSeconds(1));

        // Whole again: within the retry interval the failure is answered from memory (no read per look), then the
        // manifest is read again and the images appear, the listing now final.
        File.WriteAllBytes(path, good);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var soon = await Names("snapshots", "vm", "100", snapshot);
        if (clock.Elapsed < SnapshotState.ManifestRetryInterval / 2)
        {
            Assert.DoesNotContain("drive-scsi0.img", soon);
        }

        await Task.Delay(SnapshotState.ManifestRetryInterval + TimeSpan.FromMilliseconds(100));
        Assert.Contains("drive-scsi0.img", await Names("snapshots", "vm", "100", snapshot));
        Assert.NotNull(await directory.LookupAsync("drive-scsi0.img"u8.ToArray(), ctx, default));
        Assert.False(directory.ListingIsImmutable); // the next open replaces what the kernel kept of the short listing…
        Assert.True(directory.ListingIsImmutable); // …and from then on the kernel keeps it
        Assert.True(directory.NegativeTimeout > TimeSpan.FromMinutes(1));
        var image = (IFuseFile)await Walk("snapshots", "vm", "100", snapshot, "drive-scsi0.img");
        await using var handle = await image.OpenAsync(FuseOpenFlags.ReadOnly, ctx, default);
        var buffer = new byte[4096];
        Assert.Equal(buffer.Length, await handle.ReadAsync(7, buffer, default));
        Assert.Equal(data.AsSpan(7, buffer.Length).ToArray(), buffer);
    }

    [Fact]
    public async Task A_client_log_uploaded_after_a_recent_snapshot_was_first_listed_appears_in_it()
    {
        // vzdump uploads client.log.blob after the backup has finished, so a snapshot looked at right then has no log
        // yet. A recent snapshot without one keeps its names open (listed again at each look); once the log is there,
        // or a day after the backup began, they are final.
        var recent = DateTimeOffset.FromUnixTimeSeconds(DateTimeOffset.UtcNow.ToUnixTimeSeconds() - 60);
        var info = DatastoreBuilder.Write(dir.Combine("store"), "vm/100", recent, new Dictionary<string, byte[]> { ["drive-scsi0"] = [7, 8, 9] });
        var name = info.Name.Split('/')[^1];
        var directory = (IFuseDirectory)await Walk("snapshots", "vm", "100", name);
        Assert.DoesNotContain("client.log", await Names("snapshots", "vm", "100", name));
        Assert.Contains("drive-scsi0.img", await Names("snapshots", "vm", "100", name));
        Assert.Null(await directory.LookupAsync("client.log"u8.ToArray(), ctx, default));
        Assert.False(directory.ListingIsImmutable);
        Assert.True(directory.NegativeTimeout <= TimeSpan.FromSeconds(1));

        File.WriteAllBytes(Path.Combine(info.DirectoryPath, "client.log.blob"), DataBlob.Encode("INFO: backup finished\n"u8, null, compress: true));
        Assert.Contains("client.log", await Names("snapshots", "vm", "100", name));
        var log = (IFuseFile)(await directory.LookupAsync("client.log"u8.ToArray(), ctx, default))!;
        await using (var handle = await log.OpenAsync(FuseOpenFlags.ReadOnly, ctx, default))
        {
            var buffer = new byte[100];
            Assert.Equal("INFO: backup finished\n", Encoding.UTF8.GetString(buffer, 0, await handle.ReadAsync(0, buffer, default)));
        }

        Assert.False(directory.ListingIsImmutable); // the next open replaces what the kernel kept of the listing without the log…
        Assert.True(directory.ListingIsImmutable); // …and from then on the kernel keeps it

        // An older snapshot without a log (T0, months ago) is final at once.
        var old = (IFuseDirectory)await Walk("snapshots", "vm", "100", "2026-03-04T05:06:07Z");
        Assert.DoesNotContain("client.log", await Names("snapshots", "vm", "100", "2026-03-04T05:06:07Z"));
        Assert.True(old.ListingIsImmutable);
    }

    [Fact]
    public async Task An_export_first_read_while_its_index_cannot_be_opened_works_once_it_can()
    {
        // The image's export (what .img.nbd names, what the restore VM reads) is first read while the store is out of
        // reach (here: its index file gone for a moment). That read fails; once the index is back, the same export
        // serves the image. It used to keep the first failure for the life of the mount.
        const string snapshot = "2026-03-04T05:06:07Z";
        var state = ((SnapshotDirectory)await Walk("snapshots", "vm", "100", snapshot)).State;
        var index = Path.Combine(state.Snapshot.DirectoryPath, "drive-scsi0.img.fidx");
        var uri = context.Exports.UriFor(state, "drive-scsi0.img.fidx");
        var copy = dir.Combine("export.raw");
        File.Move(index, index + ".away");
        try
        {
            var failed = ProcessRunner.Run(Requires.Tool("nbdcopy"), [uri, copy], TimeSpan.FromMinutes(1));
            Assert.NotEqual(0, failed.ExitCode);
        }
        finally
        {
            File.Move(index + ".away", index);
        }

        File.Delete(copy);
        ProcessRunner.Run(Requires.Tool("nbdcopy"), [uri, copy], TimeSpan.FromMinutes(1)).EnsureSuccess("nbdcopy once the index is back");
        Assert.True(File.ReadAllBytes(copy).AsSpan().SequenceEqual(data), "the export's bytes");
    }

    [Fact]
    public async Task A_failed_attach_is_not_kept_the_next_open_of_the_dev_path_tries_again()
    {
        // The index out of reach while the image is attached: that attach fails, and the next one is a new attempt, not
        // the same failure handed out again. (The index stays away, so nothing is attached where the kernel has NBD.)
        const string snapshot = "2026-03-04T05:06:07Z";
        var state = ((SnapshotDirectory)await Walk("snapshots", "vm", "100", snapshot)).State;
        var index = Path.Combine(state.Snapshot.DirectoryPath, "drive-scsi0.img.fidx");
        var image = dir.Combine("not-mounted", "drive-scsi0.img");
        File.Move(index, index + ".away");
        try
        {
            var first = context.Exports.AttachAsync(state, "drive-scsi0.img.fidx", image);
            await Assert.ThrowsAnyAsync<Exception>(() => first);
            var second = context.Exports.AttachAsync(state, "drive-scsi0.img.fidx", image);
            Assert.NotSame(first, second);
            await Assert.ThrowsAnyAsync<Exception>(() => second);
            Assert.Null(context.Exports.AttachedPath(state, "drive-scsi0.img.fidx"));
        }
        finally
        {
            File.Move(index + ".away", index);
        }
    }

    [Fact]
    public async Task Config_blob_is_decoded_and_a_new_snapshot_appears_without_remounting()
    {
        var conf = (IFuseFile)await Walk("snapshots", "vm", "100", "2026-03-04T05:06:07Z", "qemu-server.conf");
        await using var handle = await conf.OpenAsync(FuseOpenFlags.ReadOnly, ctx, default);
        var buffer = new byte[100];
        Assert.Equal("cores: 4\n", Encoding.UTF8.GetString(buffer, 0, await handle.ReadAsync(0, buffer, default)));

        DatastoreBuilder.Write(context.Options.StorePath, "vm/100", T0.AddHours(1), new Dictionary<string, byte[]> { ["d"] = [9] });
        Assert.Equal(2, (await Names("snapshots", "vm", "100")).Length);
        Assert.NotNull(await Walk("snapshots", "vm", "100", "2026-03-04T06:06:07Z", "d.img"));
    }

    [Fact]
    public async Task Inode_numbers_are_unique()
    {
        var seen = new HashSet<ulong>();
        async Task Visit(FuseNode node)
        {
            Assert.True(seen.Add(node.GetAttributes().Ino), "duplicate inode");
            if (node is IFuseDirectory d)
            {
                foreach (var e in await d.ListAsync(ctx, default))
                {
                    await Visit(e.Node ?? (await d.LookupAsync(e.Name, ctx, default))!);
                }
            }
        }

        await Visit(root);
        Assert.True(seen.Count > 10);
    }

    public async ValueTask DisposeAsync()
    {
        await context.Exports.DisposeAsync();
        dir.Dispose();
    }
}
