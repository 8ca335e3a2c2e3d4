using System.Text;
using RestoreFs.RestoreApi;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>list/read/extract handlers through the real HTTP API on a unix socket, on real directories
/// (<see cref="HandlerFixture"/>).</summary>
public sealed class HandlerTests(HandlerFixture f) : IClassFixture<HandlerFixture>
{
    private const string P1 = HandlerFixture.FullName + ".img.fidx/part/1";

    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    private static byte[] Join(string prefix, byte[] name) => [.. B(prefix + "/"), .. name];

    private static string S(byte[] b) => Encoding.UTF8.GetString(b);

    [Fact]
    public async Task Every_virtual_level_lists_with_types_sizes_filepaths_and_the_failing_volume_shown()
    {
        await using var client = f.Harness.Client();
        var disks = await client.ListAllAsync("");
        Assert.Equal([HandlerFixture.Serial + ".img.fidx", "bare.img.fidx"], disks.Select(e => S(e.Name)));
        Assert.All(disks, e => Assert.Equal((EntryTypes.Virtual, false), (e.Type, e.Leaf)));
        Assert.Equal(400UL << 20, disks[0].Size);

        // The full archive name finds the disk whose serial virtio cut to 20 bytes; filepaths keep the request's form.
        var buckets = await client.ListAllAsync(HandlerFixture.FullName + ".img.fidx");
        Assert.Equal(["lvm", "part"], buckets.Select(e => S(e.Name)));
        Assert.Equal(HandlerFixture.FullName + ".img.fidx/lvm", S(buckets[0].FilePath));
        Assert.All(buckets, e => Assert.Equal(EntryTypes.Virtual, e.Type));
        Assert.Equal(["lvm", "part"], (await client.ListAllAsync(HandlerFixture.Serial)).Select(e => S(e.Name)));
        Assert.Equal(["lvm", "part"], (await client.ListAllAsync(HandlerFixture.FullName + ".img/")).Select(e => S(e.Name)));

        var parts = await client.ListAllAsync(HandlerFixture.FullName + ".img.fidx/part/");
        Assert.Equal(["1", "2"], parts.Select(e => S(e.Name)));
        Assert.Equal(HandlerFixture.FullName + ".img.fidx/part/1", S(parts[0].FilePath));
        Assert.Equal((EntryTypes.Directory, 40UL << 20, (string?)null), (parts[0].Type, parts[0].Size, parts[0].Error));
        Assert.Equal(8UL << 20, parts[1].Size);
        Assert.Contains("no file system recognised", parts[1].Error);

        var vgs = await client.ListAllAsync(HandlerFixture.FullName + "/lvm");
        Assert.Equal("vg0", S(Assert.Single(vgs).Name));
        var lvs = await client.ListAllAsync(HandlerFixture.FullName + "/lvm/vg0");
        var lv = Assert.Single(lvs);
        Assert.Equal(("root", 320UL << 20, EntryTypes.Directory), (S(lv.Name), lv.Size, lv.Type));
        var onLv = await client.ListAllAsync(HandlerFixture.FullName + "/lvm/vg0/root");
        Assert.Equal("lv.txt", S(Assert.Single(onLv).Name));

        Assert.Equal(["raw"], (await client.ListAllAsync("bare.img.fidx")).Select(e => S(e.Name)));
        Assert.Equal(["etc", "home", "srv"], (await client.ListAllAsync("bare/raw")).Select(e => S(e.Name)).Order());
    }

    [Fact]
    public async Task Listing_into_a_volume_that_failed_to_mount_answers_400_naming_it_and_the_reason()
    {
        await using var client = f.Harness.Client();
        var e = await Assert.ThrowsAsync<RestoreApiException>(() => client.ListAllAsync(HandlerFixture.FullName + "/part/2/etc"));
        Assert.Equal(400, e.StatusCode);
        Assert.Contains(HandlerFixture.Serial + "/part/2", e.Message);
        Assert.Contains("no file system recognised", e.Message);
        var missing = await Assert.ThrowsAsync<RestoreApiException>(() => client.ListAllAsync(HandlerFixture.FullName + "/part/9"));
        Assert.Contains("part/9", missing.Message);
        var nodisk = await Assert.ThrowsAsync<RestoreApiException>(() => client.ListAllAsync("drive-scsi7.img.fidx/part/1"));
        Assert.Contains("drive-scsi7", nodisk.Message);
        var bucket = await Assert.ThrowsAsync<RestoreApiException>(() => client.ListAllAsync(HandlerFixture.FullName + "/zpool"));
        Assert.Contains("zpool", bucket.Message);
    }

    [Fact]
    public async Task Entries_carry_type_mode_owner_time_size_and_symlink_targets_without_following_links()
    {
        await using var client = f.Harness.Client();
        var u = await client.ListAllAsync(P1 + "/home/u");
        ArchiveEntry Get(string name) => u.Single(e => e.Name.SequenceEqual(B(name)));

        var link = Get("hostname-link");
        Assert.Equal((EntryTypes.Symlink, true), (link.Type, link.Leaf));
        Assert.Equal(B("../../etc/hostname"), link.Target);
        Assert.Equal(0xA1FFu, link.Mode);
        Assert.Equal(new DateTimeOffset(2022, 2, 2, 2, 2, 2, TimeSpan.Zero).ToUnixTimeSeconds(), link.MTime);
        Assert.Equal(B("/etc"), Get("etc-abs").Target);
        Assert.Equal(EntryTypes.Symlink, Get("etc-abs").Type);
        Assert.Equal(B("does-not-exist"), Get("dangling").Target); // listed, not dropped as PBS would
        Assert.Equal(B("../../../../../../../../.."), Get("up-rel").Target);

        var grusse = Get("Grüße.txt");
        Assert.Equal((EntryTypes.File, 0x81EDu | 0x800u, 11UL), (grusse.Type, grusse.Mode, grusse.Size));
        var big = Get("bigid.txt");
        Assert.Equal((3000000u, 3000001u), (big.Uid, big.Gid));
        Assert.Equal(EntryTypes.Directory, Get("docs").Type);
        Assert.False(Get("docs").Leaf);

        var special = (await client.ListAllAsync(P1 + "/home/u/special")).ToDictionary(e => S(e.Name));
        Assert.Equal(EntryTypes.Fifo, special["fifo"].Type);
        Assert.Equal(EntryTypes.Socket, special["sock"].Type);
        Assert.Equal(EntryTypes.CharDevice, special["null"].Type);
        Assert.Equal(0x2000u, special["null"].Mode & 0xF000u);

        var report = Assert.Single(await client.ListAllAsync(P1 + "/home/u/docs"));
        Assert.Equal(0x8180u, report.Mode); // regular, 0600
        Assert.Equal(P1 + "/home/u/docs/report.txt", S(report.FilePath));
        Assert.Equal(new DateTimeOffset(2023, 1, 2, 3, 4, 5, TimeSpan.Zero).ToUnixTimeSeconds(), report.MTime);

        // A file (or a symlink) as the path: one entry describing it, its filepath the request path.
        var hostname = Assert.Single(await client.ListAllAsync(P1 + "/etc/hostname"));
        Assert.Equal((P1 + "/etc/hostname", "hostname", 6UL), (S(hostname.FilePath), S(hostname.Name), hostname.Size!.Value));
        Assert.Equal(new DateTimeOffset(2024, 5, 1, 10, 0, 0, TimeSpan.Zero).ToUnixTimeSeconds(), hostname.MTime);
        var abs = Assert.Single(await client.ListAllAsync(P1 + "/home/u/etc-abs"));
        Assert.Equal((EntryTypes.Symlink, "/etc"), (abs.Type, S(abs.Target!)));
    }

    [Fact]
    public async Task Names_that_are_not_utf8_survive_list_read_and_extract()
    {
        await using var client = f.Harness.Client();
        var u = await client.ListAllAsync(P1 + "/home/u");
        var latin = u.Single(e => e.Name.SequenceEqual(HandlerFixture.Latin1Name));
        Assert.Equal(Join(P1 + "/home/u", HandlerFixture.Latin1Name), latin.FilePath);
        Assert.Equal(EntryTypes.File, latin.Type);
        var dir = u.Single(e => e.Name.SequenceEqual(HandlerFixture.BinaryDirName));
        Assert.Equal(EntryTypes.Directory, dir.Type);

        // The filepath the daemon gave is usable as it is.
        var buffer = new byte[100];
        var n = await client.ReadAsync(latin.FilePath, 0, buffer, CancellationToken.None);
        Assert.Equal("latin-1 name\n", Encoding.ASCII.GetString(buffer, 0, n));
        var inner = Assert.Single(await client.ListAllAsync(dir.FilePath));
        Assert.Equal([.. dir.FilePath, .. "/inner.txt"u8], inner.FilePath);
        n = await client.ReadAsync(inner.FilePath, 0, buffer, CancellationToken.None);
        Assert.Equal("inside a binary-named directory\n", Encoding.ASCII.GetString(buffer, 0, n));

        await using var plain = await client.ExtractAsync(latin.FilePath, ExtractFormat.Plain, false, CancellationToken.None);
        using var memory = new MemoryStream();
        await plain.CopyToAsync(memory);
        Assert.Equal("latin-1 name\n", Encoding.ASCII.GetString(memory.ToArray()));
    }

    [Theory]
    [InlineData("/home/u/../../etc/passwd")]
    [InlineData("/home/u/..")]
    [InlineData("/../etc/passwd")]
    public async Task Dot_dot_in_a_request_is_refused(string rest)
    {
        await using var client = f.Harness.Client();
        var list = await Assert.ThrowsAsync<RestoreApiException>(() => client.ListAllAsync(P1 + rest));
        Assert.Equal(400, list.StatusCode);
        Assert.Contains("..", list.Message);
        var read = await Assert.ThrowsAsync<RestoreApiException>(() => client.ReadAsync(B(P1 + rest), 0, new byte[10], CancellationToken.None));
        Assert.Equal(400, read.StatusCode);
        await Assert.ThrowsAsync<RestoreApiException>(() => client.ExtractAsync(B(P1 + rest), ExtractFormat.Tar, false, CancellationToken.None));
    }

    [Theory]
    [InlineData("/home/u/etc-abs/passwd")] // absolute symlink to the system's /etc
    [InlineData("/home/u/passwd-abs")] // absolute symlink to a file
    [InlineData("/home/u/up-rel/etc/passwd")] // relative symlink climbing far above the volume
    [InlineData("/home/u/chain1/etc/passwd")] // a chain of relative symlinks that ends above the volume
    [InlineData("/home/u/hostname-link")] // even a link that stays inside is not followed
    public async Task Symlinks_are_never_followed_so_no_path_leaves_the_volume(string rest)
    {
        await using var client = f.Harness.Client();
        var buffer = new byte[4096];
        var read = await Assert.ThrowsAsync<RestoreApiException>(() => client.ReadAsync(B(P1 + rest), 0, buffer, CancellationToken.None));
        Assert.Equal(400, read.StatusCode);
        Assert.DoesNotContain("root:x:0:0", read.Message);
        var plain = await Assert.ThrowsAsync<RestoreApiException>(() => client.ExtractAsync(B(P1 + rest), ExtractFormat.Plain, false, CancellationToken.None));
        Assert.Equal(400, plain.StatusCode);
        if (rest.Count(c => c == '/') > 3)
        {
            // Through a link: listing fails too, it does not show the directory the link points at.
            var list = await Assert.ThrowsAsync<RestoreApiException>(() => client.ListAllAsync(P1 + rest));
            Assert.Contains("not a directory", list.Message);
        }
    }

    [Fact]
    public async Task Tar_of_a_directory_with_escaping_links_holds_the_links_not_their_targets()
    {
        await using var client = f.Harness.Client();
        await using var body = await client.ExtractAsync(B(P1 + "/home/u"), ExtractFormat.Tar, false, CancellationToken.None);
        using var memory = new MemoryStream();
        await body.CopyToAsync(memory);
        var archive = f.Dir.Combine("links.tar");
        await File.WriteAllBytesAsync(archive, memory.ToArray());
        var listing = ProcessRunner.Run(Requires.Tool("tar"), ["-tvf", archive]).EnsureSuccess("tar -t").StdOut;
        Assert.Contains("u/etc-abs -> /etc", listing);
        Assert.Contains("u/chain3 -> ../../..", listing);
        Assert.DoesNotContain("shadow", listing);
        Assert.DoesNotContain("u/etc-abs/", listing);
        Assert.DoesNotContain("root:x:0:0:root:/root:/bin/bash\nu:x", Encoding.Latin1.GetString(memory.ToArray()).Replace("etc/passwd", ""));
    }

    [Fact]
    public async Task Reads_at_odd_offsets_spanning_sizes_and_many_at_once_are_byte_exact()
    {
        await using var client = f.Harness.Client();
        var path = B(P1 + "/srv/random.bin");
        var size = f.Random.Length;
        (long Offset, int Length)[] cases =
        [
            (0, 1), (1, 4095), (4095, 2), (511, 513), (size - 1, 1), (size - 1, 100), (size - 5000, 1 << 20), (12345, 1 << 20),
            (0, size), (0, size + 4096), (size, 10), (size + 1000, 10), (7, 0),
        ];
        foreach (var (offset, length) in cases)
        {
            var buffer = new byte[length];
            var n = await client.ReadAsync(path, offset, buffer, CancellationToken.None);
            var expected = (int)Math.Clamp(size - offset, 0, length);
            Assert.True(n == expected, $"read {offset}+{length}: {n} bytes, expected {expected}");
            Assert.True(buffer.AsSpan(0, n).SequenceEqual(f.Random.AsSpan((int)Math.Min(offset, size), n)), $"read {offset}+{length}: wrong bytes");
        }

        var random = new Random(11);
        var tasks = Enumerable.Range(0, 64).Select(async _ =>
        {
            int offset, length;
            lock (random)
            {
                offset = random.Next(0, size);
                length = random.Next(1, 300_000);
            }

            var buffer = new byte[length];
            var n = await client.ReadAsync(path, offset, buffer, CancellationToken.None);
            Assert.Equal(Math.Min(length, size - offset), n);
            Assert.True(buffer.AsSpan(0, n).SequenceEqual(f.Random.AsSpan(offset, n)), $"read {offset}+{length}");
        });
        await Task.WhenAll(tasks);

        Assert.Equal(0, await client.ReadAsync(B(P1 + "/srv/empty"), 0, new byte[10], CancellationToken.None));
    }

    [Fact]
    public async Task Reads_that_are_not_of_a_regular_file_or_too_long_are_refused()
    {
        await using var client = f.Harness.Client();
        async Task<RestoreApiException> Refused(string path, int length = 10, long offset = 0) =>
            await Assert.ThrowsAsync<RestoreApiException>(() => client.ReadAsync(B(path), offset, new byte[length], CancellationToken.None));

        Assert.Contains("16777216", (await Refused(P1 + "/srv/random.bin", (16 << 20) + 1)).Message);
        Assert.Contains("not a regular file", (await Refused(P1 + "/etc")).Message);
        Assert.Contains("not a regular file", (await Refused(P1 + "/home/u/special/fifo")).Message); // and did not block
        Assert.Contains("not a regular file", (await Refused(P1 + "/home/u/special/null")).Message);
        Assert.Contains("no such file", (await Refused(P1 + "/etc/nothing")).Message);
        Assert.Equal(400, (await Refused(HandlerFixture.FullName + "/part")).StatusCode);
        Assert.Equal(400, (await Refused(P1)).StatusCode);

        // Exactly 16 MiB is allowed (fewer bytes come back: the file is shorter).
        Assert.Equal(f.Random.Length, await client.ReadAsync(B(P1 + "/srv/random.bin"), 0, new byte[16 << 20], CancellationToken.None));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Tar_extract_unpacked_by_the_real_tar_equals_the_source(bool zstd)
    {
        await using var client = f.Harness.Client();
        var target = f.Dir.Combine($"x-{zstd}");
        Directory.CreateDirectory(target);
        var archive = f.Dir.Combine($"home-{zstd}.tar" + (zstd ? ".zst" : ""));
        await using (var body = await client.ExtractAsync(B(P1 + "/home"), ExtractFormat.Tar, zstd, CancellationToken.None))
        await using (var file = File.Create(archive))
        {
            await body.CopyToAsync(file);
        }

        if (zstd)
        {
            var magic = new byte[4];
            await using (var file = File.OpenRead(archive))
            {
                await file.ReadExactlyAsync(magic);
            }

            Assert.Equal("28b52ffd", Convert.ToHexStringLower(magic));
            ProcessRunner.Run(Requires.Tool("zstd"), ["-t", "-q", archive]).EnsureSuccess("zstd -t");
        }

        ProcessRunner.Run(Requires.Tool("tar"), [zstd ? "--zstd" : "--no-auto-compress", "--same-owner", "-xpf", archive, "-C", target])
            .EnsureSuccess("tar -x");
        var source = Path.Combine(f.Tree, "home");
        var copy = Path.Combine(target, "home");

        // Contents (and symlink targets) — special files are compared below.
        var diff = ProcessRunner.Run(Requires.Tool("diff"), ["-r", "--no-dereference", "-x", "special", source, copy]);
        Assert.True(diff.ExitCode == 0, diff.StdOut + diff.StdErr);

        // Types, modes, owners, sizes, times (to the nanosecond), link targets: find prints names as raw bytes.
        string Describe(string root) => string.Join('\n', new[]
        {
            ProcessRunner.Run("find", [root, "-mindepth", "1", "-type", "f", "-printf", "%P f %m %U %G %s %T@\\n"]).StdOut,
            ProcessRunner.Run("find", [root, "-mindepth", "1", "-type", "d", "-printf", "%P d %m %U %G %T@\\n"]).StdOut,
            ProcessRunner.Run("find", [root, "-mindepth", "1", "-type", "l", "-printf", "%P l %U %G %l\\n"]).StdOut,
            ProcessRunner.Run("find", [root, "-mindepth", "1", "(", "-type", "p", "-o", "-type", "c", ")", "-printf", "%P %y %m %U %G %T@\\n"]).StdOut,
        }.SelectMany(s => s.Split('\n', StringSplitOptions.RemoveEmptyEntries)).Order(StringComparer.Ordinal));
        var expected = Describe(source);
        Assert.Contains("u/special/fifo p ", expected);
        Assert.Contains("u/bigid.txt f 644 3000000 3000001", expected);
        Assert.Contains("u/docs/report.txt f 600 0 0 17 1672628645.1234567890", expected);
        Assert.Equal(expected, Describe(copy));
        Assert.Equal(
            ProcessRunner.Run("stat", ["-c", "%t:%T", Path.Combine(source, "u/special/null")]).StdOut,
            ProcessRunner.Run("stat", ["-c", "%t:%T", Path.Combine(copy, "u/special/null")]).StdOut);
        Assert.False(File.Exists(Path.Combine(copy, "u/special/sock")), "tar has no sockets: they are left out");
        TestHelpers.RemoveTree(target);
    }

    [Fact]
    public async Task Tar_of_a_single_file_and_plain_extract_and_refusals()
    {
        await using var client = f.Harness.Client();
        await using (var body = await client.ExtractAsync(B(P1 + "/srv/random.bin"), ExtractFormat.Plain, false, CancellationToken.None))
        using (var memory = new MemoryStream())
        {
            await body.CopyToAsync(memory);
            Assert.True(memory.ToArray().AsSpan().SequenceEqual(f.Random));
        }

        await using (var body = await client.ExtractAsync(B(P1 + "/srv/random.bin"), ExtractFormat.Plain, true, CancellationToken.None))
        using (var memory = new MemoryStream())
        {
            await body.CopyToAsync(memory);
            using var decompressed = new MemoryStream();
            await using (var z = new ZstdSharp.DecompressionStream(new MemoryStream(memory.ToArray())))
            {
                await z.CopyToAsync(decompressed);
            }

            Assert.True(decompressed.ToArray().AsSpan().SequenceEqual(f.Random));
        }

        var target = f.Dir.Combine("single");
        Directory.CreateDirectory(target);
        await using (var body = await client.ExtractAsync(B(P1 + "/etc/hostname"), ExtractFormat.Tar, false, CancellationToken.None))
        using (var memory = new MemoryStream())
        {
            await body.CopyToAsync(memory);
            Assert.Equal(0, memory.Length % 512);
            ProcessRunner.Run(Requires.Tool("tar"), ["-xf", "-", "-C", target], stdin: memory.ToArray()).EnsureSuccess("tar -x");
        }

        Assert.Equal("vm100\n", await File.ReadAllTextAsync(Path.Combine(target, "hostname")));
        Assert.Equal(new DateTime(2024, 5, 1, 10, 0, 0, DateTimeKind.Utc), File.GetLastWriteTimeUtc(Path.Combine(target, "hostname")));

        var dir = await Assert.ThrowsAsync<RestoreApiException>(() => client.ExtractAsync(B(P1 + "/etc"), ExtractFormat.Plain, false, CancellationToken.None));
        Assert.Contains("tar", dir.Message);
        var level = await Assert.ThrowsAsync<RestoreApiException>(() => client.ExtractAsync(B(HandlerFixture.FullName + "/part"), ExtractFormat.Tar, false, CancellationToken.None));
        Assert.Equal(400, level.StatusCode);
        var missing = await Assert.ThrowsAsync<RestoreApiException>(() => client.ExtractAsync(B(P1 + "/nothing"), ExtractFormat.Tar, false, CancellationToken.None));
        Assert.Contains("no such file", missing.Message);
    }

    [Fact]
    public async Task A_ninth_concurrent_extraction_is_refused_and_the_watchdog_waits_for_running_ones()
    {
        // A server of its own: 8 stalled extractions must not disturb the other tests.
        await using var harness = new ServerHarness(f.Catalog, f.Dir.Combine("nine.sock"), "T", idle: TimeSpan.FromSeconds(2));
        var open = new List<Stream>();
        var clients = new List<RestoreClient>();
        try
        {
            for (var i = 0; i < 8; i++)
            {
                var c = harness.Client();
                clients.Add(c);
                // 3 MB (zstd: incompressible) that nobody reads: the daemon blocks writing, the extraction stays active.
                open.Add(await c.ExtractAsync(B(P1 + "/srv/random.bin"), ExtractFormat.Plain, i % 2 == 0, CancellationToken.None));
            }

            await using var ninth = harness.Client();
            var e = await Assert.ThrowsAsync<RestoreApiException>(() => ninth.ExtractAsync(B(P1 + "/etc/passwd"), ExtractFormat.Plain, false, CancellationToken.None));
            Assert.Equal(400, e.StatusCode);
            Assert.Contains("maximum concurrent", e.Message);

            // Far past the 2 s idle timeout: running extractions hold the watchdog.
            await Task.Delay(3500);
            Assert.False(harness.ShutdownRequested.IsCompleted, "the watchdog fired during extractions");
            Assert.Equal(2, (await ninth.StatusAsync(true, CancellationToken.None)).Timeout);

            // The stalled ones still finish with the right bytes.
            using var memory = new MemoryStream();
            await open[1].CopyToAsync(memory);
            Assert.True(memory.ToArray().AsSpan().SequenceEqual(f.Random));
        }
        finally
        {
            foreach (var s in open)
            {
                await s.DisposeAsync();
            }

            foreach (var c in clients)
            {
                await c.DisposeAsync();
            }
        }

        // Once they are gone, extraction works again (the server notices the closed connections when writing).
        await using var again = harness.Client();
        RestoreApiException? last = null;
        for (var i = 0; i < 50; i++)
        {
            try
            {
                await using var ok = await again.ExtractAsync(B(P1 + "/etc/passwd"), ExtractFormat.Plain, false, CancellationToken.None);
                Assert.Equal((byte)'r', ok.ReadByte());
                last = null;
                break;
            }
            catch (RestoreApiException e) when (e.Message.Contains("maximum concurrent"))
            {
                last = e;
                await Task.Delay(100);
            }
        }

        Assert.Null(last);

        // And with none running, the idle timeout fires.
        await harness.ShutdownRequested.WaitAsync(TimeSpan.FromSeconds(5));
    }
}
