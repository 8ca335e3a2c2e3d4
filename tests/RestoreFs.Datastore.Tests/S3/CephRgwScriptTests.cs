using System.Diagnostics;
using RestoreFs.Datastore.S3;

namespace RestoreFs.Datastore.Tests.S3;

/// <summary>scripts/ceph-rgw.sh as tests and users drive it: a second start, the env lines as AWS environment.</summary>
[Collection(RgwCollection.Name)]
public sealed class CephRgwScriptTests(RgwFixture rgw)
{
    [Fact]
    public void StartingARunningClusterChangesNothingAndIsQuick()
    {
        var watch = Stopwatch.StartNew();
        var first = Task.Run(rgw.StartAgain);
        var second = Task.Run(rgw.StartAgain);
        Task.WaitAll(first, second);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10), $"took {watch.Elapsed}");
        Assert.Contains($"AWS_ENDPOINT_URL={rgw.Endpoint}", first.Result);
        Assert.Contains($"AWS_ENDPOINT_URL={rgw.Endpoint}", second.Result);
        Assert.Equal(rgw.Admin.AccessKeyId, rgw.Env("admin")["AWS_ACCESS_KEY_ID"]);
    }

    [Fact]
    public async Task TheEnvLinesAreAnAwsEnvironmentForTheReadOnlyUser()
    {
        using var admin = new S3Client(rgw.Admin);
        var key = $"env-{Guid.NewGuid():N}/.in-use";
        await admin.PutObjectAsync(RgwFixture.Bucket, key, "{}"u8.ToArray());

        var env = rgw.Env("readonly").ToDictionary(p => p.Key, p => (string?)p.Value);
        Assert.Equal(["AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_SECRET_ACCESS_KEY"], env.Keys.Order(StringComparer.Ordinal));
        env["HOME"] = Path.GetTempPath(); // no profile files in the way
        var options = S3Options.Resolve(null, env);
        Assert.Equal("environment", options.Source);
        using var reader = new S3Client(options);
        Assert.False(reader.UsesVirtualHost);
        Assert.Equal("{}"u8.ToArray(), await reader.GetObjectAsync(RgwFixture.Bucket, key));
        await Assert.ThrowsAsync<S3AccessDeniedException>(() => reader.PutObjectAsync(RgwFixture.Bucket, key, "x"u8.ToArray()));
    }
}
