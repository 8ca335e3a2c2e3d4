using RestoreFs.Datastore.S3;
using RestoreFs.TestSupport;

namespace RestoreFs.Datastore.Tests.S3;

/// <summary>Location parsing, credential resolution and the signature; no server needed.</summary>
public sealed class S3OptionsTests
{
    [Theory]
    [InlineData("s3://bucket/store", "bucket", "store")]
    [InlineData("s3://my.bucket-1/Store_2/", "my.bucket-1", "Store_2")]
    public void ParsesStoreLocations(string text, string bucket, string store)
    {
        var l = S3StoreLocation.Parse(text);
        Assert.Equal(bucket, l.Bucket);
        Assert.Equal(store, l.Store);
        Assert.Equal($"{store}/.cnt/vm/100/owner", l.ContentKey("vm/100/owner"));
        Assert.Equal($"{store}/.chunks/bb9f/bb9f{new string('0', 60)}", l.ChunkKey("bb9f" + new string('0', 60)));
        Assert.Equal("vm/100/owner", l.RelativePathOf($"{store}/.cnt/vm/100/owner"));
        Assert.Equal($"s3://{bucket}/{store}", l.ToString());
    }

    [Theory]
    [InlineData("/srv/store", "not an S3 datastore")]
    [InlineData("s3://", "no bucket")]
    [InlineData("s3://bucket", "no datastore name")]
    [InlineData("s3://Bucket/store", "not a valid bucket name")]
    [InlineData("s3://bucket/a/b", "not a datastore name")]
    [InlineData("s3://bucket/.hidden", "not a datastore name")]
    public void RefusesBadLocationsSayingWhy(string text, string why)
    {
        var e = Assert.Throws<S3ConfigurationException>(() => S3StoreLocation.Parse(text));
        Assert.Contains(why, e.Message);
        Assert.Throws<ArgumentException>(() => S3StoreLocation.Parse("s3://b12/s").ContentKey("../x"));
        Assert.Throws<ArgumentException>(() => S3StoreLocation.Parse("s3://b12/s").ChunkKey("ABCD"));
    }

    [Fact]
    public void EnvironmentThenProfileFiles()
    {
        using var dir = new TempDirectory("restorefs-s3opts");
        File.WriteAllText(dir.Combine("credentials"), "[default]\naws_access_key_id = DEFKEY\naws_secret_access_key = DEFSECRET\n\n[ceph]\naws_access_key_id=CEPHKEY ; comment\naws_secret_access_key=CEPHSECRET\n");
        File.WriteAllText(dir.Combine("config"), "[default]\nregion = eu-central-1\n[profile ceph]\nregion = default\nendpoint_url = http://127.0.0.1:7480\ns3 =\n  addressing_style = path\n");
        var files = new Dictionary<string, string?>
        {
            ["AWS_SHARED_CREDENTIALS_FILE"] = dir.Combine("credentials"),
            ["AWS_CONFIG_FILE"] = dir.Combine("config"),
        };

        var byDefault = S3Options.Resolve(null, files);
        Assert.Equal(("DEFKEY", "DEFSECRET", "eu-central-1"), (byDefault.AccessKeyId, byDefault.SecretAccessKey, byDefault.Region));
        Assert.Null(byDefault.Endpoint);

        var ceph = S3Options.Resolve(null, new Dictionary<string, string?>(files) { ["AWS_PROFILE"] = "ceph" });
        Assert.Equal(("CEPHKEY", "CEPHSECRET", "default", "http://127.0.0.1:7480", S3Addressing.Path),
            (ceph.AccessKeyId, ceph.SecretAccessKey, ceph.Region, ceph.Endpoint, ceph.Addressing));
        Assert.Contains("profile ceph", ceph.Source);

        var env = S3Options.Resolve(null, new Dictionary<string, string?>(files)
        {
            ["AWS_ACCESS_KEY_ID"] = "ENVKEY", ["AWS_SECRET_ACCESS_KEY"] = "ENVSECRET",
            ["AWS_ENDPOINT_URL"] = "http://localhost:9000", ["AWS_REGION"] = "auto",
        });
        Assert.Equal(("ENVKEY", "ENVSECRET", "auto", "http://localhost:9000"), (env.AccessKeyId, env.SecretAccessKey, env.Region, env.Endpoint));
        Assert.Contains("environment", env.Source);

        var explicitOptions = S3Options.Resolve(new S3Options { AccessKeyId = "OPT", SecretAccessKey = "OPTS", Endpoint = "https://s3.example.net" },
            new Dictionary<string, string?>(files) { ["AWS_ACCESS_KEY_ID"] = "ENVKEY", ["AWS_SECRET_ACCESS_KEY"] = "ENVSECRET" });
        Assert.Equal(("OPT", "https://s3.example.net", "eu-central-1"), (explicitOptions.AccessKeyId, explicitOptions.Endpoint, explicitOptions.Region));

        var missing = Assert.Throws<S3ConfigurationException>(() => S3Options.Resolve(null, new Dictionary<string, string?>(files) { ["AWS_PROFILE"] = "nope" }));
        Assert.Contains("nope", missing.Message);
    }

    [Fact]
    public void SignatureMatchesTheAwsDocumentedGetObjectExample()
    {
        // The GET-object example of AWS's SigV4 documentation for S3 (header-based auth).
        var signer = new SigV4("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "us-east-1");
        var headers = new SortedDictionary<string, string>(StringComparer.Ordinal)
        {
            ["host"] = "examplebucket.s3.amazonaws.com",
            ["range"] = "bytes=0-9",
            ["x-amz-content-sha256"] = SigV4.EmptyPayloadHash,
            ["x-amz-date"] = "20130524T000000Z",
        };
        var auth = signer.Authorization("GET", "/test.txt", [], headers, SigV4.EmptyPayloadHash, new DateTime(2013, 5, 24, 0, 0, 0, DateTimeKind.Utc));
        Assert.Equal(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
            auth);
        Assert.Equal("2024-05-01T10%3A00%3A00Z/a%20b%2Bc", SigV4.UriEncode("2024-05-01T10:00:00Z/a b+c", encodeSlash: false));
        Assert.Equal("continuation-token=a%2Fb%3D&list-type=2", SigV4.CanonicalQuery([new("list-type", "2"), new("continuation-token", "a/b=")]));
    }
}
