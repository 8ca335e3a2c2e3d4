using System.Diagnostics;
using System.Text;
using RestoreFs.RestoreApi;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>The daemon against real disks on loop devices, through its real HTTP API on a unix socket.</summary>
public sealed class DaemonTests(DaemonFixture f) : IClassFixture<DaemonFixture>
{
    private const string Multi = "drive-scsi0-with-a-long-name";

    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    private static async Task<List<ArchiveEntry>> List(RestoreClient client, string path)
    {
        var result = new List<ArchiveEntry>();
        await foreach (var e in client.ListAsync(B(path), CancellationToken.None))
        {
            result.Add(e);
        }

        return result;
    }

    [Fact]
    public async Task Status_reports_disks_volumes_and_needs_no_ticket()
    {
        await using var client = f.Client("not-the-ticket");
        var status = await client.StatusAsync(true, CancellationToken.None);
        var multi = status.Disks.Single(d => d.Name == Multi);
        Assert.Equal(400L << 20, (long)multi.Size);
        Assert.Equal([$"{Multi}/part/1", $"{Multi}/part/2", $"{Multi}/lvm/vgtest/data"], multi.Volumes);
        Assert.Equal(["bare/raw"], status.Disks.Single(d => d.Name == "bare").Volumes);
        Assert.Empty(status.Disks.Single(d => d.Name == "garbage").Volumes);
        Assert.InRange(status.Timeout, 1, 600);
    }

    [Fact]
    public async Task Virtual_levels_list_disks_buckets_partitions_and_logical_volumes_with_errors_shown()
    {
        await using var client = f.Client();
        var disks = await List(client, "");
        Assert.Equal([$"{Multi}.img.fidx", "bare.img.fidx", "garbage.img.fidx", "ntfs.img.fidx"], disks.Select(e => Encoding.UTF8.GetString(e.Name)));
        Assert.All(disks, e => Assert.Equal('v', e.Type));

        // The serial may be cut to 20 bytes by virtio: the full archive name still finds the disk.
        var buckets = await List(client, $"{Multi}.img.fidx");
        Assert.Equal(["lvm", "part"], buckets.Select(e => Encoding.UTF8.GetString(e.Name)));
        Assert.Equal($"{Multi}.img.fidx/lvm", Encoding.UTF8.GetString(buckets[0].FilePath));

        var parts = await List(client, $"{Multi}.img/part/");
        Assert.Equal(["1", "2"], parts.Select(e => Encoding.UTF8.GetString(e.Name)));
        Assert.Equal(40UL << 20, parts[0].Size);
        Assert.Null(parts[0].Error);
        // This host kernel has no vfat: the partition is listed with the reason, not hidden.
        Assert.Contains("vfat", parts[1].Error);

        Assert.Equal(["vgtest"], (await List(client, $"{Multi}/lvm")).Select(e => Encoding.UTF8.GetString(e.Name)));
        var lvs = await List(client, $"{Multi}/lvm/vgtest");
        var lv = Assert.Single(lvs);
        Assert.Equal("data", Encoding.UTF8.GetString(lv.Name));
        Assert.Equal(320UL << 20, lv.Size);
        if (!File.Exists("/dev/mapper/control"))
        {
            // No device-mapper on this host: activation fails and says so (the VM's kernel has it).
            Assert.Contains("vgtest", lv.Error);
        }

        Assert.Equal(["raw"], (await List(client, "bare")).Select(e => Encoding.UTF8.GetString(e.Name)));
        Assert.Empty(await List(client, "garbage"));
    }

    [Fact]
    public async Task Files_of_an_ext4_partition_match_the_source_with_modes_times_symlinks_and_byte_names()
    {
        await using var client = f.Client();
        var source = Path.Combine(f.Expected, "ext4");
        var admin = await List(client, $"{Multi}/part/1/home/admin");
        var names = admin.Select(e => e.Name).ToList();
        var expectedNames = Directory.EnumerateFileSystemEntries(Path.Combine(source, "home/admin")).Select(p => Path.GetFileName(p)).ToList();
        Assert.Equal(expectedNames.Count, names.Count);
        // "café.txt" in Latin-1: not UTF-8, must come back as the same bytes.
        byte[] latin1 = [.. "caf"u8, 0xE9, .. ".txt"u8];
        Assert.Contains(names, n => n.SequenceEqual(latin1));
        Assert.Contains(names, n => n.SequenceEqual(B("Grüße.txt")));

        var link = admin.Single(e => e.Name.SequenceEqual(B("hostname-link")));
        Assert.Equal('l', link.Type);
        Assert.Equal(B("../../etc/hostname"), link.Target);
        var abs = admin.Single(e => e.Name.SequenceEqual(B("absolute-link")));
        Assert.Equal(B("/etc/shadow"), abs.Target);

        var report = admin.Single(e => e.Name.SequenceEqual(B("docs")));
        Assert.Equal('d', report.Type);
        var docs = await List(client, $"{Multi}/part/1/home/admin/docs");
        var file = Assert.Single(docs);
        Assert.Equal(0x8180u, file.Mode); // regular, 0600
        Assert.Equal($"{Multi}/part/1/home/admin/docs/report.txt", Encoding.UTF8.GetString(file.FilePath));

        var etc = await List(client, $"{Multi}/part/1/etc/hostname");
        var hostname = Assert.Single(etc);
        Assert.Equal(new DateTimeOffset(2024, 5, 1, 10, 0, 0, TimeSpan.Zero).ToUnixTimeSeconds(), hostname.MTime);
        Assert.Equal((ulong)new FileInfo(Path.Combine(source, "etc/hostname")).Length, hostname.Size);

        var many = await List(client, $"{Multi}/part/1/srv/many");
        Assert.Equal(300, many.Count);
        Assert.All(many, e => Assert.Null(e.Content));

        // Asked for, small files come with their content; larger ones do not.
        var inline = new List<ArchiveEntry>();
        await foreach (var e in client.ListAsync(B($"{Multi}/part/1/srv"), 65536, CancellationToken.None))
        {
            inline.Add(e);
        }

        Assert.Null(inline.Single(e => e.Name.SequenceEqual(B("random.bin"))).Content);
        await foreach (var e in client.ListAsync(B($"{Multi}/part/1/srv/many"), 65536, CancellationToken.None))
        {
            Assert.Equal(await File.ReadAllBytesAsync(Path.Combine(source, "srv/many", Encoding.UTF8.GetString(e.Name))), e.Content);
        }
    }

    [Fact]
    public async Task Reads_at_odd_offsets_and_many_at_once_are_byte_exact()
    {
        await using var client = f.Client();
        var expected = await File.ReadAllBytesAsync(Path.Combine(f.Expected, "ext4/srv/random.bin"));
        var path = B($"{Multi}/part/1/srv/random.bin");
        var random = new Random(5);
        var tasks = Enumerable.Range(0, 64).Select(async i =>
        {
            var offset = random.Next(0, expected.Length);
            var length = random.Next(1, 1 << 20);
            var buffer = new byte[length];
            var n = await client.ReadAsync(path, offset, buffer, CancellationToken.None);
            Assert.Equal(Math.Min(length, expected.Length - offset), n);
            Assert.True(buffer.AsSpan(0, n).SequenceEqual(expected.AsSpan(offset, n)), $"read {offset}+{length}");
        }).ToList();
        await Task.WhenAll(tasks);
        Assert.Equal(0, await client.ReadAsync(path, expected.Length + 10, new byte[10], CancellationToken.None));
    }

    [Fact]
    public async Task Paths_cannot_leave_the_volume()
    {
        await using var client = f.Client();
        var up = await Assert.ThrowsAsync<RestoreApiException>(() => List(client, $"{Multi}/part/1/home/../../etc"));
        Assert.Equal(400, up.StatusCode);
        Assert.Contains("..", up.Message);
        // Through a relative symlink that climbs out, and an absolute one: never followed.
        var escape = await Assert.ThrowsAsync<RestoreApiException>(() => client.ReadAsync(B($"{Multi}/part/1/home/admin/escape-link/passwd"), 0, new byte[10], CancellationToken.None));
        Assert.Contains("not a directory", escape.Message);
        var abs = await Assert.ThrowsAsync<RestoreApiException>(() => client.ReadAsync(B($"{Multi}/part/1/home/admin/absolute-link"), 0, new byte[10], CancellationToken.None));
        Assert.Equal(400, abs.StatusCode);
        var listed = await List(client, $"{Multi}/part/1/home/admin/escape-link");
        Assert.Equal('l', Assert.Single(listed).Type);
        await Assert.ThrowsAsync<RestoreApiException>(() => List(client, "nosuchdisk/part/1"));
        await Assert.ThrowsAsync<RestoreApiException>(() => List(client, $"{Multi}/part/9"));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Extract_of_a_tree_unpacks_to_the_source(bool zstd)
    {
        await using var client = f.Client();
        var target = f.Dir.Combine($"extract-{zstd}");
        Directory.CreateDirectory(target);
        var archive = f.Dir.Combine($"home-{zstd}.tar" + (zstd ? ".zst" : ""));
        await using (var body = await client.ExtractAsync(B($"{Multi}/part/1/home"), ExtractFormat.Tar, zstd, CancellationToken.None))
        await using (var file = File.Create(archive))
        {
            await body.CopyToAsync(file);
        }

        ProcessRunner.Run(Requires.Tool("tar"), [zstd ? "--zstd" : "--no-auto-compress", "-xpf", archive, "-C", target]).EnsureSuccess("tar -x");
        var diff = ProcessRunner.Run(Requires.Tool("diff"), ["-r", "--no-dereference", Path.Combine(f.Expected, "ext4/home"), Path.Combine(target, "home")]);
        Assert.True(diff.ExitCode == 0, diff.StdOut + diff.StdErr);
        var mode = File.GetUnixFileMode(Path.Combine(target, "home/admin/docs/report.txt"));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, mode);
        Assert.Equal("../../etc/hostname", new FileInfo(Path.Combine(target, "home/admin/hostname-link")).LinkTarget);
    }

    [Fact]
    public async Task Plain_extract_of_a_file_and_refusals()
    {
        await using var client = f.Client();
        await using (var body = await client.ExtractAsync(B($"{Multi}/part/1/etc/passwd"), ExtractFormat.Plain, false, CancellationToken.None))
        using (var memory = new MemoryStream())
        {
            await body.CopyToAsync(memory);
            Assert.Equal(await File.ReadAllBytesAsync(Path.Combine(f.Expected, "ext4/etc/passwd")), memory.ToArray());
        }

        var dir = await Assert.ThrowsAsync<RestoreApiException>(() => client.ExtractAsync(B($"{Multi}/part/1/etc"), ExtractFormat.Plain, false, CancellationToken.None));
        Assert.Contains("tar", dir.Message);
        await Assert.ThrowsAsync<RestoreApiException>(() => client.ExtractAsync(B($"{Multi}/part"), ExtractFormat.Tar, false, CancellationToken.None));
    }

    [Fact]
    public async Task Bare_disk_is_a_raw_volume()
    {
        await using var client = f.Client();
        var buffer = new byte[100];
        var n = await client.ReadAsync(B("bare.img.fidx/raw/root/note.txt"), 0, buffer, CancellationToken.None);
        Assert.Equal("a bare file system\n", Encoding.UTF8.GetString(buffer, 0, n));
    }

    [Fact]
    public async Task Ntfs_is_read_through_ntfs3g()
    {
        await using var client = f.Client();
        var expected = await File.ReadAllBytesAsync(Path.Combine(f.Expected, "ntfs/Users/admin/data.bin"));
        var buffer = new byte[expected.Length + 10];
        var n = await client.ReadAsync(B("ntfs.img.fidx/raw/Users/admin/data.bin"), 0, buffer, CancellationToken.None);
        Assert.Equal(expected, buffer[..n]);
        Assert.Contains(f.Catalog.Mounts, m => m.Volume.Id == "ntfs/raw" && m.FsType == "ntfs-3g" && m.Error is null);
    }

    [Fact]
    public async Task Volumes_are_mounted_read_only()
    {
        await using var client = f.Client();
        await List(client, $"{Multi}/part/1");
        var mount = f.Catalog.Mounts.Single(m => m.Volume.Id == $"{Multi}/part/1");
        Assert.Null(mount.Error);
        var e = Assert.ThrowsAny<IOException>(() => File.WriteAllText(Path.Combine(mount.MountPoint, "new.txt"), "x"));
        Assert.Contains("Read-only", e.Message);
        Assert.Contains(File.ReadAllLines("/proc/mounts"), l => l.Contains(mount.MountPoint, StringComparison.Ordinal) && l.Contains(" ro,", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Wrong_or_missing_ticket_is_refused_after_the_delay_and_unknown_paths_are_404()
    {
        foreach (var ticket in new[] { "wrong", DaemonFixture.Ticket[..^1] })
        {
            await using var client = f.Client(ticket);
            var watch = Stopwatch.StartNew();
            var e = await Assert.ThrowsAsync<RestoreApiException>(() => List(client, ""));
            Assert.Equal(401, e.StatusCode);
            Assert.True(watch.Elapsed >= TimeSpan.FromMilliseconds(380), $"answered after {watch.Elapsed}");
        }

        await using var raw = await SocketTransport.Unix(f.Socket).OpenStreamAsync(CancellationToken.None);
        await raw.WriteAsync(Encoding.ASCII.GetBytes("GET /api2/json/nothing HTTP/1.1\r\nAuthorization: " + DaemonFixture.Ticket + "\r\n\r\n"));
        var answer = await new StreamReader(raw).ReadToEndAsync();
        Assert.StartsWith("HTTP/1.1 404", answer);
    }

    [Fact]
    public async Task A_ninth_concurrent_extraction_is_refused()
    {
        var open = new List<Stream>();
        var clients = new List<RestoreClient>();
        try
        {
            for (var i = 0; i < 8; i++)
            {
                var c = f.Client();
                clients.Add(c);
                // 3 MB that nobody reads: the daemon blocks writing, the extraction stays active.
                open.Add(await c.ExtractAsync(B($"{Multi}/part/1/srv/random.bin"), ExtractFormat.Plain, false, CancellationToken.None));
            }

            await using var ninth = f.Client();
            var e = await Assert.ThrowsAsync<RestoreApiException>(() => ninth.ExtractAsync(B($"{Multi}/part/1/etc/passwd"), ExtractFormat.Plain, false, CancellationToken.None));
            Assert.Contains("maximum concurrent", e.Message);
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

        // Once they are gone, extraction works again.
        await Task.Delay(300);
        await using var again = f.Client();
        await using var ok = await again.ExtractAsync(B($"{Multi}/part/1/etc/passwd"), ExtractFormat.Plain, false, CancellationToken.None);
        Assert.True(ok.ReadByte() >= 0);
    }

    [Fact]
    public async Task Extents_map_every_ext4_file_onto_the_disk_image_byte_for_byte_and_ntfs_gets_none()
    {
        await using var client = f.Client();
        foreach (var (disk, image, volume, source) in new[] { (Multi, "multi.img", "part/1", "ext4"), ("bare", "bare.img", "raw", "bare") })
        {
            using var img = File.OpenRead(f.Dir.Combine("disks", image));
            var root = Path.Combine(f.Expected, source);
            var files = Directory.GetFiles(root, "*", SearchOption.AllDirectories)
                .Where(p => !new FileInfo(p).Attributes.HasFlag(FileAttributes.ReparsePoint)).ToList(); // for the directories
            var mapped = 0;
            foreach (var dir in files.Select(Path.GetDirectoryName).Distinct())
            {
                var rel = Path.GetRelativePath(root, dir!);
                var listPath = $"{disk}/{volume}" + (rel == "." ? "" : "/" + rel);
                await foreach (var e in client.ListAsync(B(listPath), 0, extents: true, CancellationToken.None))
                {
                    if (e.Type != 'f')
                    {
                        Assert.Null(e.Extents);
                        continue;
                    }

                    var extents = Assert.IsAssignableFrom<IReadOnlyList<FileExtent>>(e.Extents);
                    mapped++;
                    string name;
                    try
                    {
                        name = new UTF8Encoding(false, true).GetString(e.Name);
                    }
                    catch (DecoderFallbackException)
                    {
                        continue; // .NET cannot open a file whose name is not UTF-8 to compare
                    }

                    var expected = File.ReadAllBytes(Path.Combine(dir!, name));
                    var actual = new byte[(long)e.Size!.Value];
                    foreach (var x in extents)
                    {
                        img.Position = x.Disk;
                        img.ReadExactly(actual.AsSpan((int)x.Logical, (int)x.Length));
                    }

                    Assert.True(expected.AsSpan().SequenceEqual(actual), $"{listPath}/{name} read through its extents differs ({string.Join(", ", extents)})");
                }
            }

            // find counts files by their bytes (one has a name that is not UTF-8).
            Assert.Equal(ProcessRunner.Run("find", [root, "-type", "f", "-printf", "x"]).StdOut.Length, mapped);
        }

        // ntfs-3g is a FUSE file system: no FIEMAP, so no map (the host reads such files through the VM).
        await foreach (var e in client.ListAsync(B("ntfs/raw"), 0, extents: true, CancellationToken.None))
        {
            Assert.Null(e.Extents);
        }
    }

    [Fact]
    public async Task Volumes_know_their_place_on_the_disk_partitions_whole_disks_and_linear_lvs()
    {
        var disks = await f.Catalog.GetDisksAsync(CancellationToken.None);
        var multi = disks.Single(d => d.Name == Multi).Volumes.ToDictionary(v => v.Id);
        // GPT from make-test-disks.sh: part 1 at sector 2048 (40 MiB), part 3 (the PV) at sector 116736; LVM puts the
        // first physical extent 1 MiB into the PV, and data is extents 0-79 (320 MiB).
        Assert.Equal([new Disks.DiskSpan(0, 1 << 20, 40 << 20)], multi[$"{Multi}/part/1"].Placement);
        Assert.Equal([new Disks.DiskSpan(0, 116736L * 512 + (1 << 20), 320L << 20)], multi[$"{Multi}/lvm/vgtest/data"].Placement);
        Assert.Equal([new Disks.DiskSpan(0, 0, 32L << 20)], disks.Single(d => d.Name == "bare").Volumes.Single().Placement);
    }
}
