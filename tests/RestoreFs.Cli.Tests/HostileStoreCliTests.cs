using System.Diagnostics;
using System.Text;
using RestoreFs.Datastore;
using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// One datastore holding every hostile case next to a good snapshot: <c>restorefs snapshots</c>, <c>restore</c> and a
/// mount with <c>ls -R</c>/<c>cat</c> finish in seconds with bounded memory, name what is wrong, and still serve the good
/// snapshot byte-exact. Backups killed or interrupted leave no temporary files after the next run.
/// </summary>
public sealed class HostileStoreCliTests : IDisposable
{
    private const int Chunk = BackupWriter.DefaultChunkSize;
    private const long MaxRssKiB = 400 * 1024;
    private static readonly DateTimeOffset T0 = DateTimeOffset.Parse("2026-01-02T03:04:05Z");
    private static readonly DateTimeOffset T1 = DateTimeOffset.Parse("2026-01-03T03:04:05Z");
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(30);
    private readonly TempDirectory dir = new("restorefs-hostile-cli");
    private readonly byte[] good = DatastoreBuilder.Data(2 * Chunk + 77, 5);

    public HostileStoreCliTests()
    {
        DatastoreBuilder.Write(Store, "vm/1", T0, new Dictionary<string, byte[]> { ["d"] = good },
            blobs: new Dictionary<string, byte[]> { ["qemu-server.conf"] = "memory: 512\n"u8.ToArray() });
        for (var i = 2; i <= 9; i++)
        {
            DatastoreBuilder.Write(Store, $"vm/{i}", T0, new Dictionary<string, byte[]> { ["d"] = DatastoreBuilder.Data(Chunk + i, 100 + i) });
        }

        // vm/2: the manifest is a FIFO; vm/3: the index is a FIFO; vm/4: the manifest is a symlink to /dev/zero.
        MakeFifo(Bad(2, "index.json.blob"));
        MakeFifo(Bad(3, "d.img.fidx"));
        File.Delete(Bad(4, "index.json.blob"));
        File.CreateSymbolicLink(Bad(4, "index.json.blob"), "/dev/zero");

        // vm/5: a small blob holding 100 MiB of JSON.
        var json = new byte[100 << 20];
        Array.Fill(json, (byte)' ');
        json[0] = (byte)'{';
        json[^1] = (byte)'}';
        File.WriteAllBytes(Bad(5, "index.json.blob"), DataBlob.Encode(json, null, compress: true));

        // vm/6: an archive name leading out of the store; vm/7: a duplicate key.
        WriteManifest(6, """{"backup-type":"vm","backup-id":"6","backup-time":1,"files":[{"crypt-mode":"none","csum":"00","filename":"../../../../x.img.fidx","size":1}]}""");
        WriteManifest(7, """{"backup-type":"vm","backup-type":"ct","backup-id":"7","backup-time":1,"files":[]}""");

        // vm/8: an index whose 4096 + 32 × count wraps around in 64 bits.
        var index = new byte[FixedIndex.HeaderSize + 32];
        FixedIndex.Magic.CopyTo(index, 0);
        System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(index.AsSpan(64), 1L << 59);
        System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(index.AsSpan(72), 1);
        File.WriteAllBytes(Bad(8, "d.img.fidx"), index);

        // vm/9: its first chunk is a FIFO.
        var digest = FixedIndex.Open(Bad(9, "d.img.fidx")).DigestHex(0);
        MakeFifo(Path.Combine(Store, ".chunks", digest[..4], digest));

        // Namespace loops, symlinks out of the store at group and snapshot level, a name with a trailing newline.
        Directory.CreateDirectory(Path.Combine(Store, "ns"));
        for (var i = 0; i < 6; i++)
        {
            File.CreateSymbolicLink(Path.Combine(Store, "ns", $"a{i}"), "..");
        }

        Directory.CreateDirectory(Outside);
        ProcessRunner.Run("cp", ["-a", Path.Combine(Store, "vm", "1"), Path.Combine(Outside, "group")]).EnsureSuccess("cp");
        File.CreateSymbolicLink(Path.Combine(Store, "vm", "10"), Path.Combine(Outside, "group"));
        File.CreateSymbolicLink(Path.Combine(Store, "vm", "1", Names.FormatTime(T1)), Path.Combine(Outside, "group", Names.FormatTime(T0)));
        ProcessRunner.Run("cp", ["-a", Path.Combine(Store, "vm", "1"), Path.Combine(Store, "vm", "100\n")]).EnsureSuccess("cp");
    }

    private string Store => dir.Combine("store");

    private string Outside => dir.Combine("outside");

    private static string Time => Names.FormatTime(T0);

    private string Bad(int id, string file) => Path.Combine(Store, "vm", id.ToString(), Time, file);

    public void Dispose() => dir.Dispose();

    private static void MakeFifo(string path)
    {
        File.Delete(path);
        ProcessRunner.Run("mkfifo", [path]).EnsureSuccess("mkfifo");
    }

    private void WriteManifest(int id, string json) =>
        File.WriteAllBytes(Bad(id, "index.json.blob"), DataBlob.Encode(Encoding.UTF8.GetBytes(json), null, compress: true));

    /// <summary>Runs the CLI under /usr/bin/time with a deadline; returns the result and its peak RSS in KiB.</summary>
    private static (ProcessResult Result, long RssKiB) Cli(params string[] args)
    {
        var result = ProcessRunner.Run("/usr/bin/time", ["-f", "maxrss=%M", RepoPaths.Cli, .. args], Deadline);
        var line = result.StdErr.Split('\n').Last(l => l.StartsWith("maxrss=", StringComparison.Ordinal));
        var rss = long.Parse(line["maxrss=".Length..]);
        var stderr = string.Join('\n', result.StdErr.Split('\n').Where(l => !l.StartsWith("maxrss=", StringComparison.Ordinal)
                                                                          && !l.StartsWith("Command exited", StringComparison.Ordinal)));
        return (result with { StdErr = stderr }, rss);
    }

    [Fact]
    public void Snapshots_lists_the_good_one_and_names_each_bad_one()
    {
        var stopwatch = Stopwatch.StartNew();
        var (result, rss) = Cli("snapshots", Store);
        Assert.True(result.ExitCode == 0, result.StdErr);
        Assert.True(stopwatch.Elapsed < TimeSpan.FromSeconds(15), $"took {stopwatch.Elapsed}");
        Assert.True(rss < MaxRssKiB, $"peak RSS {rss} KiB");
        var lines = result.StdOut.Split('\n');
        Assert.Single(lines, l => l == $"vm/1/{Time}");
        Assert.Contains("d.img.fidx", result.StdOut);
        Assert.Contains(lines, l => l.StartsWith($"vm/2/{Time}  ERROR:", StringComparison.Ordinal) && l.Contains("FIFO", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith($"vm/4/{Time}  ERROR:", StringComparison.Ordinal) && l.Contains("symbolic link", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith($"vm/5/{Time}  ERROR:", StringComparison.Ordinal) && l.Contains("limit", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith($"vm/6/{Time}  ERROR:", StringComparison.Ordinal) && l.Contains("no archive name", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith($"vm/7/{Time}  ERROR:", StringComparison.Ordinal) && l.Contains("malformed", StringComparison.Ordinal));
        Assert.DoesNotContain("vm/10", result.StdOut);
        Assert.DoesNotContain("vm/100", result.StdOut);
        Assert.DoesNotContain(Names.FormatTime(T1), result.StdOut);
        Assert.DoesNotContain("[ns", result.StdOut);
        Assert.Contains("warning: skipped vm/10:", result.StdErr);
        Assert.Contains($"warning: skipped vm/1/{Names.FormatTime(T1)}:", result.StdErr);
        Assert.Contains("warning: skipped ns/a0:", result.StdErr);
        Assert.Contains("100\\x0a", result.StdErr);

        var (json, _) = Cli("snapshots", Store, "--json");
        Assert.Equal(0, json.ExitCode);
        Assert.Equal(9, System.Text.Json.Nodes.JsonNode.Parse(json.StdOut)!.AsArray().Count);
    }

    [Theory]
    [InlineData(2, "d", "FIFO")]
    [InlineData(3, "d", "FIFO")]
    [InlineData(4, "d", "symbolic link")]
    [InlineData(5, "d", "limit")]
    [InlineData(6, "d", "no archive name")]
    [InlineData(7, "d", "malformed")]
    [InlineData(8, "d", "d.img.fidx")]
    [InlineData(9, "d", "FIFO")]
    [InlineData(1, "../../../../x.img", "not a disk image archive")]
    [InlineData(1, "x/../qemu-server.conf.blob", "not a blob")]
    public void Restore_of_a_bad_snapshot_fails_fast_naming_the_problem(int id, string archive, string expected)
    {
        var target = dir.Combine($"out-{id}");
        var (result, rss) = Cli("restore", Store, $"vm/{id}/{Time}", archive, target);
        Assert.Equal(1, result.ExitCode);
        Assert.Contains(expected, result.StdErr);
        Assert.StartsWith("restorefs: ", result.StdErr.Trim());
        Assert.DoesNotContain("   at ", result.StdErr);
        Assert.True(rss < MaxRssKiB, $"peak RSS {rss} KiB");
        Assert.False(File.Exists(target));
    }

    [Fact]
    public void Restore_of_the_good_snapshot_is_byte_exact()
    {
        var target = dir.Combine("good.img");
        var (result, _) = Cli("restore", Store, $"vm/1/{Time}", "d.img", target);
        Assert.True(result.ExitCode == 0, result.StdErr);
        Assert.Equal(good, File.ReadAllBytes(target));
        var (conf, _) = Cli("restore", Store, $"vm/1/{Time}", "qemu-server.conf.blob", "-");
        Assert.Equal("memory: 512\n", conf.StdOut);
        var (linked, _) = Cli("restore", Store, $"vm/1/{Names.FormatTime(T1)}", "d.img", dir.Combine("linked.img"));
        Assert.Equal(1, linked.ExitCode);
        Assert.Contains("symlink", linked.StdErr);
    }

    [Fact]
    public void A_damaged_chunk_stops_an_image_restore_unless_keep_going_writes_the_rest_with_zeros_there()
    {
        // Four chunks: data, zeros, data (damaged), a short last one. The restore is sparse where the image is zero.
        var data = DatastoreBuilder.Data(3 * Chunk + 4096, 31, 1);
        DatastoreBuilder.Write(Store, "vm/30", T0, new Dictionary<string, byte[]> { ["d"] = data });
        var digest = Convert.ToHexStringLower(FixedIndex.Open(Bad(30, "d.img.fidx")).Digest(2));
        var chunkFile = Path.Combine(Store, ".chunks", digest[..4], digest);
        var bytes = File.ReadAllBytes(chunkFile);
        bytes[bytes.Length / 2] ^= 0x40;
        File.WriteAllBytes(chunkFile, bytes);

        var stopped = dir.Combine("stopped.img");
        var (result, _) = Cli("restore", Store, $"vm/30/{Time}", "d.img", stopped);
        Assert.Equal(1, result.ExitCode);
        Assert.Contains(digest, result.StdErr);
        Assert.Contains("--keep-going", result.StdErr);
        Assert.False(File.Exists(stopped));

        var rest = dir.Combine("rest.img");
        (result, _) = Cli("restore", Store, $"vm/30/{Time}", "d.img", rest, "--keep-going");
        Assert.Equal(1, result.ExitCode);
        Assert.Contains($"bytes {2L * Chunk}-{3L * Chunk - 1} could not be read and are zeros", result.StdErr);
        Assert.Contains(digest, result.StdErr);
        Assert.Contains($"{Chunk} bytes could not be read and were written as zeros", result.StdErr);
        var restored = File.ReadAllBytes(rest);
        Assert.Equal(data.Length, restored.Length);
        Assert.True(restored.AsSpan(0, 2 * Chunk).SequenceEqual(data.AsSpan(0, 2 * Chunk)), "the chunks before the damaged one");
        Assert.True(restored.AsSpan(3 * Chunk).SequenceEqual(data.AsSpan(3 * Chunk)), "the chunk after it");
        Assert.True(restored.AsSpan(2 * Chunk, Chunk).IndexOfAnyExcept((byte)0) < 0, "the damaged chunk's range");

        // The zero chunk is a hole in the restored file (and the damaged one was written as zeros: allocated).
        var blocks = long.Parse(ProcessRunner.Run("stat", ["-c", "%b", rest]).EnsureSuccess("stat").StdOut.Trim());
        Assert.True(blocks * 512 <= data.Length - Chunk, $"{blocks} blocks allocated for {data.Length} bytes");
    }

    [Fact]
    public void A_raw_stream_restore_with_keep_going_writes_zeros_for_a_damaged_chunk_and_the_rest_exact()
    {
        var tree = dir.Combine("ct-tree");
        Directory.CreateDirectory(tree);
        for (var i = 0; i < 40; i++)
        {
            File.WriteAllBytes(Path.Combine(tree, $"f{i:D2}"), DatastoreBuilder.Data(8192, 200 + i));
        }

        using (var writer = BackupWriter.Create(Store, new BackupGroup(BackupNamespace.Root, "ct", "31"), T0, null, precreateChunkDirectories: false))
        {
            RestoreFs.Pxar.PxarBackup.Write(writer, [new RestoreFs.Pxar.PxarBackupSource("root.pxar", tree)],
                new RestoreFs.Pxar.PxarBackupOptions(AverageChunkSize: 16 * 1024));
            writer.Finish();
        }

        var whole = dir.Combine("whole.pxar");
        var (result, _) = Cli("restore", Store, $"ct/31/{Time}", "root.pxar.didx", whole);
        Assert.True(result.ExitCode == 0, result.StdErr);
        var index = DynamicIndex.Open(Path.Combine(Store, "ct", "31", Time, "root.pxar.didx"));
        Assert.True(index.ChunkCount >= 3, $"{index.ChunkCount} chunks");
        var damaged = index.ChunkCount / 2;
        var digest = Convert.ToHexStringLower(index.Digest(damaged));
        var chunkFile = Path.Combine(Store, ".chunks", digest[..4], digest);
        var bytes = File.ReadAllBytes(chunkFile);
        bytes[bytes.Length / 2] ^= 0x40;
        File.WriteAllBytes(chunkFile, bytes);

        var rest = dir.Combine("rest.pxar");
        (result, _) = Cli("restore", Store, $"ct/31/{Time}", "root.pxar.didx", rest, "--keep-going");
        Assert.Equal(1, result.ExitCode);
        var (start, end) = (index.ChunkStart(damaged), index.ChunkEnd(damaged));
        Assert.Contains($"bytes {start}-{end - 1} could not be read and are zeros", result.StdErr);
        Assert.Contains(digest, result.StdErr);
        var expected = File.ReadAllBytes(whole);
        Array.Clear(expected, (int)start, (int)(end - start));
        Assert.Equal(expected, File.ReadAllBytes(rest));
    }

    [Fact]
    public void A_mount_of_the_hostile_store_lists_and_reads_in_time()
    {
        Requires.Root();
        var mountPoint = dir.Combine("mnt");
        using var mount = CliMount.Start(Store, mountPoint, "--no-vm");
        var stopwatch = Stopwatch.StartNew();
        var ls = ProcessRunner.Run("ls", ["-R", mount.Snapshots], Deadline);
        Assert.True(stopwatch.Elapsed < TimeSpan.FromSeconds(20), $"ls -R took {stopwatch.Elapsed}");
        Assert.Contains("d.img", ls.StdOut);
        Assert.DoesNotContain("100\n", ls.StdOut);

        // Every file of every snapshot is read (most fail): none may hang.
        var all = ProcessRunner.Run("bash", ["-c", $"for f in {mount.Snapshots}/vm/*/*/*; do timeout 10 cat \"$f\" >/dev/null 2>&1; echo \"$? $f\"; done"], Deadline);
        Assert.DoesNotContain(all.StdOut.Split('\n'), l => l.StartsWith("124 ", StringComparison.Ordinal));

        var image = Path.Combine(mount.Snapshots, "vm", "1", Time, "d.img");
        Assert.Equal(good, File.ReadAllBytes(image));
        Assert.Equal("memory: 512\n", File.ReadAllText(Path.Combine(mount.Snapshots, "vm", "1", Time, "qemu-server.conf")));
        Assert.True(stopwatch.Elapsed < TimeSpan.FromSeconds(25), $"took {stopwatch.Elapsed}");
    }

    private List<string> Temporaries(string store) =>
        Directory.EnumerateFileSystemEntries(store, "*", SearchOption.AllDirectories)
            .Where(p => p.Contains(".tmp_", StringComparison.Ordinal) || p.Contains(".tmp-", StringComparison.Ordinal) ||
                        Path.GetFileName(p).StartsWith(BackupWriter.MarkerPrefix, StringComparison.Ordinal))
            .ToList();

    [Theory]
    [InlineData("KILL")]
    [InlineData("INT")]
    [InlineData("TERM")]
    public void A_backup_killed_or_interrupted_leaves_no_temporaries_after_the_next_run(string signal)
    {
        var store = dir.Combine("backup-store");
        var source = dir.Combine("source.img");
        File.WriteAllBytes(source, DatastoreBuilder.Data(256 << 20, 11));
        var psi = new ProcessStartInfo(RepoPaths.Cli, ["backup", "--store", store, "--group", "vm/20", $"d={source}"])
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        using var process = new Process { StartInfo = psi };
        var stderr = new StringBuilder();
        using var reported = new ManualResetEventSlim();
        process.ErrorDataReceived += (_, e) =>
        {
            lock (stderr)
            {
                stderr.AppendLine(e.Data);
            }

            // The first progress line ("d: 10% (...)"): chunks are written and most of the image is still to come.
            if (e.Data is { } line && line.Contains("% (", StringComparison.Ordinal))
            {
                reported.Set();
            }
        };
        process.Start();
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        Assert.True(reported.Wait(Deadline), $"no progress from the backup: {stderr}");

        // Signalled straight from this process, the moment progress shows: a fixed delay or a forked kill(1) can lose
        // the race against a backup that finishes early.
        Assert.Equal(0, Kill(process.Id, signal switch { "KILL" => 9, "INT" => 2, _ => 15 }));
        Assert.True(process.WaitForExit(Deadline), "backup did not stop");
        process.WaitForExit();
        Assert.Equal(signal switch { "KILL" => 137, "INT" => 130, _ => 143 }, process.ExitCode);
        if (signal != "KILL")
        {
            Assert.Contains("unfinished snapshot was removed", stderr.ToString());
            Assert.Empty(Temporaries(store));
        }

        var second = dir.Combine("small.img");
        File.WriteAllBytes(second, DatastoreBuilder.Data(Chunk + 1, 12));
        var (next, _) = Cli("backup", "--store", store, "--group", "vm/21", $"d={second}");
        Assert.True(next.ExitCode == 0, next.StdErr);
        Assert.Empty(Temporaries(store));
        var (list, _) = Cli("snapshots", store);
        Assert.Contains("vm/21/", list.StdOut);
        Assert.DoesNotContain("vm/20/", list.StdOut);
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);
}
