using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// files/ is a faithful copy (issue 12): an ext4 disk with hard links, user xattrs, POSIX ACLs, ns times, modes
/// 0000/4755/1777, device nodes, a fifo and a sparse file is backed up, mounted, and copied out with
/// <c>rsync -aHAX --numeric-ids</c>; the copy's manifest (names, type, mode, uid, gid, mtime ns, size, sha256, rdev,
/// symlink target, xattrs, hard-link groups) equals the source's. Real FUSE mount, real restore VM, real NBD.
/// </summary>
public sealed class FidelityFilesTests : IDisposable
{
    private const string Time = "2026-02-02T00:00:00Z";
    private static readonly TimeSpan Long = TimeSpan.FromMinutes(10);
    private readonly TempDirectory dir = new("restorefs-fidelity");

    /// <summary>Fills the mounted ext4 file system at $1.</summary>
    private const string PopulateScript = """
set -e
cd "$1"
mkdir tmp && chmod 1777 tmp
echo secret > secret && chmod 0000 secret
echo run > suid && chmod 4755 suid
echo linked > a && ln a b && mkdir d && ln a d/c
echo one > x && setfattr -n user.comment -v "hello world" x && setfattr -n user.bin -v 0x00ff01 x
setfacl -m u:1234:r-- x
mkdir acl && setfacl -m u:1234:rwx acl && setfacl -d -m g:55:r-x acl
mknod blk b 8 300 && mknod chr c 1 3 && mkfifo fifo
ln -s /etc/passwd abs && ln -s ../x d/rel
dd if=/dev/urandom of=sparse bs=1M count=1 seek=40 conv=notrunc status=none && truncate -s 64M sparse
chown 1000:100 x && chown -h 1001:101 abs && chown 0:55 tmp
n=0
for p in $(find . -mindepth 1 -depth -not -path './lost+found*'); do
  n=$((n+1)); touch -h -d "@16123251$(printf %02d $n).$(printf %09d $((n*12345679 % 1000000000)))" "$p"
done
""";

    private ProcessResult Run(string tool, params string[] args) =>
        ProcessRunner.Run(Requires.Tool(tool), args, Long).EnsureSuccess(tool + " " + string.Join(' ', args));

    /// <summary>One line per entry below the root (lost+found left out), sorted: names, type, mode, owner, mtime ns,
    /// size and sha256, symlink target, rdev, xattrs, hard-link groups (the per-file-system tests' script).</summary>
    private string Manifest(string root) =>
        ProcessRunner.Run("python3", ["-c", FidelityFilesystemsFixture.ManifestScript, root, "mode,owner,links,target,rdev,xattrs"], Long).EnsureSuccess("manifest " + root).StdOut;

    [Fact]
    public void Rsync_aHAX_of_files_equals_the_ext4_source_and_cp_sparse_writes_only_data()
    {
        Requires.Root();
        Requires.Tool("qemu-system-x86_64");
        var image = dir.Combine("fidelity.img");
        var src = dir.Combine("src");
        Directory.CreateDirectory(src);
        Run("truncate", "-s", "128M", image);
        Run("mkfs.ext4", "-q", "-F", "-I", "256", image);
        Run("mount", "-o", "loop", image, src);
        string expected;
        try
        {
            Run("bash", "-c", PopulateScript, "populate", src);
            expected = Manifest(src);
        }
        finally
        {
            ProcessRunner.Run("umount", [src], Long);
        }

        Assert.Contains("links=", expected);
        Assert.Contains("system.posix_acl_access=", expected);
        var env = new Dictionary<string, string> { ["XDG_RUNTIME_DIR"] = dir.Combine("run") };
        Directory.CreateDirectory(dir.Combine("run"));
        var store = dir.Combine("store");
        ProcessRunner.Run(RepoPaths.Cli, ["backup", "--store", store, "--group", "vm/200", "--time", Time, $"drive-scsi0={image}"], Long, environment: env)
            .EnsureSuccess("backup");
        var mnt = dir.Combine("mnt");
        Directory.CreateDirectory(mnt);
        ProcessRunner.Run(RepoPaths.Cli, ["mount", store, mnt], TimeSpan.FromSeconds(120), environment: env).EnsureSuccess("mount");
        try
        {
            var raw = Path.Combine(mnt, "snapshots", "vm/200", Time, "files", "drive-scsi0.img", "raw");
            var copy = dir.Combine("copy");
            Run("rsync", "-aHAX", "--numeric-ids", "--exclude=/lost+found", raw + "/", copy + "/");
            Assert.Equal(expected, Manifest(copy));
            // The mount itself shows the same (stat and xattrs straight from files/).
            Assert.Equal(expected, Manifest(raw));

            // Holes: SEEK_DATA/SEEK_HOLE answer from the file map, and cp --sparse=always writes only the data.
            var seek = ProcessRunner.Run("python3", ["-c",
                "import os,sys;f=os.open(sys.argv[1],os.O_RDONLY);print(os.lseek(f,0,os.SEEK_DATA),os.lseek(f,41943040,os.SEEK_HOLE),os.fstat(f).st_blocks)",
                Path.Combine(raw, "sparse")], Long).EnsureSuccess("lseek").StdOut.Trim().Split(' ');
            Assert.Equal("41943040", seek[0]);
            Assert.Equal("42991616", seek[1]);
            Assert.True(long.Parse(seek[2]) < 4096, $"st_blocks {seek[2]}: the sparse file is shown fully allocated");
            var sparseCopy = dir.Combine("sparse-copy");
            Run("cp", "-a", "--sparse=always", Path.Combine(raw, "sparse"), sparseCopy);
            var kib = long.Parse(Run("du", "-k", sparseCopy).StdOut.Split('\t')[0]);
            Assert.True(kib <= 1200, $"cp --sparse=always wrote {kib} KiB for 1 MiB of data");
        }
        finally
        {
            ProcessRunner.Run(RepoPaths.Cli, ["umount", mnt], TimeSpan.FromSeconds(120), environment: env);
            if (MountTable.IsMounted(mnt))
            {
                MountTable.LazyUnmount(mnt);
            }
        }
    }

    public void Dispose() => dir.Dispose();
}
