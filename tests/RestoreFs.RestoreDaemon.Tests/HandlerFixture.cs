using System.Net.Sockets;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>
/// A directory tree with what file systems hold and .NET's file APIs get wrong (names that are not UTF-8, symlinks
/// pointing out of the tree, devices, fifos, sockets, ids above ustar's range, nanosecond times, long paths), served
/// through <see cref="DirectoryVolumeCatalogForTests"/> by the real server on a unix socket:
/// disk <c>drive-scsi0-with-a-long-name</c> (serial cut to 20 bytes as virtio does) with part/1 = the tree,
/// part/2 failing to mount, lvm/vg0/root = a small second tree; disk <c>bare</c> with raw = the tree.
/// </summary>
public sealed class HandlerFixture : IAsyncLifetime
{
    public const string Ticket = "9b1f0c6e-2d4a-4c1b-8e7f-a1b2c3d4e5f6";
    public const string FullName = "drive-scsi0-with-a-long-name";
    public const string Serial = "drive-scsi0-with-a-l"; // cut to 20 bytes

    /// <summary>"café.txt" in Latin-1: not UTF-8.</summary>
    public static readonly byte[] Latin1Name = [.. "caf"u8, 0xE9, .. ".txt"u8];

    /// <summary>A directory name of bytes that are not UTF-8 at all.</summary>
    public static readonly byte[] BinaryDirName = [.. "dir-"u8, 0xFF, 0xFE, 0x80];

    private Socket? socketFile;

    public TempDirectory Dir { get; } = new("restorefs-handler");

    public string Tree => Dir.Combine("tree");

    public string Small => Dir.Combine("small");

    public byte[] Random { get; } = new byte[3 * 1024 * 1024 + 17];

    internal DirectoryVolumeCatalogForTests Catalog { get; private set; } = null!;

    internal ServerHarness Harness { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Requires.Root(); // chown to big ids, mknod
        new Random(7).NextBytes(Random);
        Directory.CreateDirectory(Dir.Combine("tree/etc"));
        Directory.CreateDirectory(Dir.Combine("tree/home/u/docs"));
        Directory.CreateDirectory(Dir.Combine("tree/home/u/special"));
        Directory.CreateDirectory(Dir.Combine("tree/srv"));
        Directory.CreateDirectory(Small);
        await File.WriteAllTextAsync(Dir.Combine("small/lv.txt"), "on a logical volume\n");
        await File.WriteAllTextAsync(Dir.Combine("tree/etc/passwd"), "root:x:0:0:root:/root:/bin/bash\nu:x:1000:1000::/home/u:/bin/sh\n");
        await File.WriteAllTextAsync(Dir.Combine("tree/etc/hostname"), "vm100\n");
        await File.WriteAllTextAsync(Dir.Combine("tree/home/u/docs/report.txt"), "quarterly report\n");
        await File.WriteAllTextAsync(Dir.Combine("tree/home/u/Grüße.txt"), "utf-8 name\n");
        await File.WriteAllBytesAsync(Dir.Combine("tree/srv/random.bin"), Random);
        await File.WriteAllBytesAsync(Dir.Combine("tree/srv/empty"), []);
        var deep = Dir.Combine("tree/home/u", new string('d', 60), new string('e', 60));
        Directory.CreateDirectory(deep);
        await File.WriteAllTextAsync(Path.Combine(deep, new string('f', 120) + ".txt"), "a path longer than ustar's 100 bytes\n");
        // Kept open: .NET removes the socket file of a bound socket when it is disposed.
        socketFile = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socketFile.Bind(new UnixDomainSocketEndPoint(Dir.Combine("tree/home/u/special/sock")));

        // What .NET cannot make: byte names, symlinks out of the tree, a device, a fifo, big ids, exact times.
        ProcessRunner.Shell($$"""
            set -e
            cd '{{Tree}}'
            printf 'latin-1 name\n' > "home/u/$(printf 'caf\351.txt')"
            mkdir "home/u/$(printf 'dir-\377\376\200')"
            printf 'inside a binary-named directory\n' > "home/u/$(printf 'dir-\377\376\200')/inner.txt"
            ln -s ../../etc/hostname home/u/hostname-link
            ln -s /etc home/u/etc-abs
            ln -s /etc/passwd home/u/passwd-abs
            ln -s ../../../../../../../../.. home/u/up-rel
            ln -s chain2 home/u/chain1
            ln -s ../u/chain3 home/u/chain2
            ln -s ../../.. home/u/chain3
            ln -s does-not-exist home/u/dangling
            mkfifo home/u/special/fifo
            mknod home/u/special/null c 1 3
            chmod 600 home/u/docs/report.txt
            chmod 4755 home/u/Grüße.txt
            printf 'owned by a big id\n' > home/u/bigid.txt
            chown 3000000:3000001 home/u/bigid.txt
            ln etc/passwd etc/passwd-hardlink
            touch -d '2024-05-01 10:00:00 UTC' etc/hostname
            touch -d '2023-01-02 03:04:05.123456789 UTC' home/u/docs/report.txt
            touch -h -d '2022-02-02 02:02:02 UTC' home/u/hostname-link
            """).EnsureSuccess("making the test tree");

        Catalog = new DirectoryVolumeCatalogForTests([
            new TestDisk(Serial, [
                new TestVolume("part", ["1"], Tree, 40 << 20),
                new TestVolume("part", ["2"], null, 8 << 20, "no file system recognised (tried ext4, xfs, vfat)"),
                new TestVolume("lvm", ["vg0", "root"], Small, 320 << 20),
            ], 400 << 20),
            new TestDisk("bare", [new TestVolume("raw", [], Tree)], 64 << 20),
        ]);
        Harness = new ServerHarness(Catalog, Dir.Combine("api.sock"), Ticket, maxExtractions: 8);
    }

    public async Task DisposeAsync()
    {
        if (Harness is not null)
        {
            await Harness.DisposeAsync();
        }

        socketFile?.Dispose();
        TestHelpers.RemoveTree(Dir.Path);
        Dir.Dispose();
    }
}
