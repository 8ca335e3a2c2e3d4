using System.Diagnostics;
using System.Text;
using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>A damaged or missing chunk fails only the reads that touch it, with EIO and one log line naming the chunk.</summary>
[Collection(BackupCollection.Name)]
public sealed class DamageTests(BackupFixture backup) : IDisposable
{
    private readonly TempDirectory work = new("restorefs-damage");

    [Fact]
    public void Damaged_and_missing_chunks_fail_only_their_reads_and_are_logged_once()
    {
        var store = work.Combine("store");
        ProcessRunner.Run("cp", ["-a", backup.Store, store]).EnsureSuccess("cp -a store");
        var fidx = Directory.EnumerateFiles(Path.Combine(store, "vm", "100"), "drive-scsi1.img.fidx", SearchOption.AllDirectories).Single();
        var digests = ReadDigests(fidx);
        Assert.Equal(4, digests.Count);
        var corrupt = ChunkPath(store, digests[0]);
        var bytes = File.ReadAllBytes(corrupt);
        bytes[bytes.Length / 2] ^= 0x5A;
        File.WriteAllBytes(corrupt, bytes);
        File.Delete(ChunkPath(store, digests[2]));
        var before = BackupFixture.TreeHash(store);

        var mountPoint = work.Combine("mnt");
        Directory.CreateDirectory(mountPoint);
        var stderr = new StringBuilder();
        using var driver = new Process
        {
            StartInfo = new ProcessStartInfo(RepoPaths.Cli, ["mount", store, mountPoint, "--foreground", "--no-vm"])
            {
                RedirectStandardError = true,
                RedirectStandardOutput = true,
                UseShellExecute = false,
            },
        };
        driver.ErrorDataReceived += (_, e) =>
        {
            lock (stderr)
            {
                stderr.AppendLine(e.Data);
            }
        };
        driver.Start();
        driver.BeginErrorReadLine();
        try
        {
            Assert.True(MountTable.WaitUntil(() => MountTable.IsMounted(mountPoint), TimeSpan.FromSeconds(30)), "mount did not appear");
            var image = Path.Combine(BackupFixture.SnapshotDir(mountPoint, "vm/100"), "drive-scsi1.img");
            const int chunk = BackupFixture.Chunk;
            for (var attempt = 0; attempt < 3; attempt++)
            {
                Assert.Contains("Input/output error", ReadRange(image, 0, 4096).StdErr);
                Assert.Contains("Input/output error", ReadRange(image, 2L * chunk + 100, 4096).StdErr);
            }

            // The zero chunk and the short last chunk still read, byte-exact.
            var ok = ProcessRunner.Run("bash", ["-c", $"dd if='{image}' bs=1M skip=4 count=4 status=none | sha256sum"]).EnsureSuccess("dd");
            Assert.StartsWith(Sha(backup.DataBytes.AsSpan(chunk, chunk)), ok.StdOut);
            var last = ProcessRunner.Run("bash", ["-c", $"tail -c 12345 '{image}' | sha256sum"]).EnsureSuccess("tail");
            Assert.StartsWith(Sha(backup.DataBytes.AsSpan(3 * chunk)), last.StdOut);
        }
        finally
        {
            ProcessRunner.Run("kill", ["-TERM", driver.Id.ToString()]);
            if (!driver.WaitForExit(TimeSpan.FromSeconds(30)))
            {
                driver.Kill();
            }

            MountTable.LazyUnmount(mountPoint);
        }

        string log;
        lock (stderr)
        {
            log = stderr.ToString();
        }

        Assert.Equal(1, Count(log, digests[0]));
        Assert.Equal(1, Count(log, digests[2]));
        Assert.Equal(before, BackupFixture.TreeHash(store));
    }

    private static ProcessResult ReadRange(string path, long offset, int length) =>
        ProcessRunner.Run("bash", ["-c", $"tail -c +{offset + 1} '{path}' | head -c {length} > /dev/null"]);

    /// <summary>Number of log lines naming <paramref name="needle"/>.</summary>
    private static int Count(string text, string needle) =>
        text.Split('\n').Count(line => line.Contains(needle, StringComparison.Ordinal));

    private static string Sha(ReadOnlySpan<byte> data) => Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(data));

    internal static List<string> ReadDigests(string fidx)
    {
        var bytes = File.ReadAllBytes(fidx);
        var list = new List<string>();
        for (var offset = 4096; offset + 32 <= bytes.Length; offset += 32)
        {
            list.Add(Convert.ToHexStringLower(bytes.AsSpan(offset, 32)));
        }

        return list;
    }

    internal static string ChunkPath(string store, string digest) => Path.Combine(store, ".chunks", digest[..4], digest);

    public void Dispose() => work.Dispose();
}
