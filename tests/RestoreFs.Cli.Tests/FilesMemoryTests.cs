using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// Bounded memory of files/ (issue 12): four snapshots of an ext4 disk (3,000 small files, a 48 MiB file) browsed one
/// after another through a real mount and real restore VMs — `find` of the whole volume, `cat` of the large file and
/// of every small file — and then their VMs stopped. The mount process's peak memory stays within its configured
/// caches (--cache-mb, the files/ content cache) plus a constant, and once the VMs are stopped every cache budget
/// is given back: what stays above the figure before browsing is within the constant (buffer pools, JIT code).
/// Memory here is the process's anonymous resident memory (RssAnon, sampled every 50 ms for the peak): what the
/// mount holds. File-backed pages — the precompiled (ReadyToRun) code mapped from the executable as new paths run —
/// are the executable's, not state (they grew from 48 to 64 MiB while browsing in one run); VmRSS/VmHWM are
/// reported next to it.
/// </summary>
public sealed class FilesMemoryTests : IDisposable
{
    private const int Snapshots = 4;
    private const int CacheMb = 64;
    private const int FilesCacheMb = 32; // TreeOptions.FilesCacheBytes
    private const int ConstantMb = 112;  // the runtime and JIT, buffer pools (chunk files, FUSE replies, NBD per VM disk), read-ahead in flight
    private readonly TempDirectory dir = new("restorefs-filesmem");
    private string Store => dir.Combine("store");
    private string Mnt => dir.Combine("mnt");
    private Dictionary<string, string> Env => new() { ["XDG_RUNTIME_DIR"] = dir.Combine("run"), ["RESTOREFS_FILES_SWEEP"] = "2" };

    private ProcessResult Cli(TimeSpan timeout, params string[] args) =>
        ProcessRunner.Run(RepoPaths.Cli, args, timeout, environment: Env).EnsureSuccess("restorefs " + string.Join(' ', args));

    private static ProcessResult Run(string tool, params string[] args) =>
        ProcessRunner.Run(Requires.Tool(tool), args, TimeSpan.FromMinutes(5)).EnsureSuccess(tool + " " + string.Join(' ', args));

    [Fact]
    public void Browsing_four_snapshots_stays_within_the_cache_budget_and_stopped_vms_give_their_memory_back()
    {
        Requires.Root();
        Requires.Tool("qemu-system-x86_64");
        var src = dir.Combine("src");
        var r = new Random(5);
        for (var d = 0; d < 30; d++)
        {
            Directory.CreateDirectory(Path.Combine(src, $"d{d:D2}"));
            for (var i = 0; i < 100; i++)
            {
                var data = new byte[r.Next(1000, 12000)];
                r.NextBytes(data);
                File.WriteAllBytes(Path.Combine(src, $"d{d:D2}", $"f{i:D3}"), data);
            }
        }

        var big = new byte[48 << 20];
        r.NextBytes(big);
        File.WriteAllBytes(Path.Combine(src, "big.bin"), big);
        var img = dir.Combine("disk.img");
        Run("truncate", "-s", "160M", img);
        Run("mkfs.ext4", "-q", "-F", "-d", src, img);
        for (var s = 0; s < Snapshots; s++)
        {
            Cli(TimeSpan.FromMinutes(3), "backup", "--store", Store, "--group", "vm/300", "--time", $"2026-05-0{s + 1}T00:00:00Z", $"drive-scsi0={img}");
        }

        Directory.CreateDirectory(Mnt);
        Cli(TimeSpan.FromSeconds(60), "mount", Store, Mnt, "--cache-mb", CacheMb.ToString(), "--max-vms", "2");
        try
        {
            var pid = ProcessMemory.MountServer(Mnt);
            Run("ls", Path.Combine(Mnt, "snapshots", "vm", "300"));
            var before = ProcessMemory.Of(pid).AnonMb;
            var report = new List<string> { $"before browsing: {before} MiB anonymous ({ProcessMemory.Of(pid).RssMb} MiB RSS)" };
            long peakAnon = before;
            using var sampling = new CancellationTokenSource();
            var sampler = Task.Run(async () =>
            {
                while (!sampling.IsCancellationRequested)
                {
                    peakAnon = Math.Max(peakAnon, ProcessMemory.Of(pid).AnonMb);
                    await Task.Delay(50).ConfigureAwait(false);
                }
            });
            for (var s = 0; s < Snapshots; s++)
            {
                var root = Path.Combine(Mnt, "snapshots", "vm", "300", $"2026-05-0{s + 1}T00:00:00Z", "files", "drive-scsi0.img", "raw");
                var found = Run("find", root).StdOut.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length;
                Assert.True(found >= 3000, $"find saw {found} entries");
                Assert.Equal(Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(big)),
                    Run("sha256sum", Path.Combine(root, "big.bin")).StdOut[..64].ToUpperInvariant());
                Run("bash", "-c", $"cat {root}/d*/f* > /dev/null");
                var (rss, peak, anon) = ProcessMemory.Of(pid);
                report.Add($"after snapshot {s + 1}: {anon} MiB anonymous, RSS {rss} MiB (VmHWM {peak})");
            }

            Cli(TimeSpan.FromSeconds(60), "vm", "stop", "--all");
            var deadline = DateTime.UtcNow.AddSeconds(30);
            long after;
            do
            {
                Thread.Sleep(1000);
                after = ProcessMemory.Of(pid).AnonMb;
            }
            while (after > before + ConstantMb && DateTime.UtcNow < deadline);

            sampling.Cancel();
            sampler.Wait();
            var final = ProcessMemory.Of(pid);
            report.Add($"after the VMs stopped: {final.AnonMb} MiB anonymous, RSS {final.RssMb} MiB; peak {peakAnon} MiB anonymous (VmHWM {final.PeakMb})");
            var text = string.Join("; ", report);
            Console.WriteLine("files/ memory: " + text);
            Assert.True(peakAnon <= before + CacheMb + FilesCacheMb + ConstantMb, "peak over the budget: " + text);
            Assert.True(final.AnonMb <= before + ConstantMb, "memory not given back: " + text);
        }
        finally
        {
            ProcessRunner.Run(RepoPaths.Cli, ["umount", Mnt], TimeSpan.FromSeconds(60), environment: Env);
            MountTable.LazyUnmount(Mnt);
        }
    }

    public void Dispose()
    {
        ProcessRunner.Run(RepoPaths.Cli, ["vm", "stop", "--all"], TimeSpan.FromSeconds(60), environment: Env);
        dir.Dispose();
    }
}
