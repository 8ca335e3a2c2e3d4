using System.Text;
using RestoreFs.Datastore;
using RestoreFs.Fuse;
using RestoreFs.TestSupport;
using RestoreFs.Tree;

namespace RestoreFs.Tree.Tests;

/// <summary>
/// files/ at node level against a fake restore VM (FakeFilesBackend answers listings, xattrs and seeks from tables):
/// exact modes and stat fields, hard-link identity, xattrs, seek, symlinks never followed, and malformed guest
/// answers refused with EIO.
/// </summary>
public sealed class FilesFakeBackendTests : IAsyncDisposable
{
    private static readonly DateTimeOffset T0 = DateTimeOffset.Parse("2026-03-04T05:06:07Z");
    private const string Disk = "drive-scsi0.img.fidx";
    private readonly TempDirectory dir = new("restorefs-filesfake");
    private readonly TreeContext context;
    private readonly RootDirectory root;
    private readonly FuseRequestContext owner = new() { Uid = 1234 };
    private readonly FuseRequestContext stranger = new() { Uid = 999 };
    private readonly FakeFilesBackend fake = new();

    public FilesFakeBackendTests()
    {
        var store = dir.Combine("store");
        DatastoreBuilder.Write(store, "vm/100", T0, new Dictionary<string, byte[]> { ["drive-scsi0"] = new byte[4096] });
        context = TreeTesting.Context(dir, store);
        context.Files = fake;
        root = new RootDirectory(context);

        var vol = Stat(Entry("1", 'v', 0x41ED, size: 1 << 30), ino: 2, nlink: 5) with { Uid = 0, MTimeNs = 7 };
        fake.Lists[Disk] = [Entry("part", 'v', 0)];
        fake.Lists[$"{Disk}/part"] = [vol];
        fake.Lists[$"{Disk}/part/1"] =
        [
            Stat(Entry("secret", 'f', 0x8000, size: 3), ino: 10),
            Stat(Entry("suid", 'f', 0x89ED, size: 3), ino: 11) with { MTimeNs = 123_456_789, ATime = new FuseTime(5, 6), CTime = new FuseTime(7, 8) },
            Stat(Entry("tmp", 'd', 0x43FF, size: 4096), ino: 12, nlink: 3),
            Stat(Entry("a", 'f', 0x81A4, size: 3), ino: 20, nlink: 2) with { Xattrs = [new("user.k"u8.ToArray(), "v"u8.ToArray())] },
            Stat(Entry("b", 'f', 0x81A4, size: 3), ino: 20, nlink: 2) with { Xattrs = [new("user.k"u8.ToArray(), "v"u8.ToArray())] },
            Stat(Entry("link", 'l', 0xA1FF, size: 6), ino: 21) with { Target = "/etc/x"u8.ToArray() },
            Stat(Entry("sda", 'b', 0x61B0), ino: 22) with { RDev = (8, 300) },
            Stat(Entry("fifo", 'p', 0x11A4), ino: 23),
            Stat(Entry("sparse", 'f', 0x81A4, size: 1 << 20), ino: 24) with { Blocks = 8 },
            Stat(Entry("sub", 'd', 0x41ED), ino: 256, nlink: 2) with { Dev = (0, 51) },
            new RemoteEntry("broken"u8.ToArray(), '?', 0, 0, 0, 0, 0, null, "Input/output error"),
        ];
        // A btrfs subvolume: same ino as 'a', another device: not a link of it.
        fake.Lists[$"{Disk}/part/1/sub"] = [Stat(Entry("c", 'f', 0x81A4, size: 3), ino: 20, nlink: 2) with { Dev = (0, 51) }];
        fake.Xattrs[$"{Disk}/part/1/link"] = [new("trusted.x"u8.ToArray(), "1"u8.ToArray())];
        fake.Xattrs[$"{Disk}/part/1/suid"] = [new("system.posix_acl_access"u8.ToArray(), [2, 0, 0, 0])];
        fake.Xattrs[$"{Disk}/part/1/fifo"] = [new("user.big"u8.ToArray(), null, "value over 64 KiB")];
        fake.Seeks[$"{Disk}/part/1/sparse"] = (offset, data) => data ? (offset < 65536 ? 65536 : offset < 131072 ? offset : -1) : (offset < 65536 ? offset : offset < 131072 ? 131072 : offset);
    }

    private static RemoteEntry Entry(string name, char type, uint mode, ulong size = 0) =>
        new(Encoding.UTF8.GetBytes(name), type, size, 1_700_000_000, mode, 1000, 100, null, null);

    private static RemoteEntry Stat(RemoteEntry e, ulong ino, uint nlink = 1) => e with { Dev = (8, 1), Ino = ino, NLink = nlink, Blocks = 8 };

    private Task<FuseNode> Walk(FuseRequestContext ctx, params string[] path) =>
        TreeTesting.Walk(root, ctx, ["snapshots", "vm", "100", "2026-03-04T05:06:07Z", "files", .. path]);

    private Task<FuseNode> In(params string[] path) => Walk(owner, ["drive-scsi0.img", "part", "1", .. path]);

    [Fact]
    public async Task A_volume_that_could_not_be_mounted_is_listed_again_later_and_its_files_appear()
    {
        // The VM could not mount part/2 when part/ was first listed (in a real VM: the store out of reach while the VM
        // read the disk; the VM tries such a mount again after a while). part/ shows 2 empty beside 2.error, and that
        // listing is not kept for good: after FailedMountRelist part/ is asked for again and 2 has its files. part/3
        // (swap: never a file system) fails each time and keeps its nodes.
        var quick = TreeTesting.Context(dir, dir.Combine("store"), o => o with { FailedMountRelist = TimeSpan.FromSeconds(1) });
        quick.Files = fake;
        var quickRoot = new RootDirectory(quick);
        var one = fake.Lists[$"{Disk}/part"][0];
        var swap = Entry("3", 'd', 0x41ED, size: 1 << 20) with { Error = "drive-scsi0.img/part/3 holds swap, not a file system" };
        fake.Lists[$"{Disk}/part"] = [one, Entry("2", 'd', 0x41ED, size: 1 << 20) with { Error = "cannot mount drive-scsi0.img/part/2 (/dev/vda2) as ext4: Input/output error" }, swap];
        fake.Lists[$"{Disk}/part/2"] = [Stat(Entry("restored", 'f', 0x81A4, size: 3), ino: 30)];
        string[] partPath = ["snapshots", "vm", "100", "2026-03-04T05:06:07Z", "files", "drive-scsi0.img", "part"];
        var part = (IFuseDirectory)await TreeTesting.Walk(quickRoot, owner, partPath);
        async Task<string[]> Names(IFuseDirectory d) =>
            (await d.ListAsync(owner, default)).Select(e => Encoding.UTF8.GetString(e.Name.Span)).Order(StringComparer.Ordinal).ToArray();
        Task<FuseNode?> Lookup(string name) => part.LookupAsync(Encoding.UTF8.GetBytes(name), owner, default).AsTask();

        Assert.Equal(["1", "2", "2.error", "3", "3.error"], await Names(part));
        var volumeOne = await Lookup("1");
        var (swapDir, swapError) = (await Lookup("3"), await Lookup("3.error"));
        Assert.Empty(await Names((IFuseDirectory)(await Lookup("2"))!));
        Assert.False(part.ListingIsImmutable);
        Assert.True(part.NegativeTimeout <= TimeSpan.FromSeconds(1));
        Assert.True((await Lookup("2.error"))!.EntryTimeout <= TimeSpan.FromSeconds(1));

        // The VM mounts it now. Within the interval the listing is answered from memory (no VM request per look).
        fake.Lists[$"{Disk}/part"] = [one, Stat(Entry("2", 'v', 0x41ED, size: 1 << 20), ino: 2), swap];
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var soon = await Names(part);
        if (clock.Elapsed < TimeSpan.FromMilliseconds(500))
        {
            Assert.Equal(["1", "2", "2.error", "3", "3.error"], soon);
        }

        await Task.Delay(TimeSpan.FromMilliseconds(1100));
        Assert.Equal(["1", "2", "3", "3.error"], await Names(part));
        Assert.Equal(["restored"], await Names((IFuseDirectory)(await Lookup("2"))!));
        Assert.Null(await Lookup("2.error"));
        Assert.Same(volumeOne, await Lookup("1")); // names as they were keep their nodes and inode numbers
        Assert.Same(swapDir, await Lookup("3"));
        Assert.Same(swapError, await Lookup("3.error"));
        Assert.False(part.ListingIsImmutable); // part/3 still cannot be mounted

        // Once nothing in it has failed, the listing is final: kept, by us and by the kernel.
        fake.Lists[$"{Disk}/part"] = [one, Stat(Entry("2", 'v', 0x41ED, size: 1 << 20), ino: 2)];
        await Task.Delay(TimeSpan.FromMilliseconds(1100));
        Assert.Equal(["1", "2"], await Names(part));
        Assert.True(part.ListingIsImmutable);
        Assert.True(part.NegativeTimeout > TimeSpan.FromHours(1));
        var requests = fake.Requests.Count(r => r == $"list {Disk}/part");
        await Task.Delay(TimeSpan.FromMilliseconds(1100));
        await part.ListAsync(owner, default);
        Assert.Equal(requests, fake.Requests.Count(r => r == $"list {Disk}/part"));
    }

    [Fact]
    public async Task Modes_owners_and_times_are_the_guests_exactly()
    {
        var secret = (await In("secret")).GetAttributes();
        Assert.Equal(0x8000u, secret.Mode); // 0000 stays 0000
        Assert.Equal((1000u, 100u), (secret.Uid, secret.Gid));
        var suid = (await In("suid")).GetAttributes();
        Assert.Equal(0x89EDu, suid.Mode); // 4755
        Assert.Equal(FuseTime.From(1_700_000_000, 123_456_789), suid.MTime);
        Assert.Equal(new FuseTime(5, 6), suid.ATime);
        Assert.Equal(new FuseTime(7, 8), suid.CTime);
        var tmp = (await In("tmp")).GetAttributes();
        Assert.Equal(0x43FFu, tmp.Mode); // 1777
        Assert.Equal(3u, tmp.NLink);
        Assert.Equal(4096u, tmp.Size);
        var sda = (await In("sda")).GetAttributes();
        Assert.Equal(0x61B0u, sda.Mode);
        Assert.Equal((300u & 0xFF) | (8u << 8) | ((300u & ~0xFFu) << 12), sda.RDev);
        Assert.Equal(0x11A4u, (await In("fifo")).GetAttributes().Mode);
        Assert.Equal(8ul, (await In("sparse")).GetAttributes().Blocks);

        // The volume root shows its file system root's stat, not made-up values; the levels above stay synthetic.
        var volume = (await Walk(owner, "drive-scsi0.img", "part", "1")).GetAttributes();
        Assert.Equal((0x41EDu, 0u, 5u), (volume.Mode, volume.Uid, volume.NLink));
        Assert.Equal(FuseTime.From(1_700_000_000, 7), volume.MTime);
        var part = (await Walk(owner, "drive-scsi0.img", "part")).GetAttributes();
        Assert.Equal((0x416Du, 1234u), (part.Mode, part.Uid));
    }

    [Fact]
    public async Task Hard_links_are_one_inode_and_subvolumes_do_not_share_inodes()
    {
        var a = await In("a");
        var b = await In("b");
        Assert.Same(a, b);
        Assert.Equal(2u, a.GetAttributes().NLink);
        var c = await In("sub", "c");
        Assert.NotSame(a, c);
        Assert.NotEqual(a.GetAttributes().Ino, c.GetAttributes().Ino);
        Assert.NotEqual((await In("secret")).GetAttributes().Ino, (await In("suid")).GetAttributes().Ino);
    }

    [Fact]
    public async Task Symlinks_are_never_followed_and_unreadable_entries_fail_with_EIO()
    {
        var link = await In("link");
        Assert.IsAssignableFrom<IFuseSymlink>(link);
        Assert.IsNotAssignableFrom<IFuseDirectory>(link);
        Assert.Equal("/etc/x"u8.ToArray(), await ((IFuseSymlink)link).ReadLinkAsync(owner, default));
        Assert.DoesNotContain(fake.Requests, r => r.StartsWith("list /etc", StringComparison.Ordinal));

        var names = (await ((IFuseDirectory)await Walk(owner, "drive-scsi0.img", "part", "1")).ListAsync(owner, default))
            .Select(e => Encoding.UTF8.GetString(e.Name.Span)).ToList();
        Assert.Contains("broken", names);
        var e = await Assert.ThrowsAsync<FuseException>(() => In("broken"));
        Assert.Equal(Errors.EIO, e.Errno);
    }

    [Fact]
    public async Task Xattrs_inline_from_the_endpoint_and_unreadable()
    {
        var a = (IFuseXattrs)await In("a");
        var list = await a.ListXattrsAsync(owner, default);
        Assert.Equal("user.k"u8.ToArray(), Assert.Single(list).Name);
        Assert.DoesNotContain(fake.Requests, r => r.StartsWith("xattrs", StringComparison.Ordinal)); // inline: no request

        var link = await ((IFuseXattrs)await In("link")).ListXattrsAsync(owner, default);
        Assert.Equal("trusted.x"u8.ToArray(), Assert.Single(link).Name);
        Assert.Contains($"xattrs {Disk}/part/1/link", fake.Requests);
        var acl = await ((IFuseXattrs)await In("suid")).ListXattrsAsync(owner, default);
        Assert.Equal(new byte[] { 2, 0, 0, 0 }, Assert.Single(acl).Value);
        await ((IFuseXattrs)await In("suid")).ListXattrsAsync(owner, default);
        Assert.Single(fake.Requests, $"xattrs {Disk}/part/1/suid"); // asked once

        var e = await Assert.ThrowsAsync<FuseException>(async () => await ((IFuseXattrs)await In("fifo")).ListXattrsAsync(owner, default));
        Assert.Equal(Errors.EIO, e.Errno);
        Assert.Empty(await ((IFuseXattrs)await Walk(owner, "drive-scsi0.img", "part")).ListXattrsAsync(owner, default));

        // A stranger on an --allow-other mount may not make the VM start for an xattr request.
        fake.Running = false;
        var denied = await Assert.ThrowsAsync<FuseException>(async () => await ((IFuseXattrs)await In("secret")).ListXattrsAsync(stranger, default));
        Assert.Equal(Errors.EACCES, denied.Errno);
    }

    [Fact]
    public async Task Seek_finds_data_and_holes_and_refuses_wrong_answers()
    {
        var file = (IFuseFile)await In("sparse");
        await using var handle = await file.OpenAsync(FuseOpenFlags.ReadOnly, owner, default);
        Assert.Equal(65536, await handle.SeekDataOrHoleAsync(0, data: true, default));
        Assert.Equal(131072, await handle.SeekDataOrHoleAsync(65536, data: false, default));
        var none = await Assert.ThrowsAsync<FuseException>(async () => await handle.SeekDataOrHoleAsync(200_000, data: true, default));
        Assert.Equal(Errors.ENXIO, none.Errno);
        var past = await Assert.ThrowsAsync<FuseException>(async () => await handle.SeekDataOrHoleAsync(1 << 20, data: false, default));
        Assert.Equal(Errors.ENXIO, past.Errno);

        fake.Seeks[$"{Disk}/part/1/sparse"] = (_, _) => (1 << 20) + 5; // past the end: a lying guest
        var bad = await Assert.ThrowsAsync<FuseException>(async () => await handle.SeekDataOrHoleAsync(0, data: true, default));
        Assert.Equal(Errors.EIO, bad.Errno);
    }

    [Theory]
    [InlineData("dup")]
    [InlineData("slash")]
    [InlineData("dotdot")]
    [InlineData("empty")]
    [InlineData("nul")]
    [InlineData("nanos")]
    [InlineData("type")]
    [InlineData("xattrdup")]
    public async Task Malformed_listings_are_EIO(string kind)
    {
        var good = Stat(Entry("x", 'f', 0x81A4, 1), ino: 30);
        fake.Lists[$"{Disk}/part/1/tmp"] = kind switch
        {
            "dup" => [good, good with { Ino = 31 }],
            "slash" => [good with { Name = "a/b"u8.ToArray() }],
            "dotdot" => [good with { Name = ".."u8.ToArray() }],
            "empty" => [good with { Name = [] }],
            "nul" => [good with { Name = "a\0b"u8.ToArray() }],
            "nanos" => [good with { MTimeNs = 1_000_000_000 }],
            "type" => [good with { Mode = 0x41ED }],
            _ => [good with { Xattrs = [new("user.a"u8.ToArray(), [1]), new("user.a"u8.ToArray(), [2])] }],
        };
        var tmp = (IFuseDirectory)await In("tmp");
        var e = await Assert.ThrowsAsync<FuseException>(async () => await tmp.ListAsync(owner, default));
        Assert.Equal(Errors.EIO, e.Errno);
    }

    public async ValueTask DisposeAsync()
    {
        await context.Exports.DisposeAsync();
        dir.Dispose();
    }

    /// <summary>A restore VM made of tables; records what was asked.</summary>
    private sealed class FakeFilesBackend : IFilesBackend
    {
        public Dictionary<string, IReadOnlyList<RemoteEntry>> Lists { get; } = new(StringComparer.Ordinal);

        public Dictionary<string, IReadOnlyList<RemoteXattr>> Xattrs { get; } = new(StringComparer.Ordinal);

        public Dictionary<string, Func<long, bool, long>> Seeks { get; } = new(StringComparer.Ordinal);

        public List<string> Requests { get; } = [];

        public bool Running { get; set; } = true;

        public ValueTask<IReadOnlyList<RemoteEntry>> ListAsync(SnapshotState snapshot, byte[] path, CancellationToken ct)
        {
            var p = Encoding.UTF8.GetString(path);
            Requests.Add("list " + p);
            return Lists.TryGetValue(p, out var list) ? ValueTask.FromResult(list) : throw new IOException("no such directory: " + p);
        }

        public ValueTask<int> ReadAsync(SnapshotState snapshot, byte[] path, long offset, Memory<byte> buffer, CancellationToken ct) =>
            throw new IOException("unreadable");

        public bool IsVmRunning(SnapshotState snapshot) => Running;

        public bool IsMapped(SnapshotState snapshot, byte[] path) => false;

        public ValueTask<IReadOnlyList<RemoteXattr>> XattrsAsync(SnapshotState snapshot, byte[] path, CancellationToken ct)
        {
            var p = Encoding.UTF8.GetString(path);
            Requests.Add("xattrs " + p);
            return ValueTask.FromResult(Xattrs.TryGetValue(p, out var list) ? list : (IReadOnlyList<RemoteXattr>)[]);
        }

        public ValueTask<long> SeekAsync(SnapshotState snapshot, byte[] path, long offset, bool data, CancellationToken ct)
        {
            var p = Encoding.UTF8.GetString(path);
            Requests.Add("seek " + p);
            return ValueTask.FromResult(Seeks[p](offset, data));
        }
    }
}
