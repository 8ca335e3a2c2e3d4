using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using RestoreFs.Datastore.S3;

namespace RestoreFs.Datastore.Tests.S3;

/// <summary>The S3 client against a real Ceph RGW (see <see cref="RgwFixture"/>).</summary>
[Collection(RgwCollection.Name)]
public sealed class S3ClientTests(RgwFixture rgw)
{
    private const string Bucket = RgwFixture.Bucket;

    [Fact]
    public async Task PutGetRangeHeadOfAChunkSizedObject()
    {
        using var client = new S3Client(rgw.Admin);
        var data = RandomNumberGenerator.GetBytes(4 * 1024 * 1024 + 17);
        var key = $"t-{Guid.NewGuid():N}/.cnt/vm/100/2024-05-01T10:00:00Z/drive-scsi0.img.fidx";
        var put = await client.PutObjectAsync(Bucket, key, data);
        Assert.True(put.Created);
        Assert.NotNull(put.ETag);

        Assert.Equal(data, await client.GetObjectAsync(Bucket, key));
        Assert.Equal(data.AsSpan(1 << 20, 100).ToArray(), await client.GetRangeAsync(Bucket, key, 1 << 20, 100));
        Assert.Equal(data.AsSpan(data.Length - 10).ToArray(), await client.GetRangeAsync(Bucket, key, data.Length - 10, 4096));
        Assert.Empty(await client.GetRangeAsync(Bucket, key, data.Length + 5, 10));

        var head = await client.HeadObjectAsync(Bucket, key);
        Assert.NotNull(head);
        Assert.Equal(data.Length, head.Size);
        Assert.Equal(put.ETag, head.ETag);
    }

    [Fact]
    public async Task MissingObjectIsNullOrAnErrorNamingTheKey()
    {
        using var client = new S3Client(rgw.Admin);
        var key = $"t-{Guid.NewGuid():N}/.chunks/abcd/{new string('a', 64)}";
        Assert.Null(await client.TryGetObjectAsync(Bucket, key));
        Assert.Null(await client.HeadObjectAsync(Bucket, key));
        var e = await Assert.ThrowsAsync<S3ObjectNotFoundException>(() => client.GetObjectAsync(Bucket, key));
        Assert.Equal(key, e.Key);
        Assert.Contains(key, e.Message);
        var r = await Assert.ThrowsAsync<S3ObjectNotFoundException>(() => client.GetRangeAsync(Bucket, key, 0, 10));
        Assert.Contains(key, r.Message);
    }

    [Fact]
    public async Task ListingPaginatesPastAThousandKeysWithPrefixAndDelimiter()
    {
        using var client = new S3Client(rgw.Admin);
        var root = $"list-{Guid.NewGuid():N}/";
        var keys = Enumerable.Range(0, 1100).Select(i => $"{root}.chunks/{i % 7:x4}/{i:x64}").ToList();
        keys.Add($"{root}.cnt/vm/100/owner");
        keys.Add($"{root}.cnt/ns/a/.namespace");
        await Parallel.ForEachAsync(keys, new ParallelOptions { MaxDegreeOfParallelism = 16 },
            async (k, ct) => await client.PutObjectAsync(Bucket, k, new byte[] { 1, 2, 3 }, ct: ct));

        var all = await client.ListAllAsync(Bucket, root);
        Assert.Equal(keys.Order(StringComparer.Ordinal), all.Objects.Select(o => o.Key));
        Assert.True(all.Pages >= 2, $"{all.Pages} pages");
        Assert.All(all.Objects, o => Assert.Equal(3, o.Size));

        // max-keys is a ceiling, not a promise: RGW may end a page a few keys short and mark it truncated.
        // Page by page, the continuation tokens must still walk every key exactly once, in order.
        var paged = new List<string>();
        string? token = null;
        var pages = 0;
        do
        {
            var page = await client.ListObjectsPageAsync(Bucket, root, null, token, 1000);
            pages++;
            Assert.InRange(page.Objects.Count, 1, 1000);
            if (pages == 1)
            {
                Assert.True(page.IsTruncated, "1102 keys fit one page of at most 1000");
            }

            paged.AddRange(page.Objects.Select(o => o.Key));
            token = page.NextContinuationToken;
        }
        while (token is not null && pages < 10);

        Assert.Equal(keys.Order(StringComparer.Ordinal), paged);

        var top = await client.ListAllAsync(Bucket, root, "/");
        Assert.Empty(top.Objects);
        Assert.Equal([$"{root}.chunks/", $"{root}.cnt/"], top.CommonPrefixes);
        var level = await client.ListAllAsync(Bucket, $"{root}.chunks/", "/");
        Assert.Equal(7, level.CommonPrefixes.Count);
        var one = await client.ListAllAsync(Bucket, $"{root}.cnt/vm/100/");
        Assert.Equal([$"{root}.cnt/vm/100/owner"], one.Objects.Select(o => o.Key));
    }

    [Fact]
    public async Task ConditionalPutLeavesAnExistingObject()
    {
        using var client = new S3Client(rgw.Admin);
        var key = $"cond-{Guid.NewGuid():N}/.chunks/0000/{new string('0', 64)}";
        Assert.True((await client.PutObjectAsync(Bucket, key, "first"u8.ToArray(), ifNoneMatch: true)).Created);
        Assert.False((await client.PutObjectAsync(Bucket, key, "second"u8.ToArray(), ifNoneMatch: true)).Created);
        Assert.Equal("first"u8.ToArray(), await client.GetObjectAsync(Bucket, key));
        Assert.True((await client.PutObjectAsync(Bucket, key, "third"u8.ToArray())).Created);
        Assert.Equal("third"u8.ToArray(), await client.GetObjectAsync(Bucket, key));
    }

    [Fact]
    public async Task ReadOnlyUserReadsAndListsButCannotWrite()
    {
        using var admin = new S3Client(rgw.Admin);
        using var reader = new S3Client(rgw.ReadOnly);
        var key = $"ro-{Guid.NewGuid():N}/.in-use";
        await admin.PutObjectAsync(Bucket, key, "{\"hostname\":\"pbs\"}"u8.ToArray());

        Assert.Equal("{\"hostname\":\"pbs\"}"u8.ToArray(), await reader.GetObjectAsync(Bucket, key));
        Assert.Equal([key], (await reader.ListAllAsync(Bucket, key)).Objects.Select(o => o.Key));
        Assert.NotNull(await reader.HeadObjectAsync(Bucket, key));

        var put = await Assert.ThrowsAsync<S3AccessDeniedException>(() => reader.PutObjectAsync(Bucket, key, "x"u8.ToArray()));
        Assert.Contains("may not write", put.Message);
        Assert.Contains(rgw.ReadOnly.AccessKeyId!, put.Message);
        await Assert.ThrowsAsync<S3AccessDeniedException>(() => reader.PutObjectAsync(Bucket, key + ".new", "x"u8.ToArray(), ifNoneMatch: true));
        await Assert.ThrowsAsync<S3AccessDeniedException>(() => reader.DeleteObjectAsync(Bucket, key));
        Assert.Equal("{\"hostname\":\"pbs\"}"u8.ToArray(), await admin.GetObjectAsync(Bucket, key));
        Assert.Null(await admin.HeadObjectAsync(Bucket, key + ".new"));
    }

    [Fact]
    public async Task WrongSecretOrUnknownKeyIsAClearAccessError()
    {
        using var wrongSecret = new S3Client(rgw.Admin with { SecretAccessKey = "not-the-secret-0123456789012345678901234" });
        var e = await Assert.ThrowsAsync<S3AccessDeniedException>(() => wrongSecret.ListObjectsPageAsync(Bucket, null, null, null));
        Assert.Contains("secret key does not fit", e.Message);
        Assert.Equal(HttpStatusCode.Forbidden, e.Status);

        using var unknown = new S3Client(rgw.Admin with { AccessKeyId = "NOSUCHKEY0000000000" });
        var u = await Assert.ThrowsAsync<S3AccessDeniedException>(() => unknown.GetObjectAsync(Bucket, "any"));
        Assert.Contains("NOSUCHKEY0000000000", u.Message);
        Assert.Contains("unknown", u.Message);

        // HEAD answers carry no error body: still an access error, not "missing".
        var h = await Assert.ThrowsAsync<S3AccessDeniedException>(() => wrongSecret.HeadObjectAsync(Bucket, "any"));
        Assert.Contains("its secret wrong", h.Message);
    }

    [Fact]
    public async Task MissingBucketIsNamed()
    {
        using var client = new S3Client(rgw.Admin);
        var e = await Assert.ThrowsAsync<S3BucketNotFoundException>(() => client.GetObjectAsync("no-such-bucket-here", "x/.in-use"));
        Assert.Contains("no-such-bucket-here", e.Message);
        await Assert.ThrowsAsync<S3BucketNotFoundException>(() => client.ListAllAsync("no-such-bucket-here", "x/"));
    }

    [Fact]
    public async Task ClockSkewIsReportedAsSuch()
    {
        using var client = new S3Client(rgw.Admin, timeProvider: new ShiftedClock(TimeSpan.FromHours(2)));
        var e = await Assert.ThrowsAsync<S3ClockSkewException>(() => client.ListObjectsPageAsync(Bucket, null, null, null));
        Assert.Contains("clock", e.Message);
        Assert.NotNull(e.Skew);
        Assert.InRange(e.Skew.Value.TotalMinutes, -125, -115);
    }

    [Fact]
    public async Task VirtualHostAddressingWorksAgainstALocalhostEndpoint()
    {
        var port = new Uri(rgw.Endpoint).Port;
        using var client = new S3Client(rgw.Admin with { Endpoint = $"http://localhost:{port}", Addressing = S3Addressing.VirtualHost });
        Assert.True(client.UsesVirtualHost);
        var key = $"vhost-{Guid.NewGuid():N}/a b+c%d:e";
        await client.PutObjectAsync(Bucket, key, "vhost"u8.ToArray());
        Assert.Equal("vhost"u8.ToArray(), await client.GetObjectAsync(Bucket, key));
        Assert.Equal([key], (await client.ListAllAsync(Bucket, key)).Objects.Select(o => o.Key));

        using var templated = new S3Client(rgw.Admin with { Endpoint = $"http://{{{{bucket}}}}.localhost:{port}", Addressing = S3Addressing.Auto });
        Assert.True(templated.UsesVirtualHost);
        Assert.Equal("vhost"u8.ToArray(), await templated.GetObjectAsync(Bucket, key));
    }

    [Fact]
    public async Task ClosedPortFailsWithinSeconds()
    {
        int port;
        using (var listener = new TcpListener(IPAddress.Loopback, 0))
        {
            listener.Start();
            port = ((IPEndPoint)listener.LocalEndpoint).Port;
        }

        using var client = new S3Client(rgw.Admin with { Endpoint = $"http://127.0.0.1:{port}" });
        var watch = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<S3EndpointException>(() => client.GetObjectAsync(Bucket, "x"));
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(5), $"took {watch.Elapsed}");
        Assert.Contains($"127.0.0.1:{port}", e.Message);
        Assert.Equal(rgw.Admin.MaxAttempts, client.RequestCount);
    }

    [Fact]
    public async Task AnEndpointThatNeverAcceptsFailsAfterTheConnectTimeout()
    {
        // A listener whose accept queue is full: the kernel drops further SYNs, as a firewall that drops packets does.
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(0);
        var port = ((IPEndPoint)listener.LocalEndPoint!).Port;
        using var filler = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await filler.ConnectAsync(IPAddress.Loopback, port);

        using var client = new S3Client(rgw.Admin with { Endpoint = $"http://127.0.0.1:{port}", ConnectTimeout = TimeSpan.FromSeconds(1) });
        var watch = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<S3EndpointException>(() => client.ListObjectsPageAsync(Bucket, null, null, null));
        // The connect timeout ended it: one attempt, no retries (a dropped SYN would otherwise wait for the kernel's
        // own connect timeout, over two minutes). The wall bound leaves room for a loaded test machine only.
        Assert.Contains("no connection within 1 s", e.Message);
        Assert.Equal(1, client.RequestCount);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10), $"took {watch.Elapsed}");
    }

    [Fact]
    public async Task AServerThatNeverAnswersFailsAfterTheRequestTimeouts()
    {
        // Connections are taken (by the kernel's queue) but nothing is ever answered.
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(16);
        var port = ((IPEndPoint)listener.LocalEndPoint!).Port;

        using var client = new S3Client(rgw.Admin with { Endpoint = $"http://127.0.0.1:{port}", RequestTimeout = TimeSpan.FromSeconds(1), MaxAttempts = 2 });
        var watch = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<S3Exception>(() => client.GetObjectAsync(Bucket, "x"));
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(5), $"took {watch.Elapsed}");
        Assert.Contains("did not answer within 1 s (2 attempts", e.Message);
    }

    [Fact]
    public async Task StoppedGatewayFailsWithinSecondsAndWorksAgainAfterRestart()
    {
        using var client = new S3Client(rgw.Admin);
        var key = $"stop-{Guid.NewGuid():N}/obj";
        await client.PutObjectAsync(Bucket, key, "before"u8.ToArray());
        rgw.StopGateway();
        try
        {
            var watch = Stopwatch.StartNew();
            var e = await Assert.ThrowsAsync<S3EndpointException>(() => client.GetObjectAsync(Bucket, key));
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(5), $"took {watch.Elapsed}");
            Assert.Contains("is the endpoint right and the server running", e.Message);
        }
        finally
        {
            rgw.StartGateway();
        }

        Assert.Equal("before"u8.ToArray(), await client.GetObjectAsync(Bucket, key));
    }

    [Fact]
    public async Task HttpsWithAPinnedSelfSignedCertificate()
    {
        using var pinned = new S3Client(rgw.Admin with { Endpoint = rgw.HttpsEndpoint, CertificateFingerprint = rgw.CertificateSha256 });
        var key = $"tls-{Guid.NewGuid():N}/obj";
        await pinned.PutObjectAsync(Bucket, key, "over tls"u8.ToArray());
        Assert.Equal("over tls"u8.ToArray(), await pinned.GetObjectAsync(Bucket, key));

        using var unpinned = new S3Client(rgw.Admin with { Endpoint = rgw.HttpsEndpoint });
        var e = await Assert.ThrowsAsync<S3EndpointException>(() => unpinned.GetObjectAsync(Bucket, key));
        Assert.Contains("fingerprint", e.Message);

        var wrongPin = string.Concat(Enumerable.Repeat("ab", 32));
        using var wrong = new S3Client(rgw.Admin with { Endpoint = rgw.HttpsEndpoint, CertificateFingerprint = wrongPin });
        var w = await Assert.ThrowsAsync<S3EndpointException>(() => wrong.GetObjectAsync(Bucket, key));
        Assert.Contains("does not match the pinned fingerprint", w.Message);
        Assert.Contains(rgw.CertificateSha256.ToLowerInvariant(), w.Message);
    }

    [Fact]
    public void PlainHttpToARemoteHostNeedsInsecure()
    {
        var e = Assert.Throws<S3ConfigurationException>(() => new S3Client(rgw.Admin with { Endpoint = "http://s3.example.net" }));
        Assert.Contains("insecure", e.Message);
        using var allowed = new S3Client(rgw.Admin with { Endpoint = "http://s3.example.net", Insecure = true });
        Assert.Equal("s3.example.net", allowed.Endpoint.Host);
        Assert.Throws<S3ConfigurationException>(() => new S3Client(rgw.Admin with { Endpoint = "https://s3.example.net", CertificateFingerprint = "12:34" }));
        Assert.Throws<S3ConfigurationException>(() => new S3Client(rgw.Admin with { AccessKeyId = null }));
        Assert.Throws<S3ConfigurationException>(() => new S3Client(rgw.Admin with { Addressing = S3Addressing.VirtualHost }));
    }

    [Fact]
    public async Task StoreDiscoveryListsTheStoresWhenTheNameIsWrong()
    {
        rgw.CreateBucket("restorefs-discovery");
        using var admin = new S3Client(rgw.Admin);
        await admin.PutObjectAsync("restorefs-discovery", "store-a/.in-use", "{\"hostname\":\"pbs\"}"u8.ToArray());
        await admin.PutObjectAsync("restorefs-discovery", "store-b/.in-use", "{\"hostname\":\"pbs\"}"u8.ToArray());
        await admin.PutObjectAsync("restorefs-discovery", "store-b/.cnt/vm/100/owner", "root@pam"u8.ToArray());
        await admin.PutObjectAsync("restorefs-discovery", "not-a-store/file", new byte[] { 1 });

        using var reader = new S3Client(rgw.ReadOnly);
        Assert.Equal(["store-a", "store-b"], await S3StoreDiscovery.ListStoresAsync(reader, "restorefs-discovery"));
        await S3StoreDiscovery.VerifyAsync(reader, S3StoreLocation.Parse("s3://restorefs-discovery/store-b"));
        var e = await Assert.ThrowsAsync<S3StoreNotFoundException>(() => S3StoreDiscovery.VerifyAsync(reader, S3StoreLocation.Parse("s3://restorefs-discovery/store-c")));
        Assert.Contains("store-a, store-b", e.Message);
        Assert.Contains("store-c", e.Message);
        Assert.Equal(["store-a", "store-b"], e.KnownStores);
    }

    private sealed class ShiftedClock(TimeSpan by) : TimeProvider
    {
        public override DateTimeOffset GetUtcNow() => base.GetUtcNow() + by;
    }
}
