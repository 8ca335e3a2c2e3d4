using Microsoft.Extensions.Logging.Abstractions;
using RestoreFs.Fuse;
using RestoreFs.TestSupport;

namespace RestoreFs.Fuse.Tests;

/// <summary>Real kernel mounts of an in-memory filesystem through our protocol implementation.</summary>
public sealed class MountTests : IAsyncLifetime
{
    private readonly TempDirectory dir = new("restorefs-fuse");
    private readonly MemDir root = new(1);
    private readonly MemDir big = new(3, immutable: false);
    private readonly byte[] data = new byte[64 * 1024 * 1024 + 123];
    private FuseMount? mount;

    private string Mnt => dir.Combine("mnt");

    public async Task InitializeAsync()
    {
        Requires.Root();
        new Random(3).NextBytes(data);
        root.Children["data.bin"] = new MemFile(2, data);
        root.Children["big"] = big;
        for (var i = 0; i < 2000; i++)
        {
            big.Children[$"entry-{i:D4}"] = new MemFile((ulong)(1000 + i), System.Text.Encoding.ASCII.GetBytes($"{i}\n"));
        }

        root.Children["link"] = new MemLink(4, "data.bin");
        root.Children["broken.bin"] = new MemFile(5, new byte[10000], fail: true);
        Directory.CreateDirectory(Mnt);
        mount = await FuseMount.MountAsync(Mnt, root, new FuseMountOptions(FsName: "fuse-test"), NullLoggerFactory.Instance);
    }

    public async Task DisposeAsync()
    {
        if (mount is not null)
        {
            await mount.DisposeAsync();
        }

        MountTable.LazyUnmount(Mnt);
        dir.Dispose();
    }

    private string P(params string[] parts) => Path.Combine([Mnt, .. parts]);

    /// <summary>A second mount of <paramref name="tree"/> beside the test's own, at <c>mnt-NAME</c>; end it with <see cref="UnmountAsync"/>.</summary>
    private async Task<FuseMount> MountBesideAsync(string name, FuseNode tree, FuseMountOptions options)
    {
        var at = dir.Combine("mnt-" + name);
        Directory.CreateDirectory(at);
        return await FuseMount.MountAsync(at, tree, options, NullLoggerFactory.Instance);
    }

    private static async Task UnmountAsync(FuseMount beside)
    {
        await beside.UnmountAsync();
        MountTable.LazyUnmount(beside.MountPoint);
    }

    private static ProcessResult Sh(string command) => ProcessRunner.Run("bash", ["-c", command], TimeSpan.FromMinutes(2));

    [Fact]
    public void Ls_stat_find_and_cmp_work_on_the_mount()
    {
        var ls = Sh($"ls -la '{Mnt}'").EnsureSuccess("ls");
        Assert.Contains("data.bin", ls.StdOut);
        Assert.Contains("link -> data.bin", ls.StdOut);
        Assert.Equal($"{data.Length} 8124", Sh($"stat -c '%s %f' '{P("data.bin")}'").EnsureSuccess("stat").StdOut.Trim());
        Assert.Equal("2004", Sh($"find '{Mnt}' -mindepth 1 | wc -l").EnsureSuccess("find").StdOut.Trim());
        var source = dir.Combine("source.bin");
        File.WriteAllBytes(source, data);
        Sh($"cmp '{source}' '{P("data.bin")}'").EnsureSuccess("cmp");
        Sh($"cmp '{source}' '{P("link")}'").EnsureSuccess("cmp through the symlink");
        Assert.Equal("data.bin", new FileInfo(P("link")).LinkTarget);
    }

    [Fact]
    public void A_two_thousand_entry_directory_lists_fully_even_with_a_tiny_getdents_buffer()
    {
        Assert.Equal(2000, Directory.GetFiles(P("big")).Length);
        // python's os.scandir reads with small buffers; ls -f with an unsorted listing exercises resumption too.
        var names = Sh($"ls -f '{P("big")}'").EnsureSuccess("ls -f").StdOut.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2002, names.Length);
        Assert.Equal(2002, names.Distinct().Count());
    }

    [Fact]
    public void An_immutable_directory_is_listed_once_then_from_the_kernels_cache_and_a_failing_listing_fails_the_read()
    {
        // Made here, not in the shared tree: the other tests walk the whole mount (each test has a mount of its own).
        var fixedDir = new MemDir(6);
        for (var i = 0; i < 300; i++)
        {
            fixedDir.Children[$"name-{i:D3}"] = new MemFile((ulong)(5000 + i), [(byte)i]);
        }

        var unlistable = new MemDir(7, failListing: true);
        root.Children["fixed"] = fixedDir;
        root.Children["unlistable"] = unlistable;
        for (var i = 0; i < 3; i++)
        {
            var names = Sh($"ls -f '{P("fixed")}'").EnsureSuccess("ls -f").StdOut.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Equal(302, names.Length);
        }

        Assert.Equal(1, fixedDir.Listings); // opened three times, listed once: the later opens READDIR nothing

        var before = big.Listings;
        Sh($"ls -f '{P("big")}' && ls -f '{P("big")}'").EnsureSuccess("ls -f big");
        Assert.Equal(before + 2, big.Listings); // a listing that may change is taken at every open

        // The error of a deferred listing reaches the reader of the directory, and only it.
        var failed = Sh($"ls '{P("unlistable")}'");
        Assert.NotEqual(0, failed.ExitCode);
        Assert.Contains("Input/output error", failed.StdErr);
        Assert.Equal("7\n", File.ReadAllText(P("big", "entry-0007")));
    }

    [Fact]
    public void Missing_names_are_cached_negatively()
    {
        var before = root.Lookups;
        for (var i = 0; i < 3; i++)
        {
            Assert.False(File.Exists(P("no-such-file")));
        }

        Assert.Equal(before + 1, root.Lookups);
    }

    [Fact]
    public void Writes_are_refused_with_erofs_and_a_failing_file_fails_alone()
    {
        Assert.Contains("Read-only file system", Sh($"touch '{P("new")}'").StdErr);
        Assert.Contains("Read-only file system", Sh($"mkdir '{P("d")}'").StdErr);
        Assert.Contains("Input/output error", Sh($"cat '{P("broken.bin")}'").StdErr);
        Assert.Equal("7\n", File.ReadAllText(P("big", "entry-0007")));
    }

    [Fact]
    public void Eight_threads_of_random_reads_and_mmap_are_byte_exact()
    {
        var failures = 0;
        Parallel.For(0, 8, t =>
        {
            var random = new Random(t);
            using var handle = File.OpenHandle(P("data.bin"));
            for (var i = 0; i < 100; i++)
            {
                var offset = random.NextInt64(data.Length);
                var buffer = new byte[random.Next(1, 2_000_000)];
                var n = RandomAccess.Read(handle, buffer, offset);
                if (!buffer.AsSpan(0, n).SequenceEqual(data.AsSpan((int)offset, n)))
                {
                    Interlocked.Increment(ref failures);
                }
            }
        });
        Assert.Equal(0, failures);
        using var map = System.IO.MemoryMappedFiles.MemoryMappedFile.CreateFromFile(P("data.bin"), FileMode.Open, null, 0,
            System.IO.MemoryMappedFiles.MemoryMappedFileAccess.Read);
        using var view = map.CreateViewAccessor(30_000_000, 4096, System.IO.MemoryMappedFiles.MemoryMappedFileAccess.Read);
        var page = new byte[4096];
        view.ReadArray(0, page, 0, 4096);
        Assert.Equal(data.AsSpan(30_000_000, 4096).ToArray(), page);
    }

    [Fact]
    public async Task Lookup_counts_return_to_the_root_after_drop_caches_and_unmount_ends_the_session()
    {
        Sh($"ls -lR '{Mnt}' > /dev/null").EnsureSuccess("ls -lR");
        Assert.True(mount!.KnownNodes > 2000);
        Sh("sync; echo 2 > /proc/sys/vm/drop_caches").EnsureSuccess("drop_caches");
        Assert.True(MountTable.WaitUntil(() => mount.KnownNodes <= 2, TimeSpan.FromSeconds(10)), $"{mount.KnownNodes} nodes still known");
        await mount.UnmountAsync();
        Assert.True(mount.Completion.IsCompleted);
        Assert.False(MountTable.IsMounted(Mnt));
    }

    [Fact]
    public async Task A_second_concurrent_mount_serves_its_own_tree()
    {
        var root2 = new MemDir(1);
        root2.Children["only-here.txt"] = new MemFile(2, System.Text.Encoding.ASCII.GetBytes("second\n"));
        await using var second = await MountBesideAsync("2", root2, new FuseMountOptions(FsName: "fuse-test-2"));
        var other = second.MountPoint;
        try
        {
            Assert.Equal("second\n", File.ReadAllText(Path.Combine(other, "only-here.txt")));
            Assert.False(File.Exists(Path.Combine(other, "data.bin")));
            Assert.True(File.Exists(P("data.bin")));
        }
        finally
        {
            await UnmountAsync(second);
        }

        Assert.False(MountTable.IsMounted(other));
        Assert.True(MountTable.IsMounted(Mnt));
    }

    [Fact]
    public async Task Requests_taken_by_the_polling_reader_are_answered_exactly_and_polling_can_be_turned_off()
    {
        // One process reading 2,000 small files one after another: each request but the first of a burst comes
        // while a reader still polls, and is answered on the descriptor that read it (a wrong one hangs the caller).
        var expected = string.Concat(Enumerable.Range(0, 2000).Select(i => $"{i}\n"));
        var cat = Sh($"cd '{P("big")}' && cat entry-*").EnsureSuccess("cat of 2000 files");
        Assert.Equal(expected, cat.StdOut);
        Assert.True(mount!.PolledRequests > 0, "no request was taken by the polling reader");

        // Eight processes at once on top: polled and woken readers answer side by side.
        var parallel = Sh($"cd '{P("big")}' && ls | xargs -P 8 -n 50 cat | sort -n | md5sum").EnsureSuccess("parallel cat");
        var md5 = Convert.ToHexStringLower(System.Security.Cryptography.MD5.HashData(System.Text.Encoding.ASCII.GetBytes(expected)));
        Assert.Equal(md5, parallel.StdOut.Split(' ')[0]);

        await using var plain = await MountBesideAsync("nopoll", root, new FuseMountOptions(FsName: "fuse-test-nopoll") { PollMicroseconds = 0 });
        var other = plain.MountPoint;
        try
        {
            Assert.Equal(expected, Sh($"cd '{Path.Combine(other, "big")}' && cat entry-*").EnsureSuccess("cat without polling").StdOut);
            Assert.Equal(0, plain.PolledRequests);
        }
        finally
        {
            await UnmountAsync(plain);
        }
    }

    [Fact]
    public async Task A_handler_that_blocks_its_reader_hands_the_device_to_another_and_every_request_is_answered()
    {
        // Polling on (the default): one reader reads the device at a time. A read whose node code blocks that reader
        // must not stall other callers: the watchdog lets a follower read the device, and the blocked reader serves
        // again once its handler returns.
        using var gate = new ManualResetEventSlim(false);
        var slowRoot = new MemDir(1);
        var many = new MemDir(2);
        for (var i = 0; i < 500; i++)
        {
            many.Children[$"entry-{i:D4}"] = new MemFile((ulong)(100 + i), System.Text.Encoding.ASCII.GetBytes($"{i}\n"));
        }

        var slow = new BlockingFile(3, System.Text.Encoding.ASCII.GetBytes("slow but whole\n"), gate);
        slowRoot.Children["many"] = many;
        slowRoot.Children["slow.txt"] = slow;
        await using var blocking = await MountBesideAsync("blocking", slowRoot, new FuseMountOptions(FsName: "fuse-test-blocking"));
        var other = blocking.MountPoint;
        try
        {
            var blockedCat = Task.Run(() => Sh($"cat '{Path.Combine(other, "slow.txt")}'"));
            var until = DateTime.UtcNow.AddSeconds(20);
            while ((slow.Entered == 0 || blocking.HandOffs == 0) && DateTime.UtcNow < until)
            {
                await Task.Delay(10);
            }

            Assert.Equal(1, slow.Entered);
            Assert.True(blocking.HandOffs > 0, "a reader blocked in a handler was not relieved");

            // Another process reads 500 files while that read still blocks its reader.
            var expected = string.Concat(Enumerable.Range(0, 500).Select(i => $"{i}\n"));
            var cat = ProcessRunner.Run("bash", ["-c", $"cd '{Path.Combine(other, "many")}' && cat entry-*"], TimeSpan.FromSeconds(60))
                .EnsureSuccess("cat while another read blocks");
            Assert.Equal(expected, cat.StdOut);
            Assert.False(blockedCat.IsCompleted);

            gate.Set();
            Assert.Equal("slow but whole\n", (await blockedCat).EnsureSuccess("the blocked cat").StdOut);

            // The reader that was blocked is back among the others: everything is still answered, serially and at once.
            Assert.Equal(expected, Sh($"cd '{Path.Combine(other, "many")}' && cat entry-*").EnsureSuccess("cat after").StdOut);
            var parallel = Sh($"cd '{Path.Combine(other, "many")}' && ls | xargs -P 4 -n 25 cat | sort -n").EnsureSuccess("parallel cat after");
            Assert.Equal(expected, parallel.StdOut);
        }
        finally
        {
            gate.Set();
            await UnmountAsync(blocking);
        }
    }

    [Fact]
    public async Task Many_callers_and_handlers_that_block_now_and_then_get_every_answer_in_time()
    {
        // The readers' turns under stress: eight processes at once, one after another, and again at once, over files
        // whose opens and reads block their reader for up to 4 ms now and then (hand-offs, spells of several callers,
        // readers stepping down, all mixed). Every byte must come back, and nothing may hang.
        var jittery = new MemDir(1);
        var files = new MemDir(2);
        for (var i = 0; i < 400; i++)
        {
            files.Children[$"f-{i:D3}"] = new JitteryFile((ulong)(100 + i), System.Text.Encoding.ASCII.GetBytes($"{i}\n"));
        }

        jittery.Children["files"] = files;
        await using var jitteryMount = await MountBesideAsync("jittery", jittery, new FuseMountOptions(FsName: "fuse-test-jittery"));
        var other = jitteryMount.MountPoint;
        try
        {
            var expected = string.Concat(Enumerable.Range(0, 400).Select(i => $"{i}\n"));
            var at = Path.Combine(other, "files");
            for (var round = 0; round < 3; round++)
            {
                var parallel = ProcessRunner.Run("bash", ["-c", $"cd '{at}' && ls | xargs -P 8 -n 10 cat | sort -n"], TimeSpan.FromSeconds(90))
                    .EnsureSuccess($"eight processes at once, round {round}");
                Assert.Equal(expected, parallel.StdOut);
                var serial = ProcessRunner.Run("bash", ["-c", $"cd '{at}' && cat f-*"], TimeSpan.FromSeconds(90))
                    .EnsureSuccess($"one process, round {round}");
                Assert.Equal(expected, serial.StdOut);

                // Page cache dropped for the next round: the reads reach the mount again.
                File.WriteAllText("/proc/sys/vm/drop_caches", "3");
            }

            Assert.True(jitteryMount.HandOffs > 0, "no handler held its reader long enough for a hand-off");
        }
        finally
        {
            await UnmountAsync(jitteryMount);
        }
    }
}
