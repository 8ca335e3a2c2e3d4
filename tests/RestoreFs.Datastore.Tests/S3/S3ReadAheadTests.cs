using RestoreFs.Datastore.S3;
using RestoreFs.TestSupport;

namespace RestoreFs.Datastore.Tests.S3;

/// <summary>
/// Sequential reads of an image in a real RGW bucket keep several chunk GETs in flight; with a small decoded-chunk
/// budget (a mount with a small --cache-mb) the chunks fetched ahead must not push each other out before the reader
/// gets there: that would fetch them again, one GET per chunk becoming several.
/// </summary>
[Collection(RgwCollection.Name)]
public sealed class S3ReadAheadTests(RgwFixture rgw) : IDisposable
{
    private const int Chunk = BackupWriter.DefaultChunkSize;
    private readonly TempDirectory dir = new("restorefs-s3ra");

    [Theory]
    [InlineData(64)]
    [InlineData(4)]
    public async Task A_sequential_read_sends_one_get_per_chunk_whatever_the_budget(int budgetChunks)
    {
        var local = dir.Combine("store");
        var data = DatastoreBuilder.Data(24 * Chunk, 91);
        var snap = DatastoreBuilder.Write(local, "vm/300", DateTimeOffset.Parse("2026-02-03T04:05:06Z"), new Dictionary<string, byte[]> { ["d"] = data });
        var location = S3StoreLocation.Parse($"s3://{RgwFixture.Bucket}/{$"ra{Guid.NewGuid():N}"[..12]}");
        using (var admin = new S3Client(rgw.Admin))
        {
            await S3StoreUploader.UploadSnapshotAsync(admin, location, local, snap.DirectoryPath);
        }

        // No local chunk cache: every chunk the reader needs again would be another GET. Disposed at the end: its
        // pooled connections to the gateway must not outlive the test (the fixture restarts the gateway on its port).
        using var store = DatastoreReader.Open(location.ToString(), options: new StoreOpenOptions { S3 = rgw.ReadOnly, CacheBytes = 0 });
        var memory = new ChunkMemory(budgetChunks * (long)Chunk);
        using var image = store.OpenImage(store.ListSnapshots(snap.Group).Single(), "d", null, new ImageReaderOptions(CacheBytes: 64L * 1024 * 1024, Memory: memory));
        var buffer = new byte[1024 * 1024];
        for (long offset = 0; offset < data.Length; offset += buffer.Length)
        {
            var n = image.Read(offset, buffer);
            Assert.True(buffer.AsSpan(0, n).SequenceEqual(data.AsSpan((int)offset, n)), $"bytes at {offset}");
        }

        Assert.Equal(24, store.RemoteChunkGets);
    }

    public void Dispose() => dir.Dispose();
}
