using System.Security.Cryptography;
using RestoreFs.Datastore.S3;
using RestoreFs.TestSupport;

namespace RestoreFs.Datastore.Tests.S3;

/// <summary>Chunks and files of an S3 store read by the read-only user, through the disk cache.</summary>
[Collection(RgwCollection.Name)]
public sealed class S3StoreSourceTests(RgwFixture rgw)
{
    [Fact]
    public async Task ChunksComeOnceFromTheBucketThenFromTheCheckedCache()
    {
        var location = S3StoreLocation.Parse($"s3://{RgwFixture.Bucket}/{$"src{Guid.NewGuid():N}"[..12]}");
        using var admin = new S3Client(rgw.Admin);
        var chunk = RandomNumberGenerator.GetBytes(256 * 1024);
        var digest = Convert.ToHexStringLower(SHA256.HashData(chunk));
        await admin.PutObjectAsync(RgwFixture.Bucket, location.ChunkKey(digest), chunk, ifNoneMatch: true);
        await admin.PutObjectAsync(RgwFixture.Bucket, location.InUseKey, "{\"hostname\":\"pbs\"}"u8.ToArray());
        await admin.PutObjectAsync(RgwFixture.Bucket, location.ContentKey("vm/100/owner"), "root@pam\n"u8.ToArray());
        Func<byte[], bool> check = d => Convert.ToHexStringLower(SHA256.HashData(d)) == digest;

        using var dir = new TempDirectory("restorefs-s3cache");
        using var cache = new ChunkDiskCache(dir.Path, 16 * 1024 * 1024);
        using var source = new S3StoreSource(new S3Client(rgw.ReadOnly), location, cache, ownsClient: true);
        await source.VerifyAsync();

        Assert.Equal(chunk, await source.TryGetChunkAsync(digest, check));
        Assert.Equal(chunk, await source.TryGetChunkAsync(digest, check));
        Assert.Equal(1, source.ChunkGets);
        Assert.Equal(1, cache.Stats.Hits);

        // A damaged cache entry is dropped and the chunk fetched again.
        var file = Path.Combine(dir.Path, "chunks", digest[..4], digest);
        var bytes = File.ReadAllBytes(file);
        bytes[^1] ^= 1;
        File.WriteAllBytes(file, bytes);
        Assert.Equal(chunk, await source.TryGetChunkAsync(digest, check));
        Assert.Equal(2, source.ChunkGets);
        Assert.Equal(1, cache.Stats.Rejected);

        // A chunk object that is corrupt in the bucket is handed back for the caller to report, never cached.
        var other = RandomNumberGenerator.GetBytes(1000);
        var otherDigest = Convert.ToHexStringLower(SHA256.HashData(other));
        await admin.PutObjectAsync(RgwFixture.Bucket, location.ChunkKey(otherDigest), other.Reverse().ToArray());
        Func<byte[], bool> otherCheck = d => Convert.ToHexStringLower(SHA256.HashData(d)) == otherDigest;
        var corrupt = await source.TryGetChunkAsync(otherDigest, otherCheck);
        Assert.NotNull(corrupt);
        Assert.False(otherCheck(corrupt));
        Assert.Null(cache.TryGet(otherDigest));

        Assert.Null(await source.TryGetChunkAsync(new string('e', 64), _ => true));
        Assert.Equal("root@pam\n"u8.ToArray(), await source.TryGetFileAsync("vm/100/owner"));
        Assert.Null(await source.TryGetFileAsync("vm/100/notes"));
        Assert.Equal([new("vm", S3TreeEntryKind.Directory)], await source.ListDirectoryAsync(""));
        Assert.Equal(S3TreeEntryKind.File, await source.KindAsync("vm/100/owner"));
    }
}
