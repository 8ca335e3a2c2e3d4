using RestoreFs.Datastore.S3;
using RestoreFs.TestSupport;

namespace RestoreFs.Datastore.Tests.S3;

/// <summary>
/// A real Ceph RGW (scripts/ceph-rgw.sh: mon + memstore OSD + radosgw on loopback), started once for all S3 tests
/// of the run and stopped by pid at the end. Its data lives under the temp dir. Buckets are created with a policy
/// that lets the read-only user GET and LIST.
/// </summary>
public sealed class RgwFixture : IDisposable
{
    public const string Bucket = "restorefs-test";

    private readonly TempDirectory dir = new("restorefs-rgw");

    public RgwFixture()
    {
        foreach (var tool in new[] { "ceph-mon", "ceph-osd", "radosgw", "ceph", "curl", "openssl" })
        {
            try
            {
                Requires.Tool(tool);
            }
            catch (InvalidOperationException)
            {
                throw new InvalidOperationException(
                    $"the S3 tests need a local Ceph RGW, but '{tool}' is not installed: run scripts/install-deps.sh (ceph-mon ceph-osd radosgw ceph-common curl openssl)");
            }
        }

        try
        {
            Run("start", TimeSpan.FromMinutes(2));
            var env = ParseEnv(Run("env", TimeSpan.FromSeconds(10)));
            Endpoint = env["AWS_ENDPOINT_URL"];
            HttpsEndpoint = env["RGW_HTTPS_ENDPOINT"];
            CertificateSha256 = env["RGW_CERT_SHA256"];
            Admin = new S3Options
            {
                Endpoint = Endpoint, Region = env["AWS_REGION"], AccessKeyId = env["AWS_ACCESS_KEY_ID"],
                SecretAccessKey = env["AWS_SECRET_ACCESS_KEY"], Addressing = S3Addressing.Path,
            };
            ReadOnly = Admin with { AccessKeyId = env["READONLY_AWS_ACCESS_KEY_ID"], SecretAccessKey = env["READONLY_AWS_SECRET_ACCESS_KEY"] };
            CreateBucket(Bucket);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public string DataDir => dir.Path;

    public string Endpoint { get; }

    /// <summary>The same gateway over https with a self-signed certificate.</summary>
    public string HttpsEndpoint { get; }

    /// <summary>SHA-256 of that certificate, "AB:CD:…".</summary>
    public string CertificateSha256 { get; }

    /// <summary>Full access (path-style addressing).</summary>
    public S3Options Admin { get; }

    /// <summary>The read-only user: GetObject and ListBucket on the fixture's buckets, every write refused.</summary>
    public S3Options ReadOnly { get; }

    public void CreateBucket(string name) => Run($"bucket {name}", TimeSpan.FromSeconds(60));

    /// <summary>Stops only radosgw; objects stay (the OSD keeps running).</summary>
    public void StopGateway() => Run("stop-rgw", TimeSpan.FromSeconds(30));

    /// <summary>Starts radosgw again on the same port (or the whole cluster if it is gone).</summary>
    public void StartGateway() => Run("start", TimeSpan.FromMinutes(2));

    /// <summary>The script's <c>env DIR USER</c> lines as a dictionary.</summary>
    public Dictionary<string, string> Env(string user) => ParseEnv(Run($"env {user}", TimeSpan.FromSeconds(10)));

    /// <summary>Runs <c>start</c> again (nothing to do when all runs) and returns its output.</summary>
    public string StartAgain() => Run("start", TimeSpan.FromMinutes(2));

    public void Dispose()
    {
        try
        {
            Run("stop", TimeSpan.FromSeconds(60));
        }
        finally
        {
            dir.Dispose();
        }
    }

    private string Run(string command, TimeSpan timeout)
    {
        var parts = command.Split(' ');
        var args = new List<string> { RepoPaths.Script("ceph-rgw.sh"), parts[0], dir.Path };
        args.AddRange(parts.Skip(1));
        var result = ProcessRunner.Run("bash", args, timeout);
        if (result.ExitCode != 0)
        {
            throw new InvalidOperationException($"scripts/ceph-rgw.sh {parts[0]} failed ({result.ExitCode}): {result.StdErr.Trim()}");
        }

        return result.StdOut;
    }

    private static Dictionary<string, string> ParseEnv(string text)
        => text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Where(l => l.Contains('=') && !l.StartsWith('#'))
            .ToDictionary(l => l[..l.IndexOf('=')], l => l[(l.IndexOf('=') + 1)..]);
}

[CollectionDefinition(Name)]
public sealed class RgwCollection : ICollectionFixture<RgwFixture>
{
    public const string Name = "ceph-rgw";
}
