using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using RestoreFs.Nbd;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreVm.Tests;

/// <summary>A raw image file served over NBD, as the mount serves backup images.</summary>
internal sealed class FileBlockSource(string path) : IBlockSource
{
    private readonly Microsoft.Win32.SafeHandles.SafeFileHandle handle = File.OpenHandle(path);

    public long Size { get; } = new FileInfo(path).Length;

    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct)
    {
        var done = 0;
        while (done < destination.Length)
        {
            var n = RandomAccess.Read(handle, destination.Span[done..], offset + done);
            if (n == 0)
            {
                destination.Span[done..].Clear();
                break;
            }

            done += n;
        }

        return ValueTask.CompletedTask;
    }

    public IEnumerable<BlockExtent> GetExtents(long offset, long length) => [new BlockExtent(offset, length, false)];
}

/// <summary>
/// One restore VM (the real image from make restore-image, real QEMU under TCG here) with the test disks from
/// scripts/make-test-disks.sh exported by our NBD server.
/// </summary>
public sealed class VmFixture : IAsyncLifetime
{
    public const string LongSerial = "drive-scsi0-with-a-long-name";

    public TempDirectory Dir { get; } = new("restorefs-vm");

    public NbdServer Nbd { get; private set; } = null!;

    public RestoreVmManager Manager { get; private set; } = null!;

    public VmSession Session { get; private set; } = null!;

    public IReadOnlyList<VmDisk> Disks { get; private set; } = [];

    public string Expected => Dir.Combine("disks", "expected");

    public TimeSpan BootTime { get; private set; }

    public static string ImageDirectory
    {
        get
        {
            var dir = Path.Combine(RepoPaths.Root, "build", "restore-image");
            if (!File.Exists(Path.Combine(dir, "initramfs.img")))
            {
                throw new InvalidOperationException($"no restore image in {dir}: run make restore-image (make test does)");
            }

            return dir;
        }
    }

    public static ILoggerFactory Logs { get; } = NullLoggerFactory.Instance;

    public async Task InitializeAsync()
    {
        Requires.Root();
        Requires.Tool("qemu-system-x86_64");
        ProcessRunner.Run("bash", [RepoPaths.Script("make-test-disks.sh"), Dir.Combine("disks")], TimeSpan.FromMinutes(3)).EnsureSuccess("make-test-disks.sh");
        Nbd = new NbdServer(new NbdServerOptions { UnixSocketPath = Dir.Combine("nbd.sock") }, Logs);
        foreach (var name in new[] { "multi", "bare", "garbage", "ntfs" })
        {
            Nbd.AddExport("snap/" + name + ".img", new FileBlockSource(Dir.Combine("disks", name + ".img")));
        }

        await Nbd.StartAsync(CancellationToken.None);
        Disks = [
            new VmDisk(LongSerial, Nbd.SocketPath!, "snap/multi.img"),
            new VmDisk("bare", Nbd.SocketPath!, "snap/bare.img"),
            new VmDisk("garbage", Nbd.SocketPath!, "snap/garbage.img"),
            new VmDisk("ntfs", Nbd.SocketPath!, "snap/ntfs.img"),
        ];
        Manager = NewManager(Dir.Combine("run"));
        var watch = System.Diagnostics.Stopwatch.StartNew();
        Session = await Manager.EnsureRunningAsync("test-store:vm/100/2026-01-01T00:00:00Z", Disks, CancellationToken.None);
        BootTime = watch.Elapsed;
    }

    public RestoreVmManager NewManager(string runtime, int idle = 600) =>
        new(new RestoreVmOptions { RuntimeDirectory = runtime, ImageDirectory = ImageDirectory, IdleTimeoutSeconds = idle }, Logs);

    public async Task DisposeAsync()
    {
        if (Manager is not null)
        {
            await Manager.DisposeAsync();
        }

        if (Nbd is not null)
        {
            await Nbd.DisposeAsync();
        }

        Dir.Dispose();
    }
}
