using RestoreFs.RestoreDaemon.Disks;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>
/// Whole-disk file systems (ext4, xfs, btrfs with a subvolume and a read-only snapshot of it, NTFS through ntfs-3g)
/// made with their mkfs tools and filled with what a faithful copy must keep: hard links, user xattrs, access and
/// default ACLs, a trusted.* xattr on a symlink, nanosecond times, modes 0000/4755/1777, device nodes, a fifo, a
/// sparse file (NTFS: a file with an alternate data stream). Served by the real <see cref="DiskCatalog"/> (read-only
/// loop devices, the daemon's own mounts) and the real server on a unix socket; the expected values come from
/// stat/getfattr/lseek on the daemon's mounts.
/// </summary>
public sealed class FidelityFixture : IAsyncLifetime
{
    public const string Ticket = "3c2f1a9e-5b7d-4e1a-9c3b-0f1e2d3c4b5a";

    /// <summary>Disk name → file system type, for the disks made here.</summary>
    public static readonly string[] LinuxFileSystems = ["ext4", "xfs", "btrfs"];

    /// <summary>A value larger than an inline listing carries (xfs holds up to 64 KiB).</summary>
    public const int BigValue = 60_000;

    /// <summary>On xfs, "manyx" has this many values of <see cref="BigValue"/> bytes: more than 1 MiB in all.</summary>
    public const int ManyValues = 18;

    private readonly List<string> loops = [];

    public TempDirectory Dir { get; } = new("restorefs-fidelity");

    public List<string> Log { get; } = [];

    internal DiskCatalog Catalog { get; private set; } = null!;

    internal ServerHarness Harness { get; private set; } = null!;

    /// <summary>Disks made: ext4, xfs, btrfs, and ntfs when mkntfs and ntfs-3g are there.</summary>
    public List<string> Disks { get; } = [];

    private const string Populate = """
        set -e
        cd "$1"
        mkdir -p d/sub many
        printf 'hello\n' > d/a
        ln d/a d/a-link
        ln d/a d/sub/a-link2
        printf 'x' > xattr-file
        setfattr -n user.comment -v 'a comment' xattr-file
        setfattr -n user.bin -v 0x00ff10 xattr-file
        setfacl -m u:4321:r-- xattr-file
        mkdir acl-dir
        setfacl -m u:1234:rwx acl-dir
        setfacl -d -m g:555:r-x acl-dir
        printf z > m0000; chmod 0000 m0000
        printf s > m4755; chown 1001:1002 m4755; chmod 4755 m4755
        mkdir m1777; chmod 1777 m1777
        mknod chardev c 1 7
        mknod blockdev b 7 200
        mkfifo fifo
        ln -s target-name symlink
        setfattr -h -n trusted.link -v on symlink
        dd if=/dev/urandom of=sparse bs=64K count=1 seek=16 conv=notrunc status=none
        dd if=/dev/urandom of=sparse bs=64K count=1 seek=48 conv=notrunc status=none
        truncate -s 8M sparse
        for i in $(seq 1 10); do printf "$i" > many/f$i; done
        touch -d '2021-03-04 05:06:07.123456789 UTC' xattr-file
        touch -h -d '2019-01-01 00:00:00.5 UTC' symlink
        touch -d '2001-09-09 01:46:40.999999999 UTC' d/a
        touch -d '2020-02-02 02:02:02.020202020 UTC' acl-dir m0000 .
        """;

    public async Task InitializeAsync()
    {
        Requires.Root();
        foreach (var tool in new[] { "setfattr", "getfattr", "setfacl", "mkfs.ext4", "mkfs.xfs", "mkfs.btrfs", "losetup", "stat" })
        {
            Requires.Tool(tool);
        }

        var script = Dir.Combine("populate.sh");
        await File.WriteAllTextAsync(script, Populate);
        foreach (var fs in LinuxFileSystems)
        {
            var image = Dir.Combine(fs + ".img");
            DiskTools.Sparse(image, fs == "xfs" ? 320L << 20 : 160L << 20);
            switch (fs)
            {
                case "ext4": DiskTools.Run("mkfs.ext4", "-q", "-F", image); break;
                case "xfs": DiskTools.Run("mkfs.xfs", "-q", "-f", image); break;
                default: DiskTools.Run("mkfs.btrfs", "-q", "-f", image); break;
            }

            var mnt = Dir.Combine("src-" + fs);
            Directory.CreateDirectory(mnt);
            DiskTools.Run("mount", "-o", "loop", image, mnt);
            try
            {
                ProcessRunner.Run("bash", [script, mnt], TimeSpan.FromMinutes(2)).EnsureSuccess($"populating {fs}");
                if (fs == "xfs")
                {
                    ProcessRunner.Shell($"set -e; cd '{mnt}'; printf x > bigx; setfattr -n user.big -v \"$(head -c {BigValue} /dev/zero | tr '\\0' a)\" bigx; "
                                        + $"printf x > manyx; v=$(head -c {BigValue} /dev/zero | tr '\\0' b); for i in $(seq -w 1 {ManyValues}); do setfattr -n user.v$i -v \"$v\" manyx; done")
                        .EnsureSuccess("a large xattr on xfs");
                }

                if (fs == "btrfs")
                {
                    ProcessRunner.Shell($"set -e; cd '{mnt}'; btrfs -q subvolume create sub; printf 'in a subvolume\\n' > sub/inner; ln sub/inner sub/inner-link; "
                                        + "btrfs -q subvolume snapshot -r sub snap").EnsureSuccess("btrfs subvolumes");
                }
            }
            finally
            {
                DiskTools.Run("umount", mnt);
            }

            loops.Add(DiskTools.AttachLoop(image));
            Disks.Add(fs);
        }

        if (File.Exists("/usr/sbin/mkntfs") || File.Exists("/sbin/mkntfs"))
        {
            var image = Dir.Combine("ntfs.img");
            DiskTools.Sparse(image, 32L << 20);
            DiskTools.Run("mkntfs", "-q", "-F", "-Q", image);
            var mnt = Dir.Combine("src-ntfs");
            Directory.CreateDirectory(mnt);
            DiskTools.Run("ntfs-3g", image, mnt);
            try
            {
                ProcessRunner.Shell($"set -e; cd '{mnt}'; printf 'main stream\\n' > ads.txt; setfattr -n user.Zone.Identifier -v '[ZoneTransfer]' ads.txt; "
                                    + "setfattr -n user.second -v 0x0001020304 ads.txt").EnsureSuccess("an NTFS file with named data streams");
            }
            finally
            {
                DiskTools.Run("umount", mnt);
            }

            loops.Add(DiskTools.AttachLoop(image));
            Disks.Add("ntfs");
        }

        Catalog = new DiskCatalog(new DiskCatalogOptions(Disks.Select((d, i) => (d, loops[i])).ToList(), Dir.Combine("mnt"), AddLog));
        Harness = new ServerHarness(Catalog, Dir.Combine("api.sock"), Ticket);
    }

    private void AddLog(string line)
    {
        lock (Log)
        {
            Log.Add(line);
        }
    }

    /// <summary>Where the daemon mounted a disk's raw volume (after something was listed on it).</summary>
    public string MountOf(string disk) =>
        Catalog.Mounts.Single(m => m.Volume.Disk == disk && m.Volume.Bucket == "raw").MountPoint;

    public async Task DisposeAsync()
    {
        if (Harness is not null)
        {
            await Harness.DisposeAsync();
        }

        Catalog?.Dispose();
        foreach (var m in DiskTools.MountsUnder(Dir.Path).OrderByDescending(m => m.Length))
        {
            MountTable.LazyUnmount(m);
        }

        foreach (var loop in loops)
        {
            DiskTools.DetachLoop(loop);
        }

        TestHelpers.RemoveTree(Dir.Path);
        Dir.Dispose();
    }
}
