using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// An ext4 disk image backed up into a real Ceph RGW (scripts/ceph-rgw.sh) with <c>restorefs backup</c>, then used
/// the ways a local one is: <c>restorefs map</c> (block device; the loop fallback on this machine), the
/// <c>.img.dev</c> companion of a mount, and files/ through a real restore VM. Credentials and the run-time directory
/// are given to each CLI process (not set for the whole test process), so other fixtures' settings do not mix in.
/// </summary>
public sealed class S3DiskFixture : IDisposable
{
    public const string Bucket = "restorefs-disk";
    public const string Time = "2026-11-03T10:00:00Z";
    public const string Note = "a file inside a disk image held in object storage\n";

    public S3DiskFixture()
    {
        Requires.Root();
        foreach (var tool in new[] { "ceph-mon", "ceph-osd", "radosgw", "ceph", "mkfs.ext4" })
        {
            Requires.Tool(tool);
        }

        Dir = new TempDirectory("restorefs-s3disk");
        try
        {
            Directory.CreateDirectory(Runtime);
            Rgw(TimeSpan.FromMinutes(3), "start");
            foreach (var line in Rgw(TimeSpan.FromSeconds(20), "env", "admin").Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                var eq = line.IndexOf('=');
                if (eq > 0 && line.StartsWith("AWS_", StringComparison.Ordinal))
                {
                    Env[line[..eq]] = line[(eq + 1)..];
                }
            }

            Rgw(TimeSpan.FromMinutes(1), "bucket", Bucket);

            // A 48 MiB ext4 file system (12 chunks, most of them all zero) with a few files, the last one 6 MiB of
            // random bytes spanning chunks.
            var tree = Dir.Combine("tree");
            Directory.CreateDirectory(Path.Combine(tree, "docs"));
            File.WriteAllText(Path.Combine(tree, "docs", "note.txt"), Note);
            var big = new byte[6 * 1024 * 1024];
            new Random(15).NextBytes(big);
            File.WriteAllBytes(Path.Combine(tree, "big.bin"), big);
            BigSha256 = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(big));
            ProcessRunner.Run("mkfs.ext4", ["-q", "-F", "-L", "s3disk", "-E", "root_owner=0:0", "-d", tree, Disk, "48M"], TimeSpan.FromMinutes(2))
                .EnsureSuccess("mkfs.ext4");
            Cli(TimeSpan.FromMinutes(5), "backup", "--store", Remote, "--group", "vm/150", "--time", Time, $"drive-scsi0={Disk}");
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public TempDirectory Dir { get; } = null!;

    public string Remote => $"s3://{Bucket}/store";

    public string Disk => Dir.Combine("disk.img");

    public string Runtime => Dir.Combine("run");

    public string BigSha256 { get; } = string.Empty;

    /// <summary>The environment of every CLI process: S3 endpoint and keys, and a run-time directory of this fixture's own.</summary>
    public Dictionary<string, string> Env { get; } = new();

    public ProcessResult TryCli(TimeSpan timeout, params string[] args)
    {
        var env = new Dictionary<string, string>(Env) { ["XDG_RUNTIME_DIR"] = Runtime };
        return ProcessRunner.Run(RepoPaths.Cli, args, timeout, environment: env);
    }

    public ProcessResult Cli(TimeSpan timeout, params string[] args) => TryCli(timeout, args).EnsureSuccess("restorefs " + string.Join(' ', args));

    public string Rgw(TimeSpan timeout, params string[] args) =>
        ProcessRunner.Run("bash", [RepoPaths.Script("ceph-rgw.sh"), args[0], Dir.Combine("rgw"), .. args.Skip(1)], timeout)
            .EnsureSuccess("ceph-rgw.sh " + string.Join(' ', args)).StdOut;

    public void Dispose()
    {
        try
        {
            if (Dir is not null)
            {
                ProcessRunner.Run("bash", [RepoPaths.Script("ceph-rgw.sh"), "stop", Dir.Combine("rgw")], TimeSpan.FromMinutes(1));
            }
        }
        finally
        {
            Dir?.Dispose();
        }
    }
}

public sealed class S3DiskTests(S3DiskFixture s3) : IClassFixture<S3DiskFixture>, IDisposable
{
    private readonly TempDirectory work = new("restorefs-s3disk-work");

    private static string Sha256Of(string path) =>
        ProcessRunner.Run("sha256sum", [path], TimeSpan.FromMinutes(2)).EnsureSuccess("sha256sum " + path).StdOut.Split(' ')[0];

    [Fact]
    public void Map_of_an_S3_snapshot_gives_a_device_byte_identical_to_the_source()
    {
        var map = s3.Cli(TimeSpan.FromMinutes(2), "map", s3.Remote, $"vm/150/{S3DiskFixture.Time}", "drive-scsi0.img",
            "--cache-dir", work.Combine("cache"));
        var device = map.StdOut.Split('\n')[0].Trim();
        Assert.Matches("^/dev/(loop|nbd)[0-9]+$", device);
        try
        {
            Assert.Contains(device, s3.Cli(TimeSpan.FromSeconds(60), "map", "--list").StdOut);
            Assert.Equal(Sha256Of(s3.Disk), Sha256Of(device));
        }
        finally
        {
            s3.Cli(TimeSpan.FromSeconds(60), "unmap", device);
        }

        var name = Path.GetFileName(device);
        Assert.True(MountTable.WaitUntil(() => !File.Exists($"/sys/block/{name}/loop/backing_file"), TimeSpan.FromSeconds(10)), $"{device} is still attached");
    }

    [Fact]
    public void Dev_companion_of_an_S3_snapshot_attaches_a_device_whose_ext4_mounts_with_the_files()
    {
        var mnt = work.Combine("mnt-dev");
        Directory.CreateDirectory(mnt);
        s3.Cli(TimeSpan.FromSeconds(60), "mount", s3.Remote, mnt, "--no-vm", "--cache-dir", work.Combine("cache"));
        string device;
        try
        {
            var companion = Path.Combine(mnt, "snapshots", "vm", "150", S3DiskFixture.Time, "drive-scsi0.img.dev");
            device = ProcessRunner.Run("readlink", ["-f", companion], TimeSpan.FromSeconds(60)).EnsureSuccess("readlink -f").StdOut.Trim();
            Assert.Matches("^/dev/(nbd|loop)[0-9]+$", device);
            Assert.Equal(Sha256Of(s3.Disk), Sha256Of(device));

            var disk = work.Combine("ext4");
            Directory.CreateDirectory(disk);
            ProcessRunner.Run("mount", ["-t", "ext4", "-o", "ro,noload", device, disk], TimeSpan.FromSeconds(60)).EnsureSuccess("mount the ext4");
            try
            {
                Assert.Equal(S3DiskFixture.Note, File.ReadAllText(Path.Combine(disk, "docs", "note.txt")));
                Assert.Equal(s3.BigSha256, Sha256Of(Path.Combine(disk, "big.bin")));
            }
            finally
            {
                ProcessRunner.Run("umount", [disk], TimeSpan.FromSeconds(30));
            }
        }
        finally
        {
            s3.TryCli(TimeSpan.FromSeconds(60), "umount", mnt);
            MountTable.LazyUnmount(mnt);
        }

        var name = Path.GetFileName(device);
        Assert.True(MountTable.WaitUntil(() => !File.Exists($"/sys/block/{name}/loop/backing_file"), TimeSpan.FromSeconds(10)), $"{device} is still attached");
    }

    [Fact]
    public void Damaged_chunk_cache_entries_are_fetched_again_and_the_image_stays_byte_identical()
    {
        var cache = work.Combine("cache-damage");
        var mnt = work.Combine("mnt-cache");
        Directory.CreateDirectory(mnt);
        var image = Path.Combine(mnt, "snapshots", "vm", "150", S3DiskFixture.Time, "drive-scsi0.img");
        void ReadThroughAMount()
        {
            s3.Cli(TimeSpan.FromSeconds(60), "mount", s3.Remote, mnt, "--no-vm", "--cache-dir", cache);
            try
            {
                Assert.Equal(Sha256Of(s3.Disk), Sha256Of(image));
            }
            finally
            {
                // The unmount lets the background writer finish: the cache is complete afterwards.
                s3.TryCli(TimeSpan.FromSeconds(60), "umount", mnt);
                MountTable.LazyUnmount(mnt);
            }
        }

        ReadThroughAMount();
        var entries = Directory.GetFiles(Path.Combine(cache, "chunks"), "*", SearchOption.AllDirectories);
        Assert.NotEmpty(entries);
        var good = entries.ToDictionary(e => e, File.ReadAllBytes);
        foreach (var entry in entries)
        {
            // One bit in the middle of every entry: the CRC and the digest no longer match.
            var bytes = File.ReadAllBytes(entry);
            bytes[bytes.Length / 2] ^= 0x10;
            File.WriteAllBytes(entry, bytes);
        }

        ReadThroughAMount();
        foreach (var (entry, bytes) in good)
        {
            Assert.True(File.Exists(entry), $"{entry} was not stored again");
            Assert.Equal(bytes, File.ReadAllBytes(entry));
        }
    }

    [Fact]
    public void Files_of_an_S3_snapshot_list_and_read_through_the_restore_vm()
    {
        Requires.Tool("qemu-system-x86_64");
        var mnt = work.Combine("mnt-files");
        Directory.CreateDirectory(mnt);
        s3.Cli(TimeSpan.FromSeconds(60), "mount", s3.Remote, mnt, "--cache-dir", work.Combine("cache"));
        try
        {
            var root = Path.Combine(mnt, "snapshots", "vm", "150", S3DiskFixture.Time, "files", "drive-scsi0.img", "raw");
            // The first access starts the restore VM (TCG here: allow minutes).
            var names = Directory.GetFileSystemEntries(root).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
            Assert.Contains("docs", names);
            Assert.Contains("big.bin", names);
            Assert.Equal(S3DiskFixture.Note, File.ReadAllText(Path.Combine(root, "docs", "note.txt")));
            Assert.Equal(s3.BigSha256, Sha256Of(Path.Combine(root, "big.bin")));
        }
        finally
        {
            s3.TryCli(TimeSpan.FromSeconds(60), "vm", "stop", "--all");
            s3.TryCli(TimeSpan.FromSeconds(60), "umount", mnt);
            MountTable.LazyUnmount(mnt);
        }
    }

    public void Dispose() => work.Dispose();
}
