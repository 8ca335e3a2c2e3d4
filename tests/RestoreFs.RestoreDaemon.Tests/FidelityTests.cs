using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using RestoreFs.RestoreApi;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>
/// What a faithful copy needs from the daemon (issue 12, guest side): every listed entry carries exactly what statx
/// says on the daemon's own mount (mode, owner, size, link count, inode, device, blocks, rdev, ns times), the xattrs
/// endpoint gives exactly what <c>getfattr -d -m- -h</c> gives, seek gives what lseek gives; on real ext4, xfs, btrfs
/// and NTFS file systems (<see cref="FidelityFixture"/>).
/// </summary>
public sealed partial class FidelityTests(FidelityFixture f) : IClassFixture<FidelityFixture>
{
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    private static string S(byte[] b) => Encoding.UTF8.GetString(b);

    /// <summary>Every entry below a disk's raw volume, by path relative to the volume ("d/a").</summary>
    private async Task<Dictionary<string, ArchiveEntry>> WalkAsync(string disk, ListOptions? options = null)
    {
        await using var client = f.Harness.Client();
        var result = new Dictionary<string, ArchiveEntry>(StringComparer.Ordinal);
        var pending = new Queue<string>([""]);
        while (pending.TryDequeue(out var dir))
        {
            await foreach (var e in client.ListAsync(B($"{disk}/raw/{dir}"), options ?? new ListOptions(), CancellationToken.None))
            {
                var rel = dir.Length == 0 ? S(e.Name) : dir + "/" + S(e.Name);
                Assert.True(result.TryAdd(rel, e), $"{disk}: {rel} listed twice");
                if (e.Type == EntryTypes.Directory)
                {
                    pending.Enqueue(rel);
                }
            }
        }

        return result;
    }

    /// <summary>stat(1) of a path on the daemon's mount: mode (hex), uid, gid, size, links, inode, blocks, rdev major/minor
    /// (hex), dev (decimal dev_t), mtime, atime, ctime, btime (seconds.nanoseconds).</summary>
    private static string[] Stat(string path) =>
        DiskTools.Run("stat", "-c", "%f %u %g %s %h %i %b %t %T %d %.9Y %.9X %.9Z %.9W", path).StdOut.Trim().Split(' ');

    private static string Time(Timestamp? t) => t is { } v ? $"{v.Seconds}.{v.Nanoseconds:D9}" : "0.000000000";

    private static ulong MakeDev(DeviceNumber d) =>
        ((ulong)(d.Major & 0xfffff000) << 32) | ((ulong)(d.Major & 0xfff) << 8) | ((ulong)(d.Minor & 0xffffff00) << 12) | (d.Minor & 0xff);

    private static void AssertStat(string what, ArchiveEntry e, string[] st)
    {
        var expected = string.Join(' ', st);
        var rdev = e.RDev ?? default;
        var actual = string.Join(' ',
            e.Mode.ToString("x", CultureInfo.InvariantCulture), e.Uid, e.Gid,
            e.Type is EntryTypes.BlockDevice or EntryTypes.CharDevice or EntryTypes.Fifo or EntryTypes.Socket ? st[3] : e.Size,
            e.NLink, e.Ino, e.Blocks,
            rdev.Major.ToString("x", CultureInfo.InvariantCulture), rdev.Minor.ToString("x", CultureInfo.InvariantCulture),
            MakeDev(e.Dev!.Value), Time(e.MTimeStamp), Time(e.ATime), Time(e.CTime), Time(e.BTime));
        Assert.True(expected == actual, $"{what}:\n  stat   {expected}\n  listed {actual}");
    }

    public static IEnumerable<object[]> LinuxDisks => FidelityFixture.LinuxFileSystems.Select(d => new object[] { d });

    [Theory]
    [MemberData(nameof(LinuxDisks))]
    public async Task Every_entry_carries_exactly_what_statx_says_on_the_mount(string disk)
    {
        var entries = await WalkAsync(disk);
        var mount = f.MountOf(disk);
        Assert.True(entries.Count >= 25, $"{disk}: only {entries.Count} entries");
        foreach (var (rel, e) in entries)
        {
            AssertStat($"{disk}/{rel}", e, Stat(Path.Combine(mount, rel)));
        }

        // What the fixture made, spelled out.
        Assert.Equal(0x8000u, entries["m0000"].Mode);
        Assert.Equal(0x89EDu, entries["m4755"].Mode);
        Assert.Equal((1001u, 1002u), (entries["m4755"].Uid, entries["m4755"].Gid));
        Assert.Equal(0x43FFu, entries["m1777"].Mode);
        Assert.Equal((EntryTypes.CharDevice, new DeviceNumber(1, 7)), (entries["chardev"].Type, entries["chardev"].RDev));
        Assert.Equal((EntryTypes.BlockDevice, new DeviceNumber(7, 200)), (entries["blockdev"].Type, entries["blockdev"].RDev));
        Assert.Equal(EntryTypes.Fifo, entries["fifo"].Type);
        Assert.Null(entries["fifo"].RDev);
        Assert.Equal(new Timestamp(1614834367, 123456789), entries["xattr-file"].MTimeStamp);
        Assert.Equal(new Timestamp(1546300800, 500000000), entries["symlink"].MTimeStamp);
        Assert.Equal(B("target-name"), entries["symlink"].Target);

        // Hard links: one (dev, ino), the true link count.
        var links = new[] { "d/a", "d/a-link", "d/sub/a-link2" }.Select(n => entries[n]).ToList();
        Assert.Single(links.Select(l => (l.Dev, l.Ino)).Distinct());
        Assert.All(links, l => Assert.Equal(3u, l.NLink));
        Assert.Equal(new Timestamp(1000000000, 999999999), links[0].MTimeStamp);
        Assert.Equal(10, entries.Keys.Count(k => k.StartsWith("many/", StringComparison.Ordinal)));

        // Sparse: 128 KiB of data in 8 MiB.
        var sparse = entries["sparse"];
        Assert.Equal(8UL << 20, sparse.Size);
        Assert.InRange(sparse.Blocks!.Value, 256UL, 1024UL);
    }

    [Theory]
    [MemberData(nameof(LinuxDisks))]
    public async Task A_volume_root_carries_the_real_attributes_of_its_file_systems_root(string disk)
    {
        await using var client = f.Harness.Client();
        await client.ListAllAsync($"{disk}/raw");
        var raw = Assert.Single(await client.ListAllAsync(disk), e => S(e.Name) == "raw");
        var st = Stat(f.MountOf(disk));
        AssertStat($"{disk}/raw", raw with { Size = ulong.Parse(st[3], CultureInfo.InvariantCulture) }, st);
        Assert.Equal(EntryTypes.Virtual, raw.Type);
        Assert.NotNull(raw.Extents); // its place on the disk, as before
    }

    [Fact]
    public async Task Btrfs_subvolumes_and_snapshots_have_their_own_device_so_links_never_cross_them()
    {
        var entries = await WalkAsync("btrfs");
        var mount = f.MountOf("btrfs");
        foreach (var rel in new[] { "sub", "snap", "sub/inner", "sub/inner-link", "snap/inner", "snap/inner-link" })
        {
            AssertStat($"btrfs/{rel}", entries[rel], Stat(Path.Combine(mount, rel)));
        }

        var root = entries["d"].Dev;
        Assert.NotEqual(root, entries["sub"].Dev);
        Assert.NotEqual(entries["sub"].Dev, entries["snap"].Dev);
        Assert.Equal(256UL, entries["sub"].Ino); // a subvolume's root directory
        Assert.Equal((entries["sub/inner"].Dev, entries["sub/inner"].Ino), (entries["sub/inner-link"].Dev, entries["sub/inner-link"].Ino));
        Assert.Equal(2u, entries["sub/inner"].NLink);
        // The snapshot's copy has the same inode number on another device: not a link of the original.
        Assert.Equal(entries["sub/inner"].Ino, entries["snap/inner"].Ino);
        Assert.NotEqual(entries["sub/inner"].Dev, entries["snap/inner"].Dev);
    }

    /// <summary>getfattr -d -m- -h -e base64 of one path: name → value.</summary>
    private static SortedDictionary<string, string> Getfattr(string path)
    {
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        var r = DiskTools.Run("getfattr", "-d", "-m-", "-h", "-e", "base64", "--absolute-names", path);
        foreach (var line in r.StdOut.Split('\n'))
        {
            if (line.Length == 0 || line.StartsWith('#'))
            {
                continue;
            }

            var eq = line.IndexOf('=', StringComparison.Ordinal);
            var value = eq < 0 ? "" : line[(eq + 1)..];
            result[eq < 0 ? line : line[..eq]] = value.StartsWith("0s", StringComparison.Ordinal) ? value[2..] : value == "\"\"" ? "" : value;
        }

        return result;
    }

    private static SortedDictionary<string, string> AsMap(IReadOnlyList<Xattr> xattrs)
    {
        Assert.All(xattrs, x => Assert.Null(x.Error));
        return new SortedDictionary<string, string>(xattrs.ToDictionary(x => S(x.Name), x => Convert.ToBase64String(x.Value!)), StringComparer.Ordinal);
    }

    [Theory]
    [MemberData(nameof(LinuxDisks))]
    public async Task Xattrs_and_acls_come_exactly_as_getfattr_shows_them_inline_and_from_the_endpoint(string disk)
    {
        var entries = await WalkAsync(disk, new ListOptions(Xattrs: true));
        var mount = f.MountOf(disk);
        await using var client = f.Harness.Client();
        foreach (var (rel, e) in entries)
        {
            if (rel == "manyx")
            {
                continue; // below
            }

            var expected = Getfattr(Path.Combine(mount, rel));
            var fromEndpoint = AsMap(await client.XattrsAsync(B($"{disk}/raw/{rel}"), CancellationToken.None));
            Assert.True(expected.SequenceEqual(fromEndpoint), $"{disk}/{rel}: getfattr {string.Join(", ", expected)}; xattrs {string.Join(", ", fromEndpoint)}");
            if (rel == "bigx")
            {
                Assert.Null(e.Xattrs); // too large to inline: the host asks the endpoint
                Assert.Equal(FidelityFixture.BigValue, Convert.FromBase64String(fromEndpoint["user.big"]).Length);
                continue;
            }

            Assert.True(e.Xattrs is not null, $"{disk}/{rel}: no inline xattrs");
            Assert.True(expected.SequenceEqual(AsMap(e.Xattrs!)), $"{disk}/{rel}: inline xattrs differ");
        }

        var file = AsMap((await client.XattrsAsync(B($"{disk}/raw/xattr-file"), CancellationToken.None)));
        Assert.Equal(B("a comment"), Convert.FromBase64String(file["user.comment"]));
        Assert.Equal(new byte[] { 0, 0xff, 0x10 }, Convert.FromBase64String(file["user.bin"]));
        Assert.Contains("system.posix_acl_access", file.Keys);
        var dir = AsMap(await client.XattrsAsync(B($"{disk}/raw/acl-dir"), CancellationToken.None));
        Assert.Contains("system.posix_acl_access", dir.Keys);
        Assert.Contains("system.posix_acl_default", dir.Keys);
        // A symlink's own attribute, not its (missing) target's.
        Assert.Equal(B("on"), Convert.FromBase64String(AsMap(await client.XattrsAsync(B($"{disk}/raw/symlink"), CancellationToken.None))["trusted.link"]));
        // The volume root.
        Assert.True(Getfattr(mount).SequenceEqual(AsMap(await client.XattrsAsync(B($"{disk}/raw"), CancellationToken.None))));
        if (disk == "xfs")
        {
            // More than 1 MiB of values: the first ones exact, the rest as error elements naming the bound.
            var many = await client.XattrsAsync(B("xfs/raw/manyx"), CancellationToken.None);
            var expected = Getfattr(Path.Combine(mount, "manyx"));
            Assert.Equal(FidelityFixture.ManyValues, many.Count);
            Assert.Equal(expected.Keys, many.Select(x => S(x.Name)).Order(StringComparer.Ordinal));
            var sent = many.TakeWhile(x => x.Error is null).ToList();
            Assert.Equal(1_048_576 / FidelityFixture.BigValue, sent.Count);
            Assert.All(sent, x => Assert.Equal(expected[S(x.Name)], Convert.ToBase64String(x.Value!)));
            Assert.All(many.Skip(sent.Count), x => Assert.Contains("exceed 1048576 bytes", x.Error));
            Assert.Null(entries["manyx"].Xattrs);
        }

        var missing = await Assert.ThrowsAsync<RestoreApiException>(() => client.XattrsAsync(B($"{disk}/raw/nope"), CancellationToken.None));
        Assert.Equal(400, missing.StatusCode);
        Assert.Contains("no such file", missing.Message);
        var through = await Assert.ThrowsAsync<RestoreApiException>(() => client.XattrsAsync(B($"{disk}/raw/symlink/x"), CancellationToken.None));
        Assert.Equal(400, through.StatusCode);
    }

    [Fact]
    public async Task Ntfs_alternate_data_streams_come_as_user_xattrs()
    {
        Assert.True(f.Disks.Contains("ntfs"), "mkntfs/ntfs-3g missing: run scripts/install-deps.sh");
        await using var client = f.Harness.Client();
        var entry = Assert.Single(await client.ListAllAsync("ntfs/raw"), e => S(e.Name) == "ads.txt");
        Assert.Equal(12UL, entry.Size);
        var xattrs = AsMap(await client.XattrsAsync(B("ntfs/raw/ads.txt"), CancellationToken.None));
        Assert.Equal(B("[ZoneTransfer]"), Convert.FromBase64String(xattrs["user.Zone.Identifier"]));
        Assert.Equal(new byte[] { 0, 1, 2, 3, 4 }, Convert.FromBase64String(xattrs["user.second"]));
        Assert.True(Getfattr(Path.Combine(f.MountOf("ntfs"), "ads.txt")).SequenceEqual(xattrs));
        Assert.Contains(f.Catalog.Mounts, m => m.Volume.Disk == "ntfs" && m.FsType == "ntfs-3g");
    }

    [LibraryImport("libc", EntryPoint = "lseek64", SetLastError = true)]
    private static partial long LSeek(int fd, long offset, int whence);

    [Theory]
    [MemberData(nameof(LinuxDisks))]
    public async Task Seek_data_and_hole_answer_what_lseek_answers_on_the_mount(string disk)
    {
        await using var client = f.Harness.Client();
        var path = B($"{disk}/raw/sparse");
        await client.ListAllAsync($"{disk}/raw");
        using var file = File.OpenHandle(Path.Combine(f.MountOf(disk), "sparse"));
        var fd = (int)file.DangerousGetHandle();
        var answers = new List<long>();
        for (long offset = 0; offset <= 9L << 20; offset += 256 << 10)
        {
            foreach (var data in new[] { true, false })
            {
                var expected = LSeek(fd, offset, data ? 3 : 4);
                var errno = Marshal.GetLastPInvokeError();
                var got = await client.SeekAsync(path, offset, data, CancellationToken.None);
                Assert.True(expected >= 0 || errno == 6, $"lseek failed with errno {errno}");
                Assert.True((expected < 0 ? -1 : expected) == got, $"{disk}: seek {(data ? "data" : "hole")} from {offset}: lseek {expected}, daemon {got}");
                answers.Add(got);
            }
        }

        Assert.Equal(1L << 20, await client.SeekAsync(path, 0, true, CancellationToken.None));
        Assert.Equal(-1, await client.SeekAsync(path, 4L << 20, true, CancellationToken.None)); // no data after the last extent: ENXIO
        Assert.Equal((3L << 20) + (64 << 10), await client.SeekAsync(path, 3L << 20, false, CancellationToken.None));
        Assert.Equal(7L << 20, await client.SeekAsync(path, 7L << 20, false, CancellationToken.None)); // already in a hole
        Assert.Equal(-1, await client.SeekAsync(path, 9L << 20, false, CancellationToken.None)); // past the end: ENXIO
        Assert.Contains(-1L, answers);

        var notFile = await Assert.ThrowsAsync<RestoreApiException>(() => client.SeekAsync(B($"{disk}/raw/d"), 0, true, CancellationToken.None));
        Assert.Contains("not a regular file", notFile.Message);
        var link = await Assert.ThrowsAsync<RestoreApiException>(() => client.SeekAsync(B($"{disk}/raw/symlink"), 0, true, CancellationToken.None));
        Assert.Equal(400, link.StatusCode);
    }

    [Fact]
    public async Task A_listing_past_its_limit_comes_in_pages_that_together_hold_every_name_once()
    {
        await using var client = f.Harness.Client();
        var whole = (await client.ListAllAsync("ext4/raw/many")).Select(e => S(e.Name)).ToList();
        Assert.Equal(10, whole.Count);
        int Requests() => f.Harness.LogLines().Count(l => l.Contains("/api2/json/list ext4/raw/many", StringComparison.Ordinal));
        var before = Requests();
        var paged = new List<ArchiveEntry>();
        await foreach (var e in client.ListAsync(B("ext4/raw/many"), new ListOptions(Limit: 3, Xattrs: true), CancellationToken.None))
        {
            paged.Add(e);
        }

        Assert.Equal(whole, paged.Select(e => S(e.Name)));
        Assert.All(paged, e => Assert.NotNull(e.Xattrs));
        // The server logs a request after its answer went out: the last page can arrive before its log line does.
        var deadline = DateTime.UtcNow.AddSeconds(5);
        while (Requests() - before < 4 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(10);
        }

        await Task.Delay(50); // a fifth request, were there one, is logged by now too
        Assert.Equal(4, Requests() - before); // 3 + 3 + 3 + 1

        var bad = await Assert.ThrowsAsync<RestoreApiException>(async () =>
        {
            await foreach (var _ in client.ListAsync(B("ext4/raw/many"), new ListOptions(Limit: 2_000_000), CancellationToken.None))
            {
            }
        });
        Assert.Contains("limit", bad.Message);
    }
}
