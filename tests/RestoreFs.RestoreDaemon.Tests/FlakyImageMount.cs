using System.Text;
using Microsoft.Extensions.Logging.Abstractions;
using RestoreFs.Fuse;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>
/// A disk image whose reads fail with EIO while <see cref="Failing"/> is set, as a real kernel block device: a FUSE
/// mount (our own FUSE server) with one file, and a read-only loop device over that file. In the VM the same happens
/// to a virtio disk when the host's store cannot be reached for a moment (its NBD reads fail, then work again).
/// </summary>
internal sealed class FlakyImageMount : IAsyncDisposable
{
    private readonly FuseMount mount;
    private readonly Image image;

    private FlakyImageMount(FuseMount mount, Image image, string loop)
    {
        this.mount = mount;
        this.image = image;
        Loop = loop;
    }

    /// <summary>The loop device over the image.</summary>
    public string Loop { get; }

    public bool Failing
    {
        get => image.Failing;
        set => image.Failing = value;
    }

    /// <summary>Reads that failed so far.</summary>
    public int Failures => image.Failures;

    public static async Task<FlakyImageMount> MountAsync(string imagePath, string mountPoint)
    {
        Directory.CreateDirectory(mountPoint);
        var image = new Image(File.OpenHandle(imagePath));
        var mount = await FuseMount.MountAsync(mountPoint, new Root(image), new FuseMountOptions(FsName: "restorefs-flaky-test"),
            NullLoggerFactory.Instance);
        try
        {
            return new FlakyImageMount(mount, image, DiskTools.AttachLoop(Path.Combine(mountPoint, "disk.img")));
        }
        catch
        {
            await mount.DisposeAsync();
            MountTable.LazyUnmount(mountPoint);
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        DiskTools.DetachLoop(Loop);
        await mount.DisposeAsync();
        MountTable.LazyUnmount(mount.MountPoint);
        image.File.Dispose();
    }

    private sealed class Root(Image image) : FuseNode, IFuseDirectory
    {
        public TimeSpan NegativeTimeout => TimeSpan.Zero;

        public bool ListingIsImmutable => true;

        public override FuseAttributes GetAttributes() => new(1, 0, 0x416D, 0, 0, DateTimeOffset.FromUnixTimeSeconds(1700000000), 2);

        public ValueTask<FuseNode?> LookupAsync(ReadOnlyMemory<byte> name, FuseRequestContext ctx, CancellationToken ct) =>
            ValueTask.FromResult<FuseNode?>(name.Span.SequenceEqual("disk.img"u8) ? image : null);

        public ValueTask<IReadOnlyList<FuseDirectoryEntry>> ListAsync(FuseRequestContext ctx, CancellationToken ct) =>
            ValueTask.FromResult<IReadOnlyList<FuseDirectoryEntry>>([new FuseDirectoryEntry(Encoding.ASCII.GetBytes("disk.img"), image)]);
    }

    private sealed class Image(Microsoft.Win32.SafeHandles.SafeFileHandle file) : FuseNode, IFuseFile
    {
        private readonly long length = RandomAccess.GetLength(file);
        private volatile bool failing;

        public Microsoft.Win32.SafeHandles.SafeFileHandle File => file;
        private int failures;

        public bool Failing
        {
            get => failing;
            set => failing = value;
        }

        public int Failures => Volatile.Read(ref failures);

        public override FuseAttributes GetAttributes() => new(2, (ulong)length, 0x8124, 0, 0, DateTimeOffset.FromUnixTimeSeconds(1700000000));

        public ValueTask<IFuseFileHandle> OpenAsync(FuseOpenFlags flags, FuseRequestContext ctx, CancellationToken ct) =>
            ValueTask.FromResult<IFuseFileHandle>(new Handle(this));

        private sealed class Handle(Image image) : IFuseFileHandle
        {
            // Nothing read while failing may be served from the page cache afterwards, and nothing read before either:
            // every read reaches the flag.
            public bool KeepCache => false;

            public bool DirectIo => true;

            public ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct)
            {
                if (image.failing)
                {
                    Interlocked.Increment(ref image.failures);
                    throw new FuseException(5, "the disk cannot be read just now"); // EIO
                }

                var total = 0;
                while (total < buffer.Length && offset + total < image.length)
                {
                    var n = RandomAccess.Read(image.File, buffer.Span[total..], offset + total);
                    if (n == 0)
                    {
                        break;
                    }

                    total += n;
                }

                return ValueTask.FromResult(total);
            }

            public ValueTask DisposeAsync() => ValueTask.CompletedTask;
        }
    }
}
