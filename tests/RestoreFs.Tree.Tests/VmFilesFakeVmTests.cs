using System.Runtime.CompilerServices;
using System.Text;
using RestoreFs.Datastore;
using RestoreFs.Fuse;
using RestoreFs.RestoreApi;
using RestoreFs.TestSupport;
using RestoreFs.Tree.Files;

namespace RestoreFs.Tree.Tests;

/// <summary>
/// <see cref="VmFiles"/> against a fake restore VM (FakeVms/FakeClient answer from tables, no QEMU): file maps read
/// the backup image's bytes, stay within their budget (an evicted file reads through the VM, same bytes), small files
/// come inline, and when the VM stops everything of the snapshot is released — content, maps, walker state, loaded
/// directory nodes — and the next listing asks the VM again.
/// </summary>
public sealed class VmFilesFakeVmTests : IAsyncDisposable
{
    private static readonly DateTimeOffset T0 = DateTimeOffset.Parse("2026-03-04T05:06:07Z");
    private const string Disk = "drive-scsi0.img.fidx";
    private const int Files = 300;
    private const int FileSize = 5000;
    private readonly TempDirectory dir = new("restorefs-vmfiles");
    private readonly TreeContext context;
    private readonly RootDirectory root;
    private readonly byte[] image;
    private readonly FakeVms vms = new();
    private readonly VmFiles files;
    private readonly FuseRequestContext owner = new() { Uid = 1234 };

    public VmFilesFakeVmTests()
    {
        var store = dir.Combine("store");
        image = DatastoreBuilder.Data(Files * FileSize + 4096, 7);
        DatastoreBuilder.Write(store, "vm/100", T0, new Dictionary<string, byte[]> { ["drive-scsi0"] = image });
        context = TreeTesting.Context(dir, store);
        files = new VmFiles(context, vms);
        context.Files = files;
        root = new RootDirectory(context);

        var client = vms.Client;
        client.Lists[Disk] = [Virtual("part")];
        client.Lists[$"{Disk}/part"] = [Virtual("1") with { Extents = [new FileExtent(0, 0, image.Length)] }];
        client.Lists[$"{Disk}/part/1"] = [Dir("big"), Dir("small")];
        // Mapped files: file i is the image's bytes at i * FileSize (the VM would read the same through the page cache).
        client.Lists[$"{Disk}/part/1/big"] = Enumerable.Range(0, Files).Select(i =>
            File($"f{i:D4}", FileSize) with { Extents = [new FileExtent(0, (long)i * FileSize, FileSize)] }).ToList();
        client.Lists[$"{Disk}/part/1/small"] = Enumerable.Range(0, 20).Select(i =>
            File($"s{i}", 100) with { Content = Enumerable.Repeat((byte)i, 100).ToArray() }).ToList();
        client.Read = (path, offset, buffer) =>
        {
            var name = Encoding.UTF8.GetString(path);
            var i = int.Parse(name[(name.LastIndexOf('/') + 2)..]);
            var n = (int)Math.Max(0, Math.Min(buffer.Length, FileSize - offset));
            image.AsSpan((int)(i * FileSize + offset), n).CopyTo(buffer.Span);
            return n;
        };
    }

    private static ArchiveEntry Virtual(string name) =>
        new([], Encoding.UTF8.GetBytes(name), 'v', false, 0, 1_700_000_000, 0x41ED, 0, 0, null, null);

    private static ArchiveEntry Dir(string name) =>
        new([], Encoding.UTF8.GetBytes(name), 'd', false, 4096, 1_700_000_000, 0x41ED, 0, 0, null, null) { Dev = new(8, 1), Ino = 2, NLink = 2 };

    private static ArchiveEntry File(string name, int size) =>
        new([], Encoding.UTF8.GetBytes(name), 'f', true, (ulong)size, 1_700_000_000, 0x81A4, 0, 0, null, null)
        { Dev = new(8, 1), Ino = (ulong)(100 + name.GetHashCode() & 0xFFFFF), NLink = 1 };

    private Task<FuseNode> Walk(params string[] path) =>
        TreeTesting.Walk(root, owner, ["snapshots", "vm", "100", "2026-03-04T05:06:07Z", "files", "drive-scsi0.img", "part", "1", .. path]);

    private async Task<byte[]> ReadAll(FuseNode node)
    {
        var file = (IFuseFile)node;
        await using var handle = await file.OpenAsync(default, owner, default);
        var size = (int)node.GetAttributes().Size;
        var buffer = new byte[size];
        Assert.Equal(size, await handle.ReadAsync(0, buffer, default));
        return buffer;
    }

    [Fact]
    public async Task Maps_stay_within_their_budget_and_evicted_files_read_the_same_bytes_through_the_VM()
    {
        files.MapBudget = 100; // each map is 2 units: 50 maps
        foreach (var entry in await ((IFuseDirectory)await Walk("big")).ListAsync(owner, default))
        {
            Assert.True(files.MapUnits <= files.MapBudget, $"{files.MapUnits} map units");
        }

        Assert.Equal(100, files.MapUnits);
        for (var i = 0; i < Files; i += 7)
        {
            var readsBefore = vms.Client.Reads;
            var bytes = await ReadAll(await Walk("big", $"f{i:D4}"));
            Assert.True(bytes.AsSpan().SequenceEqual(image.AsSpan(i * FileSize, FileSize)), $"f{i:D4}");
            var mapped = i >= Files - 50;
            Assert.Equal(mapped ? readsBefore : readsBefore + 1, vms.Client.Reads);
        }
    }

    [Fact]
    public async Task A_stopped_VM_releases_content_maps_and_directory_nodes_and_the_next_listing_asks_again()
    {
        Assert.Equal(Files, (await ((IFuseDirectory)await Walk("big")).ListAsync(owner, default)).Count);
        var small = await Walk("small", "s3");
        Assert.True((await ReadAll(small)).All(b => b == 3));
        Assert.True(files.CachedBytes >= 2000);
        Assert.Equal(2 * Files, files.MapUnits);
        Assert.True(context.FilesNodes.LoadedDirectories >= 4);
        var listsBefore = vms.Client.ListCalls;

        vms.Running = false;
        files.Sweep();
        Assert.Equal(0, files.CachedBytes);
        Assert.Equal(0, files.MapUnits);
        Assert.Equal(0, files.Sessions);
        Assert.Equal(0, context.FilesNodes.LoadedDirectories);

        // A node the kernel still holds lists again (the VM would be started again) and reads the same bytes.
        vms.Running = true;
        Assert.Equal(20, (await ((IFuseDirectory)await Walk("small")).ListAsync(owner, default)).Count);
        Assert.True(vms.Client.ListCalls > listsBefore);
        Assert.True((await ReadAll(small)).All(b => b == 3));
        var f7 = await ReadAll(await Walk("big", "f0007"));
        Assert.True(f7.AsSpan().SequenceEqual(image.AsSpan(7 * FileSize, FileSize)));
    }

    [Fact]
    public async Task A_snapshot_left_idle_is_released_while_its_VM_runs_and_one_in_use_is_kept()
    {
        Assert.Equal(Files, (await ((IFuseDirectory)await Walk("big")).ListAsync(owner, default)).Count);
        Assert.Equal(Files, files.MapUnits / 2);
        files.IdleRelease = TimeSpan.FromHours(1);
        files.Sweep();
        Assert.Equal(1, files.Sessions); // used just now: kept
        Assert.True(context.FilesNodes.LoadedDirectories >= 3);

        files.IdleRelease = TimeSpan.FromMilliseconds(50);
        await Task.Delay(200);
        files.Sweep();
        Assert.True(vms.Running); // the VM was not stopped: only the mount's state of it went
        Assert.Equal(0, files.Sessions);
        Assert.Equal(0, files.MapUnits);
        Assert.Equal(0, context.FilesNodes.LoadedDirectories);

        var listsBefore = vms.Client.ListCalls;
        var f9 = await ReadAll(await Walk("big", "f0009"));
        Assert.True(f9.AsSpan().SequenceEqual(image.AsSpan(9 * FileSize, FileSize)));
        Assert.True(vms.Client.ListCalls > listsBefore);
    }

    public async ValueTask DisposeAsync()
    {
        await files.DisposeAsync();
        dir.Dispose();
    }

    /// <summary>Fake restore VMs: one client answering from tables; "running" as the test says.</summary>
    private sealed class FakeVms : IRestoreVms
    {
        public FakeClient Client { get; } = new();

        public bool Running { get; set; } = true;

        public Task<T> RequestAsync<T>(SnapshotState snapshot, Func<IRestoreClient, Task<T>> request, CancellationToken ct) => request(Client);

        public bool IsRunning(string vm) => Running;

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }

    private sealed class FakeClient : IRestoreClient
    {
        public Dictionary<string, List<ArchiveEntry>> Lists { get; } = [];

        public Func<byte[], long, Memory<byte>, int> Read { get; set; } = (_, _, _) => 0;

        public int Reads;

        public int ListCalls;

        public async IAsyncEnumerable<ArchiveEntry> ListAsync(byte[] path, ListOptions options, [EnumeratorCancellation] CancellationToken ct)
        {
            Interlocked.Increment(ref ListCalls);
            await Task.Yield();
            foreach (var e in Lists[Encoding.UTF8.GetString(path)])
            {
                yield return e with { FilePath = [.. path, (byte)'/', .. e.Name] };
            }
        }

        public IAsyncEnumerable<ArchiveEntry> ListAsync(byte[] path, CancellationToken ct) => ListAsync(path, new ListOptions(), ct);

        public IAsyncEnumerable<ArchiveEntry> ListAsync(byte[] path, int inlineMax, CancellationToken ct) => ListAsync(path, new ListOptions(inlineMax), ct);

        public IAsyncEnumerable<ArchiveEntry> ListAsync(byte[] path, int inlineMax, bool extents, CancellationToken ct) =>
            ListAsync(path, new ListOptions(inlineMax, extents), ct);

        public Task<int> ReadAsync(byte[] path, long offset, Memory<byte> buffer, CancellationToken ct)
        {
            Interlocked.Increment(ref Reads);
            return Task.FromResult(Read(path, offset, buffer));
        }

        public Task<IReadOnlyList<Xattr>> XattrsAsync(byte[] path, CancellationToken ct) => Task.FromResult<IReadOnlyList<Xattr>>([]);

        public Task<long> SeekAsync(byte[] path, long offset, bool data, CancellationToken ct) => throw new NotSupportedException();

        public Task<DaemonStatus> StatusAsync(bool keepTimeout, CancellationToken ct) => throw new NotSupportedException();

        public Task<Stream> ExtractAsync(byte[] path, ExtractFormat format, bool zstd, CancellationToken ct) => throw new NotSupportedException();

        public Task StopAsync(CancellationToken ct) => Task.CompletedTask;

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
