using System.Security.Cryptography;
using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// A datastore made with the real CLI (<c>restorefs backup</c>) from generated images:
/// vm/100 — drive-scsi0 (GPT + ext4 with a known tree) and drive-scsi1 (random data, a zero chunk, short last chunk);
/// vm/200 — the same data image, encrypted with a key file.
/// </summary>
public sealed class BackupFixture : IDisposable
{
    public const string Time = "2026-11-01T10:00:00Z";
    public const int Chunk = 4 * 1024 * 1024;

    public BackupFixture()
    {
        Requires.Root();
        Dir = new TempDirectory("restorefs-cli");
        Directory.CreateDirectory(SourceTree);
        WriteSourceTree(SourceTree);
        ProcessRunner.Run("bash", [RepoPaths.Script("make-disk-image.sh"), DiskImage, "64", SourceTree], TimeSpan.FromMinutes(2))
            .EnsureSuccess("make-disk-image.sh");

        DataBytes = new byte[3 * Chunk + 12345];
        new Random(42).NextBytes(DataBytes);
        Array.Clear(DataBytes, Chunk, Chunk); // chunk 1 is all zero: a hole for NBD/SEEK_HOLE
        File.WriteAllBytes(DataImage, DataBytes);
        File.WriteAllText(ConfigFile, "name: test-vm\nmemory: 1024\nscsi0: local:vm-100-disk-0\n");

        Cli("backup", "--store", Store, "--group", "vm/100", "--time", Time, "--config", ConfigFile,
            $"drive-scsi0={DiskImage}", $"drive-scsi1={DataImage}");
        Cli("key", "create", "--kdf", "none", KeyFile);
        Cli("backup", "--store", Store, "--group", "vm/200", "--time", Time, "--keyfile", KeyFile,
            $"drive-scsi0={DataImage}");
    }

    public TempDirectory Dir { get; }

    public string Store => Dir.Combine("store");

    public string SourceTree => Dir.Combine("tree");

    public string DiskImage => Dir.Combine("disk.img");

    public string DataImage => Dir.Combine("data.img");

    public string ConfigFile => Dir.Combine("qemu-server.conf");

    public string KeyFile => Dir.Combine("key.json");

    public byte[] DataBytes { get; }

    public static string SnapshotDir(string mountPoint, string group) =>
        Path.Combine(mountPoint, "snapshots", group, Time);

    public static ProcessResult Cli(params string[] args) =>
        ProcessRunner.Run(RepoPaths.Cli, args, TimeSpan.FromMinutes(3)).EnsureSuccess("restorefs " + string.Join(' ', args));

    public static string Sha256(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }

    /// <summary>Hash of every file's bytes, size and mtime below <paramref name="root"/>: proves a store was not written.</summary>
    public static string TreeHash(string root)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var file in Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
        {
            var info = new FileInfo(file);
            hash.AppendData(System.Text.Encoding.UTF8.GetBytes($"{Path.GetRelativePath(root, file)}|{info.Length}|{info.LastWriteTimeUtc.Ticks}|"));
            hash.AppendData(File.ReadAllBytes(file));
        }

        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    private static void WriteSourceTree(string root)
    {
        Directory.CreateDirectory(Path.Combine(root, "etc"));
        Directory.CreateDirectory(Path.Combine(root, "home", "admin"));
        Directory.CreateDirectory(Path.Combine(root, "srv", "many"));
        File.WriteAllText(Path.Combine(root, "etc", "hostname"), "restored-vm\n");
        File.WriteAllText(Path.Combine(root, "etc", "motd"), "Welcome back.\n");
        var big = new byte[5 * 1024 * 1024 + 77];
        new Random(7).NextBytes(big);
        File.WriteAllBytes(Path.Combine(root, "srv", "big.bin"), big);
        for (var i = 0; i < 300; i++)
        {
            File.WriteAllText(Path.Combine(root, "srv", "many", $"f{i:D3}.txt"), $"file {i}\n");
        }

        File.CreateSymbolicLink(Path.Combine(root, "home", "admin", "host"), "../../etc/hostname");
        File.SetUnixFileMode(Path.Combine(root, "etc", "motd"), UnixFileMode.UserRead | UnixFileMode.UserWrite);
    }

    public void Dispose() => Dir.Dispose();
}

[CollectionDefinition(Name)]
public sealed class BackupCollection : ICollectionFixture<BackupFixture>
{
    public const string Name = "backup";
}
