using RestoreFs.RestoreDaemon.Disks;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>
/// <see cref="DiskCatalog"/> over the disks of scripts/make-test-disks.sh on real loop devices, with real mounts.
/// This host kernel shows no partitions on loop devices and has no device-mapper and no vfat: partitions come through
/// the catalog's own loop devices, and the LVM volume and the vfat partition must fail with errors that say so.
/// </summary>
public sealed class DiskCatalogTests(DiskImagesFixture f) : IClassFixture<DiskImagesFixture>, IDisposable
{
    private readonly TempDirectory root = new("restorefs-catalog");
    private readonly List<string> log = [];
    private DiskCatalog? catalog;

    private DiskCatalog Catalog(params string[] images)
    {
        catalog = new DiskCatalog(new DiskCatalogOptions(images.Select(i => (i, f.Loops[i])).ToList(), root.Combine("mnt"), Log,
            LoopForPartitions: true));
        return catalog;
    }

    private void Log(string line)
    {
        lock (log)
        {
            log.Add(line);
        }
    }

    private string Logged()
    {
        lock (log)
        {
            return string.Join("\n", log);
        }
    }

    public void Dispose()
    {
        catalog?.Dispose();
        foreach (var m in DiskTools.MountsUnder(root.Path).OrderByDescending(m => m.Length))
        {
            MountTable.LazyUnmount(m);
        }

        root.Dispose();
    }

    private static VolumeInfo Volume(DiskInfo disk, string path) =>
        disk.Volumes.SingleOrDefault(v => string.Join('/', new[] { v.Bucket }.Concat(v.Components)) == path)
        ?? throw new Xunit.Sdk.XunitException($"{disk.Name} has no {path}: {string.Join(", ", disk.Volumes.Select(v => v.Id))}");

    [Fact]
    public async Task Multi_disk_lists_its_partitions_and_the_lvm_volume()
    {
        var c = Catalog("multi");
        var disk = Assert.Single(await c.GetDisksAsync(CancellationToken.None));
        Assert.Null(disk.Error);
        Assert.Equal("multi", disk.Name);
        Assert.Equal(f.Loops["multi"], disk.Device);
        Assert.Equal((ulong)new FileInfo(f.Image("multi")).Length, disk.Size);
        // The PV partition (3) is not a volume of its own: its logical volume is.
        Assert.Equal(["multi/part/1", "multi/part/2", "multi/lvm/vgtest/data"], disk.Volumes.Select(v => v.Id));

        var layout = File.ReadLines(Path.Combine(f.Expected, "LAYOUT")).Select(l => l.Split('\t')).Where(x => x[0] == "multi.img")
            .ToDictionary(x => x[1], x => (Offset: long.Parse(x[2]), Bytes: ulong.Parse(x[3])));
        var p1 = Volume(disk, "part/1");
        Assert.Equal("ext4", p1.FsType);
        Assert.Equal(layout["part/1"].Bytes, p1.Size);
        Assert.StartsWith("/dev/loop", p1.Device);
        Assert.Contains(p1.Device, DiskTools.LoopsOver(f.Loops["multi"]));
        var p2 = Volume(disk, "part/2");
        Assert.Equal("vfat", p2.FsType);
        Assert.Equal(layout["part/2"].Bytes, p2.Size);

        var lv = Volume(disk, "lvm/vgtest/data");
        Assert.Equal(320UL << 20, lv.Size);
        Assert.Equal("/dev/mapper/vgtest-data", lv.Device);
        if (!DiskTools.DeviceMapperAvailable)
        {
            Assert.NotNull(lv.Error);
            Assert.Contains("cannot activate vgtest/data", lv.Error);
            Assert.Contains("device-mapper not available", lv.Error);
            var e = await Assert.ThrowsAsync<VolumeException>(() => c.MountAsync(lv, CancellationToken.None));
            Assert.Contains("multi/lvm/vgtest/data", e.Message);
            Assert.Contains("device-mapper", e.Message);
        }
    }

    [Fact]
    public async Task Ext4_partition_mounts_read_only_with_every_file()
    {
        var c = Catalog("multi");
        var disk = Assert.Single(await c.GetDisksAsync(CancellationToken.None));
        var p1 = Volume(disk, "part/1");
        var dir = await c.MountAsync(p1, CancellationToken.None);
        Assert.Equal(Path.Combine(root.Combine("mnt"), "dev", Path.GetFileName(p1.Device)), dir);

        // Byte-exact comparison of the whole tree (names that are not UTF-8 included), symlinks as symlinks.
        var diff = ProcessRunner.Run(Requires.Tool("diff"), ["-r", "--no-dereference", "--exclude=lost+found", Path.Combine(f.Expected, "ext4"), dir]);
        Assert.True(diff.ExitCode == 0, diff.StdOut + diff.StdErr);
        Assert.Equal("test-vm\n", File.ReadAllText(Path.Combine(dir, "etc/hostname")));
        Assert.Equal("grüße\n", File.ReadAllText(Path.Combine(dir, "home/admin/Grüße.txt")));
        Assert.Equal("../../etc/hostname", new FileInfo(Path.Combine(dir, "home/admin/hostname-link")).LinkTarget);
        Assert.Equal(300, Directory.GetFiles(Path.Combine(dir, "srv/many")).Length);
        foreach (var (type, _, size, hash, path) in f.Manifest("multi/part/1").Where(m => m.Type == "f" && !m.Path.Contains('\uFFFD')))
        {
            Assert.Equal(size, new FileInfo(Path.Combine(dir, path)).Length);
            Assert.Equal(hash, DiskTools.Sha256(Path.Combine(dir, path)), ignoreCase: true);
        }

        // Read-only, no set-uid, no devices, no exec, and the kernel refuses writes.
        var flags = DiskTools.MountOptions(dir).Split(',');
        Assert.Contains("ro", flags);
        Assert.Contains("nosuid", flags);
        Assert.Contains("nodev", flags);
        Assert.Contains("noexec", flags);
        Assert.Equal(DiskTools.EROFS, DiskTools.CreateFileErrno(Path.Combine(dir, "new-file")));

        var m = Assert.Single(c.Mounts);
        Assert.Equal(("multi/part/1", dir, "ext4", (string?)null), (m.Volume.Id, m.MountPoint, m.FsType, m.Error));
    }

    [Fact]
    public async Task Concurrent_callers_share_one_mount()
    {
        var c = Catalog("bare");
        var raw = Assert.Single(Assert.Single(await c.GetDisksAsync(CancellationToken.None)).Volumes);
        var dirs = await Task.WhenAll(Enumerable.Range(0, 16).Select(_ => Task.Run(() => c.MountAsync(raw, CancellationToken.None))));
        Assert.Single(dirs.Distinct());
        Assert.Single(DiskTools.MountsUnder(root.Path));
        Assert.Single(Logged().Split('\n'), l => l.StartsWith("mounted bare/raw", StringComparison.Ordinal));
        Assert.Equal(dirs[0], await c.MountAsync(raw, CancellationToken.None));
    }

    [Fact]
    public async Task Bare_disk_is_one_raw_ext4_volume()
    {
        var c = Catalog("bare");
        var disk = Assert.Single(await c.GetDisksAsync(CancellationToken.None));
        var raw = Assert.Single(disk.Volumes);
        Assert.Equal(("bare/raw", "ext4", f.Loops["bare"], (string?)null), (raw.Id, raw.FsType, raw.Device, raw.Error));
        var dir = await c.MountAsync(raw, CancellationToken.None);
        Assert.Equal(Path.Combine(root.Combine("mnt"), "dev", Path.GetFileName(f.Loops["bare"])), dir);
        Assert.Equal("a bare file system\n", File.ReadAllText(Path.Combine(dir, "root/note.txt")));
        Assert.Empty(DiskTools.LoopsOver(f.Loops["bare"])); // a whole-disk volume needs no loop device of its own
    }

    [Fact]
    public async Task Garbage_disk_has_no_volumes_and_no_error()
    {
        var c = Catalog("garbage", "bare");
        var disks = await c.GetDisksAsync(CancellationToken.None);
        var garbage = disks.Single(d => d.Name == "garbage");
        Assert.Null(garbage.Error);
        Assert.Empty(garbage.Volumes);
        Assert.Single(disks.Single(d => d.Name == "bare").Volumes); // the scan went on after it
    }

    [Fact]
    public async Task Vfat_partition_mounts_or_fails_naming_vfat_and_the_failure_is_remembered()
    {
        var c = Catalog("multi");
        var p2 = Volume(Assert.Single(await c.GetDisksAsync(CancellationToken.None)), "part/2");
        if (DiskTools.KernelHas("vfat"))
        {
            var dir = await c.MountAsync(p2, CancellationToken.None);
            Assert.Equal("vfat file\n", File.ReadAllText(Path.Combine(dir, "readme.txt")));
            return;
        }

        // This host's kernel has no vfat.
        var e = await Assert.ThrowsAsync<VolumeException>(() => c.MountAsync(p2, CancellationToken.None));
        Assert.Contains("multi/part/2", e.Message);
        Assert.Contains(p2.Device, e.Message);
        Assert.Contains("vfat", e.Message);
        Assert.Contains("No such device", e.Message);
        var again = await Assert.ThrowsAsync<VolumeException>(() => c.MountAsync(p2, CancellationToken.None));
        Assert.Equal(e.Message, again.Message);
        Assert.Single(Logged().Split('\n'), l => l.StartsWith("cannot mount multi/part/2", StringComparison.Ordinal));
        var status = Assert.Single(c.Mounts);
        Assert.Equal(("multi/part/2", "vfat", e.Message), (status.Volume.Id, status.FsType, status.Error));
        Assert.Empty(DiskTools.MountsUnder(root.Path));
    }

    [Fact]
    public async Task Dispose_unmounts_and_detaches_everything_it_made()
    {
        var c = Catalog("multi", "bare");
        var disks = await c.GetDisksAsync(CancellationToken.None);
        var partLoops = DiskTools.LoopsOver(f.Loops["multi"]);
        Assert.Equal(3, partLoops.Count); // partitions 1, 2 and the PV partition 3
        foreach (var v in disks.SelectMany(d => d.Volumes).Where(v => v.Error is null && v.FsType == "ext4"))
        {
            await c.MountAsync(v, CancellationToken.None);
        }

        Assert.Equal(2, DiskTools.MountsUnder(root.Path).Count);
        // Something still uses one of them: the unmount becomes lazy.
        var busyDir = c.Mounts.Single(m => m.Volume.Id == "bare/raw").MountPoint;
        using (var busy = File.OpenRead(Path.Combine(busyDir, "root/note.txt")))
        {
            c.Dispose();
            Assert.Empty(DiskTools.MountsUnder(root.Path));
        }

        Assert.True(MountTable.WaitUntil(() => DiskTools.LoopsOver(f.Loops["multi"]).Count == 0, TimeSpan.FromSeconds(10)),
            "loop devices left: " + string.Join(", ", DiskTools.LoopsOver(f.Loops["multi"])));
        foreach (var loop in partLoops)
        {
            Assert.DoesNotContain(loop, File.ReadAllText("/proc/mounts"));
        }

        Assert.False(Directory.Exists(Path.Combine(root.Combine("mnt"), "dev")), "mount points left behind");
        await Assert.ThrowsAsync<VolumeException>(() => c.MountAsync(disks[1].Volumes[0], CancellationToken.None));
    }

    [Fact]
    public async Task A_dirty_ext4_is_mounted_without_replaying_its_journal()
    {
        // A writable loop device over a copy whose journal is marked as needing recovery: a plain read-only mount would
        // replay it (and change the image); the catalog must not.
        var copy = root.Combine("dirty.img");
        File.Copy(f.Image("bare"), copy);
        DiskTools.Run("debugfs", "-w", "-R", "feature needs_recovery", copy);
        var before = DiskTools.Sha256(copy);
        var loop = DiskTools.AttachLoop(copy, readOnly: false);
        try
        {
            catalog = new DiskCatalog(new DiskCatalogOptions([("dirty", loop)], root.Combine("mnt"), Log));
            var raw = Assert.Single(Assert.Single(await catalog.GetDisksAsync(CancellationToken.None)).Volumes);
            var dir = await catalog.MountAsync(raw, CancellationToken.None);
            Assert.Equal("a bare file system\n", File.ReadAllText(Path.Combine(dir, "root/note.txt")));
            Assert.Contains("noload", Logged());
            catalog.Dispose();
        }
        finally
        {
            DiskTools.DetachLoop(loop);
        }

        Assert.Equal(before, DiskTools.Sha256(copy));
    }

    [Fact]
    public async Task A_failed_mount_is_answered_from_memory_for_a_while_then_tried_again()
    {
        // The disk's blocks unreadable for a moment (in the VM: the host's store out of reach while the mount read them
        // over NBD; here: a superblock damaged, then whole again): the failure is shared for MountRetryAfter, after
        // which the volume mounts. It used to be kept for the life of the VM.
        var copy = root.Combine("flaky.img");
        File.Copy(f.Image("bare"), copy);
        var good = new byte[4];
        using (var file = File.Open(copy, FileMode.Open))
        {
            file.Position = 1024 + 4; // s_blocks_count_lo: far beyond the device, so the kernel refuses the mount
            file.ReadExactly(good);
            file.Position = 1024 + 4;
            file.Write([0xff, 0xff, 0xff, 0x7f]);
        }

        var loop = DiskTools.AttachLoop(copy);
        try
        {
            var retry = TimeSpan.FromSeconds(2);
            catalog = new DiskCatalog(new DiskCatalogOptions([("flaky", loop)], root.Combine("mnt"), Log, MountRetryAfter: retry));
            var raw = Assert.Single(Assert.Single(await catalog.GetDisksAsync(CancellationToken.None)).Volumes);
            var first = await Assert.ThrowsAsync<VolumeException>(() => catalog.MountAsync(raw, CancellationToken.None));

            DiskTools.WriteAt(copy, 1024 + 4, good);
            DiskTools.Run("blockdev", "--flushbufs", loop);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var soon = await Record.ExceptionAsync(() => catalog.MountAsync(raw, CancellationToken.None));
            if (clock.Elapsed < retry / 2)
            {
                Assert.Equal(first.Message, Assert.IsType<VolumeException>(soon).Message); // shared, not tried per call
            }

            await Task.Delay(retry + TimeSpan.FromMilliseconds(200));
            var dir = await catalog.MountAsync(raw, CancellationToken.None);
            Assert.Equal("a bare file system\n", File.ReadAllText(Path.Combine(dir, "root/note.txt")));
            Assert.Null(Assert.Single(catalog.Mounts).Error);
            Assert.Contains("trying flaky", Logged());
            catalog.Dispose();
        }
        finally
        {
            DiskTools.DetachLoop(loop);
        }
    }

    [Fact]
    public async Task A_disk_that_could_not_be_read_is_scanned_again_later_and_its_volumes_appear()
    {
        // In the VM a disk read fails while the host's store is out of reach (its NBD reads get EIO); the scan made
        // then used to say "cannot read disk" for the life of the VM. Here the disk is a loop device over a FUSE file
        // that answers EIO until it is told not to: the error is kept for ScanRetryAfter, then the disk is scanned
        // again, alone, and its partitions are listed and mount.
        await using var flaky = await FlakyImageMount.MountAsync(f.Image("multi"), root.Combine("flaky"));
        flaky.Failing = true;
        var retry = TimeSpan.FromSeconds(2);
        catalog = new DiskCatalog(new DiskCatalogOptions([("flaky", flaky.Loop), ("bare", f.Loops["bare"])], root.Combine("mnt"), Log,
            LoopForPartitions: true, ScanRetryAfter: retry));
        var disks = await catalog.GetDisksAsync(CancellationToken.None);
        var failed = disks.Single(d => d.Name == "flaky");
        Assert.Contains("cannot read disk flaky", failed.Error);
        Assert.Empty(failed.Volumes);
        Assert.True(flaky.Failures > 0);
        Assert.Null(disks.Single(d => d.Name == "bare").Error);

        // Through the daemon's API: the disk is listed with its error, and a listing of it is refused with that error
        // (an empty answer would be kept by the host as the disk's contents).
        await using var api = new ServerHarness(catalog, root.Combine("api.sock"), "ticket");
        await using var client = api.Client();
        var top = await client.ListAllAsync("");
        Assert.Contains("cannot read disk flaky", top.Single(e => e.Name.AsSpan().SequenceEqual("flaky.img.fidx"u8)).Error);
        var refused = await Assert.ThrowsAsync<RestoreFs.RestoreApi.RestoreApiException>(() => client.ListAllAsync("flaky.img.fidx"));
        Assert.Equal(400, refused.StatusCode);
        Assert.Contains("cannot read disk flaky", refused.Message);

        flaky.Failing = false;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var soon = await catalog.GetDisksAsync(CancellationToken.None);
        if (clock.Elapsed < retry / 2)
        {
            Assert.Equal(failed.Error, soon.Single(d => d.Name == "flaky").Error); // answered from memory, not per call
        }

        await Task.Delay(retry + TimeSpan.FromMilliseconds(200));
        disks = await catalog.GetDisksAsync(CancellationToken.None);
        Assert.Equal(["flaky", "bare"], disks.Select(d => d.Name));
        var again = disks.Single(d => d.Name == "flaky");
        Assert.Null(again.Error);
        Assert.Equal(["flaky/part/1", "flaky/part/2", "flaky/lvm/vgtest/data"], again.Volumes.Select(v => v.Id));
        Assert.Equal(["lvm", "part"], (await client.ListAllAsync("flaky.img.fidx")).Select(e => System.Text.Encoding.UTF8.GetString(e.Name)));
        var dir = await catalog.MountAsync(Volume(again, "part/1"), CancellationToken.None);
        Assert.Equal("test-vm\n", File.ReadAllText(Path.Combine(dir, "etc/hostname")));
        Assert.Single(disks.Single(d => d.Name == "bare").Volumes);
        Assert.Contains("scanning again the disk(s) that could not be read: flaky", Logged());
        Assert.DoesNotContain("could not be read: flaky, bare", Logged());

        // A disk that reads is not scanned again: later callers get the same answer.
        await Task.Delay(retry + TimeSpan.FromMilliseconds(200));
        Assert.Same(disks, await catalog.GetDisksAsync(CancellationToken.None));
        catalog.Dispose();
        Assert.Empty(DiskTools.LoopsOver(flaky.Loop));
    }

    [Fact]
    public async Task A_luks_volume_whose_header_could_not_be_read_is_tried_again_by_the_next_mount()
    {
        // Opening LUKS costs a key derivation, so its answer is kept, but only when it cannot change: a header that
        // could not be read (the store out of reach while the VM read it over NBD) is read again by the next mount.
        // This host has no device-mapper, so cryptsetup itself fails here after reading the header: that failure
        // (not a refused passphrase) is not kept either.
        var image = DiskTools.Sparse(root.Combine("luks.img"), 32 << 20);
        DiskTools.Run("sh", "-c", "printf pw | cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file=- \"$1\"",
            "sh", image);
        await using var flaky = await FlakyImageMount.MountAsync(image, root.Combine("flaky"));
        var retry = TimeSpan.FromSeconds(1);
        catalog = new DiskCatalog(new DiskCatalogOptions([("crypt", flaky.Loop)], root.Combine("mnt"), Log,
            GuestKeys: new Dictionary<string, byte[]> { ["*"] = "pw"u8.ToArray() }, MountRetryAfter: retry));
        var raw = Assert.Single(Assert.Single(await catalog.GetDisksAsync(CancellationToken.None)).Volumes);
        Assert.Equal(FsProbe.Luks, raw.FsType);
        var first = await Assert.ThrowsAsync<VolumeException>(() => catalog.MountAsync(raw, CancellationToken.None));
        Assert.DoesNotContain("cannot read the LUKS header", first.Message);

        flaky.Failing = true;
        DiskTools.Run("blockdev", "--flushbufs", flaky.Loop); // the header the scan read is not served from the cache
        await Task.Delay(retry + TimeSpan.FromMilliseconds(200));
        var unreadable = await Assert.ThrowsAsync<VolumeException>(() => catalog.MountAsync(raw, CancellationToken.None));
        Assert.Contains("cannot read the LUKS header", unreadable.Message);

        flaky.Failing = false;
        await Task.Delay(retry + TimeSpan.FromMilliseconds(200));
        var again = await Assert.ThrowsAsync<VolumeException>(() => catalog.MountAsync(raw, CancellationToken.None));
        Assert.DoesNotContain("cannot read the LUKS header", again.Message);
        Assert.Contains("cannot open crypt/raw", again.Message);
    }

    [Fact]
    public async Task Nothing_is_written_to_the_disks()
    {
        var before = new[] { "multi", "bare", "garbage" }.ToDictionary(i => i, i => DiskTools.Sha256(f.Image(i)));
        var c = Catalog("multi", "bare", "garbage");
        foreach (var v in (await c.GetDisksAsync(CancellationToken.None)).SelectMany(d => d.Volumes))
        {
            try
            {
                await c.MountAsync(v, CancellationToken.None);
            }
            catch (VolumeException)
            {
                // vfat and the LV fail here; what matters is that nothing was written
            }
        }

        c.Dispose();
        foreach (var (image, hash) in before)
        {
            Assert.Equal(hash, DiskTools.Sha256(f.Image(image)));
        }
    }

    [Fact]
    public async Task A_scan_that_outlasts_its_limit_answers_with_what_it_has()
    {
        catalog = new DiskCatalog(new DiskCatalogOptions(
            [("multi", f.Loops["multi"]), ("bare", f.Loops["bare"])], root.Combine("mnt"), Log, LoopForPartitions: true,
            ScanLimit: TimeSpan.FromMilliseconds(1)));
        var disks = await catalog.GetDisksAsync(CancellationToken.None);
        Assert.Equal(2, disks.Count);
        Assert.Contains(disks, d => d.Error?.Contains("did not finish within", StringComparison.Ordinal) == true);
        catalog.Dispose(); // waits for the scan, then removes its loop devices
        Assert.Empty(DiskTools.LoopsOver(f.Loops["multi"]));
    }

    [Fact]
    public async Task A_missing_device_is_a_disk_error_not_a_crash()
    {
        catalog = new DiskCatalog(new DiskCatalogOptions([("gone", root.Combine("no-such-device")), ("bare", f.Loops["bare"])],
            root.Combine("mnt"), Log));
        var disks = await catalog.GetDisksAsync(CancellationToken.None);
        Assert.Contains("no-such-device", disks.Single(d => d.Name == "gone").Error);
        Assert.Single(disks.Single(d => d.Name == "bare").Volumes);
    }

    [Fact]
    public async Task A_partition_with_the_md_signature_but_no_valid_superblock_says_so_and_is_not_assembled()
    {
        var img = DiskTools.Sparse(root.Combine("md-garbage.img"), 64 << 20);
        DiskTools.Run("sgdisk", "-n", "1:2048:+16M", "-t", "1:fd00", img);
        // md's magic at 4 KiB (where a version-1.2 superblock lies), then bytes no mdadm writes: version 7.
        var block = new byte[4096];
        BitConverter.GetBytes(0xA92B4EFCu).CopyTo(block, 0);
        BitConverter.GetBytes(7u).CopyTo(block, 4);
        var fake = root.Combine("md-block");
        File.WriteAllBytes(fake, block);
        DiskTools.WriteAt(img, 2048L * 512 + 4096, fake);
        var loop = DiskTools.AttachLoop(img);
        try
        {
            catalog = new DiskCatalog(new DiskCatalogOptions([("garbage-md", loop)], root.Combine("mnt"), Log, LoopForPartitions: true));
            var disk = Assert.Single(await catalog.GetDisksAsync(CancellationToken.None));
            var part = Assert.Single(disk.Volumes);
            Assert.Equal(("garbage-md/part/1", FsProbe.RaidMember), (part.Id, part.FsType));
            Assert.Contains("carries the md RAID signature, but its superblock is not one mdadm writes", part.Error, StringComparison.Ordinal);
            Assert.DoesNotContain("mdadm --assemble", Logged(), StringComparison.Ordinal);
        }
        finally
        {
            catalog?.Dispose();
            DiskTools.DetachLoop(loop);
        }
    }

    [Fact]
    public async Task An_ext4_under_a_stale_md_superblock_at_its_end_is_still_offered_when_the_array_cannot_start()
    {
        var img = DiskTools.Sparse(root.Combine("md-stale.img"), 64 << 20);
        DiskTools.Run("sgdisk", "-n", "1:2048:+32M", img);
        var tree = root.Combine("stale-tree");
        Directory.CreateDirectory(tree);
        File.WriteAllText(Path.Combine(tree, "kept.txt"), "written after the disk left its array\n");
        var ext4 = DiskTools.Sparse(root.Combine("stale.ext4"), 24 << 20);
        DiskTools.Run("mkfs.ext4", "-q", "-F", "-d", tree, ext4);
        DiskTools.WriteAt(img, 2048L * 512, ext4);
        // A version-1.0 superblock at the partition's end, as mdadm wrote it for a RAID1 the disk was once in; its
        // level turned to RAID0 (and so its checksum wrong): no kernel starts that array from this member alone.
        var block = MdSuperblockTests.V10Block();
        BitConverter.GetBytes(0).CopyTo(block, 72);
        var stale = root.Combine("stale-sb");
        File.WriteAllBytes(stale, block);
        DiskTools.WriteAt(img, 2048L * 512 + MdSuperblock.EndOffsets(32 << 20).V10, stale);
        var loop = DiskTools.AttachLoop(img);
        try
        {
            catalog = new DiskCatalog(new DiskCatalogOptions([("stale", loop)], root.Combine("mnt"), Log, LoopForPartitions: true));
            var disk = Assert.Single(await catalog.GetDisksAsync(CancellationToken.None));
            Assert.Equal(["stale/md/boot", "stale/part/1"], disk.Volumes.Select(v => v.Id).Order(StringComparer.Ordinal));
            Assert.Contains("md array boot (raid0, metadata 1.0, 1 of 2 member(s) in this backup) cannot be started", Volume(disk, "md/boot").Error,
                StringComparison.Ordinal);
            var part = Volume(disk, "part/1");
            Assert.Equal(("ext4", (string?)null), (part.FsType, part.Error));
            var dir = await catalog.MountAsync(part, CancellationToken.None);
            Assert.Equal("written after the disk left its array\n", File.ReadAllText(Path.Combine(dir, "kept.txt")));
        }
        finally
        {
            catalog?.Dispose();
            DiskTools.DetachLoop(loop);
        }
    }

    [Fact]
    public async Task Partitions_that_never_hold_a_file_system_say_what_they_are_and_are_not_tried()
    {
        var img = DiskTools.Sparse(root.Combine("kinds.img"), 64 << 20);
        // 1 GRUB's BIOS boot, 2 Windows' reserved, 3 a Linux swap of random bytes (encrypted with a throwaway key),
        // 4 a "swap" partition that holds an ext4 (mistyped: still a file system), 5 a Linux partition of zeros, 6 a
        // Windows data partition encrypted with BitLocker.
        DiskTools.Run("sgdisk", "-n", "1:2048:+1M", "-t", "1:ef02", "-n", "2:0:+16M", "-t", "2:0c01", "-n", "3:0:+8M", "-t", "3:8200",
            "-n", "4:0:+16M", "-t", "4:8200", "-n", "5:0:+4M", "-t", "5:8300", "-n", "6:0:+4M", "-t", "6:0700", img);
        var random = root.Combine("random");
        File.WriteAllBytes(random, new Random(3).GetItems<byte>(Enumerable.Range(0, 256).Select(i => (byte)i).ToArray(), 8 << 20));
        var first3 = long.Parse(DiskTools.Run("sgdisk", "-i", "3", img).StdOut.Split('\n').First(l => l.StartsWith("First sector", StringComparison.Ordinal))
            .Split(' ', StringSplitOptions.RemoveEmptyEntries)[2], System.Globalization.CultureInfo.InvariantCulture);
        DiskTools.WriteAt(img, first3 * 512, random);
        var ext4 = DiskTools.Sparse(root.Combine("kinds.ext4"), 16 << 20);
        DiskTools.Run("mkfs.ext4", "-q", "-F", ext4);
        DiskTools.WriteAt(img, (first3 + (8 << 20) / 512) * 512, ext4);
        DiskTools.WriteAt(img, (first3 + ((8 + 16 + 4) << 20) / 512) * 512, DiskProbeTests.BitLockerBootSector());
        var loop = DiskTools.AttachLoop(img);
        try
        {
            catalog = new DiskCatalog(new DiskCatalogOptions([("kinds", loop)], root.Combine("mnt"), Log, LoopForPartitions: true));
            var disk = Assert.Single(await catalog.GetDisksAsync(CancellationToken.None));
            Assert.Contains("is a BIOS boot partition (GRUB's core image): it holds no file system", Volume(disk, "part/1").Error, StringComparison.Ordinal);
            Assert.Contains("is a Microsoft reserved partition: it holds no file system", Volume(disk, "part/2").Error, StringComparison.Ordinal);
            Assert.Contains("Linux swap partition without a swap signature", Volume(disk, "part/3").Error, StringComparison.Ordinal);
            Assert.Equal(("ext4", (string?)null), (Volume(disk, "part/4").FsType, Volume(disk, "part/4").Error));
            Assert.Null(Volume(disk, "part/5").Error); // a plain Linux partition: every file system is still tried
            Assert.Equal(FsProbe.BitLocker, Volume(disk, "part/6").FsType);
            Assert.Contains("partition 6 is encrypted with BitLocker, which files/ cannot open", Volume(disk, "part/6").Error, StringComparison.Ordinal);
            var error = await Assert.ThrowsAsync<VolumeException>(() => catalog.MountAsync(Volume(disk, "part/2"), CancellationToken.None));
            Assert.DoesNotContain("tried", error.Message, StringComparison.Ordinal);
        }
        finally
        {
            catalog?.Dispose();
            DiskTools.DetachLoop(loop);
        }
    }

    [Fact]
    public async Task A_btrfs_over_two_disks_mounts_with_both_and_degraded_with_one()
    {
        Assert.True(DiskTools.KernelHas("btrfs"), "this test needs a kernel that mounts btrfs (as this kind of machine has)");
        var tree = root.Combine("btrfs-tree");
        Directory.CreateDirectory(tree);
        File.WriteAllText(Path.Combine(tree, "two-copies.txt"), "on both disks\n");
        var images = new[] { DiskTools.Sparse(root.Combine("btrfs-a.img"), 128 << 20), DiskTools.Sparse(root.Combine("btrfs-b.img"), 128 << 20) };
        var loops = images.Select(i => DiskTools.AttachLoop(i, readOnly: false)).ToList();
        try
        {
            DiskTools.Run("mkfs.btrfs", ["-q", "-f", "-d", "raid1", "-m", "raid1", .. loops]);
            var fill = root.Combine("btrfs-fill");
            Directory.CreateDirectory(fill);
            DiskTools.Run("mount", "-t", "btrfs", "-o", $"device={loops[0]},device={loops[1]}", loops[0], fill);
            DiskTools.Run("cp", "-a", tree + "/.", fill + "/");
            DiskTools.Run("umount", fill);
            // The kernel forgets the members (as a fresh restore VM knows none): the mount must name them itself.
            DiskTools.TryRun("btrfs", ["device", "scan", "--forget", .. loops]);

            catalog = new DiskCatalog(new DiskCatalogOptions([("a", loops[0]), ("b", loops[1])], root.Combine("mnt"), Log));
            var disks = await catalog.GetDisksAsync(CancellationToken.None);
            var both = await catalog.MountAsync(Volume(disks[1], "raw"), CancellationToken.None);
            Assert.Equal("on both disks\n", File.ReadAllText(Path.Combine(both, "two-copies.txt")));
            Assert.Contains("2 of 2 devices in this backup", Logged(), StringComparison.Ordinal);
            catalog.Dispose();
            DiskTools.TryRun("btrfs", ["device", "scan", "--forget", .. loops]);

            catalog = new DiskCatalog(new DiskCatalogOptions([("a", loops[0])], root.Combine("mnt1"), Log));
            var one = await catalog.MountAsync(Volume(Assert.Single(await catalog.GetDisksAsync(CancellationToken.None)), "raw"), CancellationToken.None);
            Assert.Equal("on both disks\n", File.ReadAllText(Path.Combine(one, "two-copies.txt")));
            Assert.Contains("1 of 2 devices in this backup (" + loops[0] + "): mounted degraded", Logged(), StringComparison.Ordinal);
        }
        finally
        {
            catalog?.Dispose();
            foreach (var loop in loops)
            {
                DiskTools.TryRun("btrfs", "device", "scan", "--forget", loop);
                DiskTools.DetachLoop(loop);
            }
        }
    }

    [Fact]
    public async Task A_btrfs_whose_default_subvolume_is_a_snapshot_shows_its_top_level_with_every_subvolume()
    {
        // openSUSE's and SLES's layout (snapper): the system boots from a snapshot set as the default subvolume
        // (@/.snapshots/1/snapshot), and /home is a subvolume beside it (@/home). A plain mount shows only the default
        // one, where home/ is an empty directory: the files of /home would seem lost.
        Assert.True(DiskTools.KernelHas("btrfs"), "this test needs a kernel that mounts btrfs (as this kind of machine has)");
        var image = DiskTools.Sparse(root.Combine("snapper.img"), 128 << 20);
        var loop = DiskTools.AttachLoop(image, readOnly: false);
        try
        {
            DiskTools.Run("mkfs.btrfs", "-q", "-f", loop);
            var fill = root.Combine("snapper-fill");
            Directory.CreateDirectory(fill);
            DiskTools.Run("mount", "-t", "btrfs", loop, fill);
            DiskTools.Run("sh", "-ec", """
                cd "$1"
                btrfs -q subvolume create @
                btrfs -q subvolume create @/.snapshots
                mkdir -p @/.snapshots/1
                btrfs -q subvolume create @/.snapshots/1/snapshot
                mkdir -p @/.snapshots/1/snapshot/etc @/.snapshots/1/snapshot/home
                echo opensuse > @/.snapshots/1/snapshot/etc/hostname
                btrfs -q subvolume create @/home
                mkdir -p @/home/user
                echo 'the files of /home' > @/home/user/notes.txt
                btrfs subvolume set-default "$(btrfs subvolume show @/.snapshots/1/snapshot | sed -n 's/^[[:space:]]*Subvolume ID:[[:space:]]*//p')" .
                """, "sh", fill);
            DiskTools.Run("umount", fill);
            DiskTools.Run("mount", "-t", "btrfs", "-o", "ro", loop, fill);
            Assert.True(File.Exists(Path.Combine(fill, "etc/hostname")), "the default subvolume is the snapshot, as on openSUSE");
            DiskTools.Run("umount", fill);
            DiskTools.DetachLoop(loop);
            loop = DiskTools.AttachLoop(image);

            catalog = new DiskCatalog(new DiskCatalogOptions([("suse", loop)], root.Combine("mnt"), Log));
            var dir = await catalog.MountAsync(Volume(Assert.Single(await catalog.GetDisksAsync(CancellationToken.None)), "raw"), CancellationToken.None);
            Assert.Equal("the files of /home\n", File.ReadAllText(Path.Combine(dir, "@/home/user/notes.txt")));
            Assert.Equal("opensuse\n", File.ReadAllText(Path.Combine(dir, "@/.snapshots/1/snapshot/etc/hostname")));
            Assert.Contains("subvolid=5", DiskTools.Run("findmnt", "-no", "OPTIONS", dir).StdOut.Trim().Split(','));
        }
        finally
        {
            catalog?.Dispose();
            DiskTools.DetachLoop(loop);
        }
    }

    [Fact]
    public async Task Mbr_disk_with_logical_partitions_btrfs_swap_and_an_unknown_partition()
    {
        var img = DiskTools.Sparse(root.Combine("mbr.img"), 300 << 20);
        // 1 btrfs (128 MiB), 2 extended: 5 ext4 (32 MiB), 6 swap (8 MiB); 3 zeros (8 MiB).
        ProcessRunner.Run(Requires.Tool("sfdisk"), ["-q", img], stdin: """
            label: dos
            start=2048, size=262144, type=83
            start=264192, size=98304, type=5
            start=364544, size=16384, type=83
            start=266240, size=65536, type=83
            start=333824, size=16384, type=82
            """u8.ToArray()).EnsureSuccess("sfdisk");
        var btrfs = DiskTools.Sparse(root.Combine("btrfs.img"), 128 << 20);
        DiskTools.Run("mkfs.btrfs", "-q", "-f", btrfs);
        var ext4Tree = root.Combine("tree");
        Directory.CreateDirectory(Path.Combine(ext4Tree, "logical"));
        File.WriteAllText(Path.Combine(ext4Tree, "logical", "five.txt"), "partition five\n");
        var ext4 = DiskTools.Sparse(root.Combine("ext4.img"), 32 << 20);
        DiskTools.Run("mkfs.ext4", "-q", "-F", "-d", ext4Tree, ext4);
        var swap = DiskTools.Sparse(root.Combine("swap.img"), 8 << 20);
        DiskTools.Run("mkswap", swap);
        DiskTools.WriteAt(img, 2048L * 512, btrfs);
        DiskTools.WriteAt(img, 266240L * 512, ext4);
        DiskTools.WriteAt(img, 333824L * 512, swap);

        var loop = DiskTools.AttachLoop(img);
        try
        {
            catalog = new DiskCatalog(new DiskCatalogOptions([("mbr", loop)], root.Combine("mnt"), Log, LoopForPartitions: true));
            var disk = Assert.Single(await catalog.GetDisksAsync(CancellationToken.None));
            Assert.Equal(["mbr/part/1", "mbr/part/3", "mbr/part/5", "mbr/part/6"], disk.Volumes.Select(v => v.Id));
            Assert.Equal(["btrfs", null, "ext4", "swap"], disk.Volumes.Select(v => v.FsType));
            Assert.Equal([128UL << 20, 8UL << 20, 32UL << 20, 8UL << 20], disk.Volumes.Select(v => v.Size));

            var five = await catalog.MountAsync(Volume(disk, "part/5"), CancellationToken.None);
            Assert.Equal("partition five\n", File.ReadAllText(Path.Combine(five, "logical", "five.txt")));
            if (DiskTools.KernelHas("btrfs"))
            {
                var one = await catalog.MountAsync(Volume(disk, "part/1"), CancellationToken.None);
                Assert.Contains("ro", DiskTools.MountOptions(one).Split(','));
                Assert.Contains("rescue=nologreplay", Logged());
            }

            var swapError = await Assert.ThrowsAsync<VolumeException>(() => catalog.MountAsync(Volume(disk, "part/6"), CancellationToken.None));
            Assert.Contains("swap", swapError.Message);
            // Nothing recognised: every block file system of the kernel is tried, and the error lists them.
            var unknown = await Assert.ThrowsAsync<VolumeException>(() => catalog.MountAsync(Volume(disk, "part/3"), CancellationToken.None));
            Assert.Contains("mbr/part/3", unknown.Message);
            Assert.Contains("no recognised file system", unknown.Message);
            Assert.Contains("ext4:", unknown.Message);
            catalog.Dispose();
            Assert.Empty(DiskTools.LoopsOver(loop));
        }
        finally
        {
            catalog?.Dispose();
            DiskTools.DetachLoop(loop);
        }
    }

    [Fact]
    public async Task Damaged_primary_gpt_uses_the_backup_and_the_partitions_still_mount()
    {
        var copy = root.Combine("multi-damaged.img");
        DiskTools.Run("cp", "--sparse=always", f.Image("multi"), copy);
        using (var s = new FileStream(copy, FileMode.Open, FileAccess.Write))
        {
            s.Position = 512;
            s.Write(new byte[512]); // the primary GPT header is gone
        }

        var loop = DiskTools.AttachLoop(copy);
        try
        {
            catalog = new DiskCatalog(new DiskCatalogOptions([("damaged", loop)], root.Combine("mnt"), Log, LoopForPartitions: true));
            var disk = Assert.Single(await catalog.GetDisksAsync(CancellationToken.None));
            Assert.Equal(["damaged/part/1", "damaged/part/2", "damaged/lvm/vgtest/data"], disk.Volumes.Select(v => v.Id));
            Assert.Contains("using the backup GPT", Logged());
            var dir = await catalog.MountAsync(Volume(disk, "part/1"), CancellationToken.None);
            Assert.Equal("test-vm\n", File.ReadAllText(Path.Combine(dir, "etc/hostname")));
            catalog.Dispose();
        }
        finally
        {
            catalog?.Dispose();
            DiskTools.DetachLoop(loop);
        }
    }

    [DeviceMapperFact]
    public async Task Lvm_volume_is_activated_read_only_and_mounts()
    {
        var c = Catalog("multi");
        var lv = Volume(Assert.Single(await c.GetDisksAsync(CancellationToken.None)), "lvm/vgtest/data");
        Assert.Null(lv.Error);
        Assert.Equal("xfs", lv.FsType);
        var dir = await c.MountAsync(lv, CancellationToken.None);
        Assert.Equal(Path.Combine(root.Combine("mnt"), "lvm", "vgtest", "data"), dir);
        Assert.Equal("on lvm and xfs\n", File.ReadAllText(Path.Combine(dir, "data/hello.txt")));
        Assert.Equal(DiskTools.EROFS, DiskTools.CreateFileErrno(Path.Combine(dir, "new-file")));
        c.Dispose();
        Assert.False(File.Exists("/dev/mapper/vgtest-data"), "the LV is still active after Dispose");
    }

    [VirtioDisksFact]
    public async Task Guest_mode_finds_the_virtio_disks_by_serial()
    {
        catalog = new DiskCatalog(new DiskCatalogOptions(null, root.Combine("mnt"), Log));
        var disks = await catalog.GetDisksAsync(CancellationToken.None);
        foreach (var sys in Directory.GetDirectories("/sys/block", "vd*"))
        {
            var serial = File.ReadAllText(Path.Combine(sys, "serial")).Trim('\0', ' ', '\n');
            var disk = disks.Single(d => d.Device == "/dev/" + Path.GetFileName(sys));
            Assert.Equal(serial.Length > 0 ? serial : Path.GetFileName(sys), disk.Name);
            Assert.Equal(ulong.Parse(File.ReadAllText(Path.Combine(sys, "size")).Trim()) * 512, disk.Size);
        }
    }
}
