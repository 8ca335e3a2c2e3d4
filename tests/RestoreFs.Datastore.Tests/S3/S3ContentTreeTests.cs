using RestoreFs.Datastore.S3;

namespace RestoreFs.Datastore.Tests.S3;

/// <summary>A store's content keys as the directory tree of a local datastore.</summary>
[Collection(RgwCollection.Name)]
public sealed class S3ContentTreeTests(RgwFixture rgw)
{
    [Fact]
    public async Task KeysBecomeTheDatastoreTreeAndNewSnapshotsAppearAfterARefresh()
    {
        var store = $"tree{Guid.NewGuid():N}"[..16];
        var location = S3StoreLocation.Parse($"s3://{RgwFixture.Bucket}/{store}");
        using var admin = new S3Client(rgw.Admin);
        foreach (var rel in new[]
        {
            "vm/100/owner", "vm/100/2024-05-01T10:00:00Z/index.json.blob", "vm/100/2024-05-01T10:00:00Z/drive-scsi0.img.fidx",
            "ns/empty/.namespace", "ns/a/.namespace", "ns/a/ct/200/owner", "a//b", "x/../y",
        })
        {
            await admin.PutObjectAsync(RgwFixture.Bucket, location.ContentPrefix + rel, new byte[] { 7 });
        }

        await admin.PutObjectAsync(RgwFixture.Bucket, location.ChunkKey(new string('c', 64)), new byte[] { 1 });

        using var reader = new S3Client(rgw.ReadOnly);
        var listing = new S3ContentListing(reader, location, TimeSpan.FromMinutes(5));
        var tree = await listing.GetAsync();
        Assert.Equal([new("ns", S3TreeEntryKind.Directory), new("vm", S3TreeEntryKind.Directory)], tree.ListDirectory(""));
        Assert.Equal([new("a", S3TreeEntryKind.Directory), new("empty", S3TreeEntryKind.Directory)], tree.ListDirectory("ns"));
        Assert.Empty(tree.ListDirectory("ns/empty")!);
        Assert.Equal([new("2024-05-01T10:00:00Z", S3TreeEntryKind.Directory), new("owner", S3TreeEntryKind.File)], tree.ListDirectory("vm/100"));
        Assert.Equal(S3TreeEntryKind.File, tree.Kind("vm/100/2024-05-01T10:00:00Z/drive-scsi0.img.fidx"));
        Assert.Equal(1, tree.File("vm/100/owner")!.Size);
        Assert.Null(tree.Kind("vm/101"));
        Assert.Null(tree.ListDirectory("vm/100/owner"));
        Assert.Equal(2, tree.IgnoredKeys);

        await admin.PutObjectAsync(RgwFixture.Bucket, location.ContentPrefix + "vm/100/2024-06-01T10:00:00Z/index.json.blob", new byte[] { 7 });
        Assert.Same(tree, await listing.GetAsync());
        listing.Invalidate();
        var refreshed = await listing.GetAsync();
        Assert.Equal(3, refreshed.ListDirectory("vm/100")!.Count);
    }
}
