using System.Diagnostics;
using System.Security.Cryptography;
using RestoreFs.Datastore.S3;
using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// A real Ceph RGW (scripts/ceph-rgw.sh) holding the same backups as a local datastore, all written with
/// <c>restorefs backup</c>: vm/100 plain (two images, one with a zero chunk and a short last chunk), vm/200 encrypted
/// with a key file, vm/300 in namespace "team". Credentials reach the CLI through AWS-style profile files
/// ("admin" may write, "readonly" may only GET and LIST).
/// </summary>
public sealed class S3Fixture : IDisposable
{
    public const string Bucket = "restorefs-cli";
    public const string Time = "2026-11-02T10:00:00Z";
    public const int Chunk = 4 * 1024 * 1024;

    public S3Fixture()
    {
        Requires.Root();
        foreach (var tool in new[] { "ceph-mon", "ceph-osd", "radosgw", "ceph" })
        {
            Requires.Tool(tool);
        }

        Dir = new TempDirectory("restorefs-s3cli");
        try
        {
            Rgw("start", TimeSpan.FromMinutes(3));
            var env = Rgw("env", TimeSpan.FromSeconds(20)).Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Where(l => l.Contains('=') && !l.StartsWith('#')).ToDictionary(l => l[..l.IndexOf('=')], l => l[(l.IndexOf('=') + 1)..]);
            Rgw($"bucket {Bucket}", TimeSpan.FromMinutes(1));
            Endpoint = env["AWS_ENDPOINT_URL"];
            Admin = new S3Options
            {
                Endpoint = Endpoint, Region = env["AWS_REGION"], AccessKeyId = env["AWS_ACCESS_KEY_ID"],
                SecretAccessKey = env["AWS_SECRET_ACCESS_KEY"], Addressing = S3Addressing.Path,
            };
            File.WriteAllText(Dir.Combine("credentials"),
                $"[admin]\naws_access_key_id = {env["AWS_ACCESS_KEY_ID"]}\naws_secret_access_key = {env["AWS_SECRET_ACCESS_KEY"]}\n" +
                $"[readonly]\naws_access_key_id = {env["READONLY_AWS_ACCESS_KEY_ID"]}\naws_secret_access_key = {env["READONLY_AWS_SECRET_ACCESS_KEY"]}\n" +
                "[wrong]\naws_access_key_id = NOSUCHKEY0000000000\naws_secret_access_key = nosuchsecret000000000000000000000000\n");
            var config = string.Concat(new[] { "admin", "readonly", "wrong" }.Select(p =>
                $"[profile {p}]\nregion = {env["AWS_REGION"]}\nendpoint_url = {Endpoint}\ns3 =\n  addressing_style = path\n"));
            config += $"[profile unreachable]\nregion = {env["AWS_REGION"]}\nendpoint_url = http://127.0.0.1:9\n";
            File.WriteAllText(Dir.Combine("config"), config);
            File.AppendAllText(Dir.Combine("credentials"),
                $"[unreachable]\naws_access_key_id = {env["AWS_ACCESS_KEY_ID"]}\naws_secret_access_key = {env["AWS_SECRET_ACCESS_KEY"]}\n");
            Environment.SetEnvironmentVariable("AWS_SHARED_CREDENTIALS_FILE", Dir.Combine("credentials"));
            Environment.SetEnvironmentVariable("AWS_CONFIG_FILE", Dir.Combine("config"));

            DataBytes = new byte[3 * Chunk + 12345];
            new Random(7).NextBytes(DataBytes);
            Array.Clear(DataBytes, Chunk, Chunk);
            File.WriteAllBytes(Dir.Combine("data.img"), DataBytes);
            var other = new byte[2 * Chunk];
            new Random(8).NextBytes(other);
            File.WriteAllBytes(Dir.Combine("other.img"), other);
            Cli("key", "create", "--kdf", "none", KeyFile);
            MakeTree();
            foreach (var store in new[] { Local, Remote })
            {
                var s3 = store == Remote ? new[] { "--s3-profile", "admin" } : [];
                Cli(["backup", "--store", store, "--group", "vm/100", "--time", Time, $"drive-scsi0={Dir.Combine("data.img")}",
                    $"drive-scsi1={Dir.Combine("other.img")}", .. s3]);
                Cli(["backup", "--store", store, "--group", "vm/200", "--time", Time, "--keyfile", KeyFile, $"drive-scsi0={Dir.Combine("data.img")}", .. s3]);
                Cli(["backup", "--store", store, "--ns", "team", "--group", "vm/300", "--time", Time, $"drive-scsi0={Dir.Combine("other.img")}", .. s3]);
                Cli(["backup", "--store", store, "--group", "ct/400", "--time", Time, $"root.pxar={Tree}", .. s3]);
                Cli(["backup", "--store", store, "--group", "ct/401", "--time", Time, "--split-archive", $"root.pxar={Tree}", .. s3]);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public TempDirectory Dir { get; } = null!;

    /// <summary>The directory backed up as a pxar archive: v1 in ct/400, split in ct/401.</summary>
    public string Tree => Dir.Combine("tree");

    /// <summary>The pxar archives of the stores: (group, archive).</summary>
    public static IEnumerable<string> PxarGroups => ["ct/400", "ct/401"];

    /// <summary>A small tree with what a container backup has: a file over several chunks, a hard link, a symlink, an
    /// xattr, an owner and a mode of its own, a subdirectory.</summary>
    private void MakeTree()
    {
        Directory.CreateDirectory(Path.Combine(Tree, "etc", "app"));
        var big = new byte[9 * 1024 * 1024 + 77];
        new Random(9).NextBytes(big);
        File.WriteAllBytes(Path.Combine(Tree, "var.db"), big);
        File.WriteAllText(Path.Combine(Tree, "etc", "app", "app.conf"), "listen 8080\n");
        ProcessRunner.Shell($"cd '{Tree}' && ln var.db etc/db.link && ln -s app/app.conf etc/conf && setfattr -n user.origin -v s3 etc/app/app.conf " +
            "&& chown 1234:5678 etc/app && chmod 0700 etc/app && touch -d @1700000000.5 var.db etc", TimeSpan.FromMinutes(1)).EnsureSuccess("the pxar tree");
    }

    public string Endpoint { get; } = string.Empty;

    public S3Options Admin { get; } = new();

    public string Local => Dir.Combine("local");

    public string Remote => $"s3://{Bucket}/store";

    public string KeyFile => Dir.Combine("key.json");

    public byte[] DataBytes { get; } = [];

    /// <summary>Every image of the stores: (namespace, group, archive, source file).</summary>
    public IEnumerable<(string Ns, string Group, string Archive, string Source)> Images =>
    [
        (string.Empty, "vm/100", "drive-scsi0.img", Dir.Combine("data.img")),
        (string.Empty, "vm/100", "drive-scsi1.img", Dir.Combine("other.img")),
        (string.Empty, "vm/200", "drive-scsi0.img", Dir.Combine("data.img")),
        ("team", "vm/300", "drive-scsi0.img", Dir.Combine("other.img")),
    ];

    public static ProcessResult Cli(params string[] args) =>
        ProcessRunner.Run(RepoPaths.Cli, args, TimeSpan.FromMinutes(8)).EnsureSuccess("restorefs " + string.Join(' ', args));

    public static ProcessResult TryCli(TimeSpan timeout, params string[] args) => ProcessRunner.Run(RepoPaths.Cli, args, timeout);

    public string Rgw(string command, TimeSpan timeout)
    {
        var parts = command.Split(' ');
        var result = ProcessRunner.Run("bash", [RepoPaths.Script("ceph-rgw.sh"), parts[0], Dir.Combine("rgw"), .. parts.Skip(1)], timeout);
        return result.EnsureSuccess($"ceph-rgw.sh {command}").StdOut;
    }

    /// <summary>Every object of the bucket with its ETag, sorted.</summary>
    public List<string> ListWithETags()
    {
        using var client = new S3Client(Admin);
        var listing = client.ListAllAsync(Bucket, null).GetAwaiter().GetResult();
        return listing.Objects.Select(o => $"{o.Key} {o.Size} {o.ETag}").Order(StringComparer.Ordinal).ToList();
    }

    public static string Sha256(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }

    public void Dispose()
    {
        try
        {
            ProcessRunner.Run("bash", [RepoPaths.Script("ceph-rgw.sh"), "stop", Dir.Combine("rgw")], TimeSpan.FromMinutes(1));
        }
        finally
        {
            Dir?.Dispose();
        }
    }
}

/// <summary>An S3 datastore read by every command as a local one is: same listing, same bytes, nothing written.</summary>
public sealed class S3MountTests(S3Fixture s3) : IClassFixture<S3Fixture>
{
    private static readonly string[] Admin = ["--s3-profile", "admin"];

    [Fact]
    public void Snapshots_Of_The_Bucket_Equal_The_Local_Store()
    {
        foreach (var extra in new[] { Array.Empty<string>(), ["--json"], ["--ns", "team"] })
        {
            var local = S3Fixture.Cli(["snapshots", s3.Local, .. extra]).StdOut;
            var remote = S3Fixture.Cli(["snapshots", s3.Remote, .. Admin, "--cache-size", "0", .. extra]).StdOut;
            Assert.Contains(extra.Contains("team") ? "vm/300/" : "vm/100/", local);
            Assert.Equal(local, remote);
        }
    }

    [Fact]
    public void Restore_From_The_Bucket_Is_Byte_Identical()
    {
        using var dir = new TempDirectory("restorefs-s3restore");
        foreach (var (ns, group, archive, source) in s3.Images)
        {
            var target = dir.Combine($"{group.Replace('/', '-')}-{archive}");
            string[] nsArgs = ns.Length == 0 ? [] : ["--ns", ns];
            S3Fixture.Cli(["restore", s3.Remote, $"{group}/{S3Fixture.Time}", archive, target, "--keyfile", s3.KeyFile, .. nsArgs,
                "--cache-dir", dir.Combine("cache"), .. Admin]);
            Assert.Equal(S3Fixture.Sha256(source), S3Fixture.Sha256(target));
        }

        foreach (var group in S3Fixture.PxarGroups)
        {
            var target = dir.Combine(group.Replace('/', '-'));
            S3Fixture.Cli(["restore", s3.Remote, $"{group}/{S3Fixture.Time}", "root.pxar", target, "--cache-dir", dir.Combine("cache"), .. Admin]);
            Assert.Equal(PxarMountTests.Describe(s3.Tree), PxarMountTests.Describe(target));
        }
    }

    [Fact]
    public void Mount_As_Read_Only_User_Serves_Every_Image_And_Writes_Nothing()
    {
        using var dir = new TempDirectory("restorefs-s3mount");
        var before = s3.ListWithETags();
        Assert.Contains(before, k => k.Contains("/.chunks/", StringComparison.Ordinal));
        using (var mount = CliMount.Start(s3.Remote, dir.Combine("mnt"), "--no-vm", "--keyfile", s3.KeyFile, "--s3-profile", "readonly",
                   "--cache-dir", dir.Combine("cache"), "--cache-size", "256M"))
        {
            foreach (var (ns, group, archive, source) in s3.Images)
            {
                var nsPart = ns.Length == 0 ? string.Empty : $"ns/{ns}/";
                var image = Path.Combine(mount.Snapshots, $"{nsPart}{group}", S3Fixture.Time, archive);
                Assert.Equal(S3Fixture.Sha256(source), S3Fixture.Sha256(image));
            }

            // Container backups: the archive's tree (directories' nlink aside, which the mount does not know) as the source.
            var expected = PxarMountTests.Describe(s3.Tree).Where(l => !l.StartsWith("E ", StringComparison.Ordinal)).ToList();
            Assert.Contains(expected, l => l.StartsWith("K ", StringComparison.Ordinal));
            foreach (var group in S3Fixture.PxarGroups)
            {
                var archive = Path.Combine(mount.Snapshots, group, S3Fixture.Time, "root.pxar");
                Assert.Equal(expected, PxarMountTests.Describe(archive).Where(l => !l.StartsWith("E ", StringComparison.Ordinal)).ToList());
            }

            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        Assert.Equal(before, s3.ListWithETags());
    }

    [Fact]
    public void Wrong_Credentials_And_Unreachable_Endpoint_Fail_Fast_With_A_Clear_Error()
    {
        var stopwatch = Stopwatch.StartNew();
        var wrong = S3Fixture.TryCli(TimeSpan.FromSeconds(60), "snapshots", s3.Remote, "--s3-profile", "wrong");
        Assert.NotEqual(0, wrong.ExitCode);
        Assert.Matches("(?i)access|denied|credential|key", wrong.StdErr);
        Assert.True(stopwatch.Elapsed < TimeSpan.FromSeconds(20), $"took {stopwatch.Elapsed}");

        stopwatch.Restart();
        var unreachable = S3Fixture.TryCli(TimeSpan.FromSeconds(60), "snapshots", s3.Remote, "--s3-profile", "unreachable");
        Assert.NotEqual(0, unreachable.ExitCode);
        Assert.Contains("127.0.0.1:9", unreachable.StdErr);
        Assert.True(stopwatch.Elapsed < TimeSpan.FromSeconds(20), $"took {stopwatch.Elapsed}");
    }

    [Fact]
    public void Deleted_And_Corrupted_Chunk_Objects_Are_Named()
    {
        using var dir = new TempDirectory("restorefs-s3fault");
        var store = $"s3://{S3Fixture.Bucket}/faults";
        var image = new byte[3 * S3Fixture.Chunk];
        new Random(99).NextBytes(image);
        File.WriteAllBytes(dir.Combine("f.img"), image);
        S3Fixture.Cli(["backup", "--store", store, "--group", "vm/900", "--time", S3Fixture.Time, $"drive-scsi0={dir.Combine("f.img")}", .. Admin]);
        var digest0 = Convert.ToHexStringLower(SHA256.HashData(image.AsSpan(0, S3Fixture.Chunk)));
        var digest2 = Convert.ToHexStringLower(SHA256.HashData(image.AsSpan(2 * S3Fixture.Chunk, S3Fixture.Chunk)));
        var key0 = $"faults/.chunks/{digest0[..4]}/{digest0}";
        byte[] blob0;
        using (var client = new S3Client(s3.Admin))
        {
            blob0 = client.GetObjectAsync(S3Fixture.Bucket, key0).GetAwaiter().GetResult();
            client.DeleteObjectAsync(S3Fixture.Bucket, key0).GetAwaiter().GetResult();
            var key = $"faults/.chunks/{digest2[..4]}/{digest2}";
            var blob = client.GetObjectAsync(S3Fixture.Bucket, key).GetAwaiter().GetResult();
            blob[^1] ^= 0x55;
            client.PutObjectAsync(S3Fixture.Bucket, key, blob).GetAwaiter().GetResult();
        }

        var missing = S3Fixture.TryCli(TimeSpan.FromMinutes(2), ["restore", store, $"vm/900/{S3Fixture.Time}", "drive-scsi0.img", dir.Combine("out"),
            "--cache-size", "0", .. Admin]);
        Assert.NotEqual(0, missing.ExitCode);
        Assert.Contains(digest0, missing.StdErr);

        using (var mount = CliMount.Start(store, dir.Combine("mnt"), "--no-vm", "--s3-profile", "admin", "--cache-size", "0"))
        {
            var path = Path.Combine(mount.Snapshots, "vm/900", S3Fixture.Time, "drive-scsi0.img");
            using var file = File.OpenRead(path);
            var buffer = new byte[4096];
            Assert.Throws<IOException>(() => file.ReadAtLeast(buffer, buffer.Length));
            file.Position = S3Fixture.Chunk;
            Assert.Equal(buffer.Length, file.ReadAtLeast(buffer, buffer.Length));
            Assert.Equal(image.AsSpan(S3Fixture.Chunk, buffer.Length).ToArray(), buffer);
            file.Position = 2L * S3Fixture.Chunk;
            Assert.Throws<IOException>(() => file.ReadAtLeast(buffer, buffer.Length));
        }

        using (var client = new S3Client(s3.Admin))
        {
            client.PutObjectAsync(S3Fixture.Bucket, key0, blob0).GetAwaiter().GetResult();
        }

        var corrupt = S3Fixture.TryCli(TimeSpan.FromMinutes(2), ["restore", store, $"vm/900/{S3Fixture.Time}", "drive-scsi0.img", dir.Combine("out"),
            "--cache-size", "0", .. Admin]);
        Assert.NotEqual(0, corrupt.ExitCode);
        Assert.Contains(digest2, corrupt.StdErr);
    }

    [Fact]
    public void New_Snapshots_In_The_Bucket_Appear_In_The_Mount_Without_Remounting()
    {
        using var dir = new TempDirectory("restorefs-s3live");
        var store = $"s3://{S3Fixture.Bucket}/live";
        var image = dir.Combine("l.img");
        File.WriteAllBytes(image, new byte[S3Fixture.Chunk + 1]);
        S3Fixture.Cli(["backup", "--store", store, "--group", "vm/700", "--time", "2026-11-01T00:00:00Z", $"drive-scsi0={image}", .. Admin]);
        using var mount = CliMount.Start(store, dir.Combine("mnt"), "--no-vm", "--s3-profile", "readonly", "--cache-size", "0");
        var group = Path.Combine(mount.Snapshots, "vm/700");
        Assert.Equal(["2026-11-01T00:00:00Z"], Directory.GetDirectories(group).Select(Path.GetFileName));
        S3Fixture.Cli(["backup", "--store", store, "--group", "vm/700", "--time", "2026-11-01T01:00:00Z", $"drive-scsi0={image}", .. Admin]);
        Assert.True(MountTable.WaitUntil(() => Directory.Exists(Path.Combine(group, "2026-11-01T01:00:00Z")), TimeSpan.FromSeconds(90)),
            "the new snapshot did not appear within 90 s");
        Assert.Equal(S3Fixture.Chunk + 1, new FileInfo(Path.Combine(group, "2026-11-01T01:00:00Z", "drive-scsi0.img")).Length);
    }

    [Fact]
    public void Gateway_Stopped_During_Reads_Gives_EIO_And_The_Mount_Recovers()
    {
        using var dir = new TempDirectory("restorefs-s3stop");
        using var mount = CliMount.Start(s3.Remote, dir.Combine("mnt"), "--no-vm", "--s3-profile", "readonly", "--cache-size", "0");
        var path = Path.Combine(mount.Snapshots, "vm/100", S3Fixture.Time, "drive-scsi0.img");
        var pxarSnapshot = Path.Combine(mount.Snapshots, "ct/400", S3Fixture.Time);
        var buffer = new byte[4096];
        using var file = File.OpenRead(path);

        // The last chunk first: no sequential read-ahead, so chunk 0 is fetched only when asked for.
        file.Position = 3L * S3Fixture.Chunk;
        Assert.Equal(buffer.Length, file.ReadAtLeast(buffer, buffer.Length));
        Assert.Equal(s3.DataBytes.AsSpan(3 * S3Fixture.Chunk, buffer.Length).ToArray(), buffer);
        Assert.True(Directory.Exists(pxarSnapshot)); // looked up, not yet looked into: its manifest is not read
        s3.Rgw("stop-rgw", TimeSpan.FromMinutes(1));
        try
        {
            var stopwatch = Stopwatch.StartNew();
            file.Position = 0;
            Assert.Throws<IOException>(() => file.ReadAtLeast(buffer, buffer.Length));
            Assert.True(stopwatch.Elapsed < TimeSpan.FromSeconds(60), $"EIO took {stopwatch.Elapsed}");

            // A snapshot first looked into now cannot read its manifest: its archives are missing, for now.
            Assert.DoesNotContain("root.pxar", Entries(pxarSnapshot));
        }
        finally
        {
            s3.Rgw("start", TimeSpan.FromMinutes(3));
        }

        Assert.True(MountTable.IsMounted(mount.MountPoint));
        file.Position = 0;
        Assert.Equal(buffer.Length, file.ReadAtLeast(buffer, buffer.Length));
        Assert.Equal(s3.DataBytes.AsSpan(0, buffer.Length).ToArray(), buffer);
        Assert.Equal(S3Fixture.Sha256(Path.Combine(s3.Dir.Path, "data.img")), S3Fixture.Sha256(path));

        // The failed manifest read was not kept: the snapshot fills in once the gateway answers again.
        Assert.True(MountTable.WaitUntil(() => Entries(pxarSnapshot).Contains("root.pxar"), TimeSpan.FromSeconds(20)),
            $"{pxarSnapshot} still lists {string.Join(", ", Entries(pxarSnapshot))}");
        Assert.True(File.Exists(Path.Combine(pxarSnapshot, "root.pxar", "var.db")));
    }

    /// <summary>The names in a directory, or none where listing it fails.</summary>
    private static string[] Entries(string directory)
    {
        try
        {
            return Directory.GetFileSystemEntries(directory).Select(p => Path.GetFileName(p)!).ToArray();
        }
        catch (IOException)
        {
            return [];
        }
    }
}
