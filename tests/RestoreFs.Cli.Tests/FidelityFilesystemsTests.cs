using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// files/ is a faithful copy on every file system the restore VM mounts (issue 12), beyond ext4
/// (<see cref="FidelityFilesTests"/>): xfs, btrfs (a subvolume and a read-only snapshot of it, zstd compression),
/// vfat, exFAT and NTFS, one whole-disk file system per disk, all in one snapshot, so one restore VM serves them all.
/// Each disk is populated on the host with what its file system can hold; the host's own view of it (kernel mount,
/// exFAT through exfat-fuse, NTFS through ntfs-3g; for vfat, which the host kernel lacks, the tree mcopy copied in)
/// gives the expected manifest. <c>rsync -aHAX --numeric-ids</c> out of files/ and the mount itself must show
/// exactly that, for the fields the file system holds (see <see cref="FidelityFilesystemsFixture.Fields"/>).
/// </summary>
public sealed class FidelityFilesystemsTests(FidelityFilesystemsFixture f) : IClassFixture<FidelityFilesystemsFixture>
{
    private void AssertFaithful(string fs)
    {
        var expected = f.Expected[fs];
        var raw = f.Raw(fs);
        var copy = f.Copy(fs);
        FidelityFilesystemsFixture.Run("rsync", "-aHAX", "--numeric-ids", "--exclude=/lost+found", raw + "/", copy + "/");
        AssertSame(fs + " (rsync -aHAX copy of files/)", expected, f.Manifest(copy, fs));
        // The mount itself shows the same, and where the file system has holes, st_blocks and SEEK_DATA/SEEK_HOLE too.
        AssertSame(fs + " (files/ itself)", f.ExpectedOnMount[fs], f.Manifest(raw, fs, onMount: true));
    }

    private static void AssertSame(string what, string expected, string actual)
    {
        if (expected == actual)
        {
            return;
        }

        var e = expected.Split('\n').ToHashSet(StringComparer.Ordinal);
        var a = actual.Split('\n').ToHashSet(StringComparer.Ordinal);
        var missing = expected.Split('\n').Where(l => !a.Contains(l));
        var extra = actual.Split('\n').Where(l => !e.Contains(l));
        Assert.Fail($"{what} differs from the source.\n  only in the source:\n    {string.Join("\n    ", missing)}\n  only in the copy:\n    {string.Join("\n    ", extra)}");
    }

    [Fact]
    public void Xfs_copy_equals_the_source_with_links_xattrs_acls_ns_times_modes_devices_and_byte_names()
    {
        Assert.Contains("links=", f.Expected["xfs"]);
        Assert.Contains("system.posix_acl_default=", f.Expected["xfs"]);
        Assert.Contains(" 0o20000 ", f.Expected["xfs"]); // the char device made it into the manifest
        Assert.Contains(" user.big=", f.Expected["xfs"]);
        AssertFaithful("xfs");
    }

    [Fact]
    public void Btrfs_copy_equals_the_source_and_hard_links_stay_within_their_subvolume()
    {
        var expected = f.Expected["btrfs"];
        Assert.Contains("links=", expected);
        AssertFaithful("btrfs");

        // Spelled out: in the copy, each subvolume's links are one inode of their own; the snapshot kept the link
        // that sub lost after it was taken.
        var copy = f.Copy("btrfs");
        string Ino(string rel) => ProcessRunner.Run("stat", ["-c", "%i %h", Path.Combine(copy, rel)]).EnsureSuccess("stat " + rel).StdOut.Trim();
        Assert.Equal(Ino("a"), Ino("b"));
        Assert.Equal(Ino("sub/a"), Ino("sub/d/c"));
        Assert.Equal(Ino("snap/a"), Ino("snap/b"));
        Assert.Equal(Ino("snap/a"), Ino("snap/d/c"));
        Assert.Equal(3, new[] { Ino("a"), Ino("sub/a"), Ino("snap/a") }.Distinct().Count());
        Assert.EndsWith(" 3", Ino("snap/a"));
        Assert.EndsWith(" 2", Ino("sub/a"));
        Assert.False(File.Exists(Path.Combine(copy, "sub/b")));
    }

    [Fact]
    public void Vfat_copy_equals_the_source_names_sizes_contents_and_two_second_mtimes()
    {
        Assert.Contains(Convert.ToHexString("long name with spaces.dat"u8).ToLowerInvariant(), f.Expected["vfat"]);
        Assert.Contains(Convert.ToHexString("lower.txt"u8).ToLowerInvariant() + " ", f.Expected["vfat"]);
        Assert.Contains(Convert.ToHexString("UPPER.TXT"u8).ToLowerInvariant() + " ", f.Expected["vfat"]);
        AssertFaithful("vfat");
        // The read-only attribute is the one permission FAT holds: no write bits.
        var copy = f.Copy("vfat");
        Assert.Equal(0, (int)File.GetUnixFileMode(Path.Combine(copy, "readonly.txt")) & 0x92);
        Assert.NotEqual(0, (int)File.GetUnixFileMode(Path.Combine(copy, "lower.txt")) & 0x80);
    }

    [Fact]
    public void Exfat_copy_equals_the_source_names_sizes_contents_and_mtimes()
    {
        AssertFaithful("exfat");
    }

    [Fact]
    public void Ntfs_copy_equals_the_source_with_hard_links_100ns_times_and_alternate_data_streams_as_user_xattrs()
    {
        var expected = f.Expected["ntfs"];
        Assert.Contains("links=", expected);
        Assert.Contains("user.Zone.Identifier=", expected);
        Assert.Contains(" user.dirstream=", expected);
        Assert.Contains(" user.big=", expected);
        AssertFaithful("ntfs");
    }
}

/// <summary>Makes the five disks, one backup of them, and mounts it; the VM starts on the first look into files/.</summary>
public sealed class FidelityFilesystemsFixture : IDisposable
{
    private const string Time = "2026-02-03T00:00:00Z";
    private static readonly TimeSpan Long = TimeSpan.FromMinutes(10);

    /// <summary>Disk name in the backup per file system.</summary>
    private static readonly Dictionary<string, string> Disks = new(StringComparer.Ordinal)
    {
        ["xfs"] = "drive-scsi0", ["btrfs"] = "drive-scsi1", ["vfat"] = "drive-scsi2", ["exfat"] = "drive-scsi3", ["ntfs"] = "drive-scsi4",
    };

    /// <summary>
    /// The fields compared per file system, beyond name (bytes), type, size and sha256 of regular files and mtime (ns):
    /// mode, uid/gid, symlink target, rdev, xattrs (ACLs included), hard-link groups. vfat and exFAT hold none of these
    /// (mode and owner come from mount options; no links, xattrs, devices); their mtimes are whole seconds (vfat: even
    /// ones). NTFS through ntfs-3g holds all of them but shows mode 0777 and owner root (no user mapping) on both sides.
    /// <c>root</c>: the volume root's own row (rsync copies its attributes too); FAT and exFAT roots have no times.
    /// </summary>
    public static readonly Dictionary<string, string> Fields = new(StringComparer.Ordinal)
    {
        ["xfs"] = "root,mode,owner,target,rdev,xattrs,links", ["btrfs"] = "root,mode,owner,target,rdev,xattrs,links",
        ["vfat"] = "", ["exfat"] = "", ["ntfs"] = "root,mode,owner,target,rdev,xattrs,links",
    };

    private readonly Dictionary<string, string> env;
    private readonly string mnt;
    private readonly string copies;
    private readonly List<string> hostMounts = [];
    private readonly List<string> loops = [];

    public TempDirectory Dir { get; } = new("restorefs-fidelity-fs");

    public Dictionary<string, string> Expected { get; } = new(StringComparer.Ordinal);

    public Dictionary<string, string> ExpectedOnMount { get; } = new(StringComparer.Ordinal);

    /// <summary>One line per entry below the root (lost+found left out; the root itself as "." with <c>root</c>), sorted;
    /// fields per argv[2]; link groups by first name.</summary>
    internal const string ManifestScript = """
import os, sys, stat, hashlib, errno
root = os.fsencode(sys.argv[1])
want = set(x for x in sys.argv[2].split(',') if x)
rows = {}
inodes = {}
def entries():
    if 'root' in want:
        yield root, b'.'
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(top, name)
            yield p, os.path.relpath(p, root)
for p, rel in entries():
    if rel == b'lost+found' or rel.startswith(b'lost+found/'):
        continue
    st = os.lstat(p)
    f = [rel.hex(), oct(stat.S_IFMT(st.st_mode))]
    if 'mode' in want:
        f.append(oct(stat.S_IMODE(st.st_mode)))
    if 'owner' in want:
        f += [str(st.st_uid), str(st.st_gid)]
    f.append(str(st.st_mtime_ns))
    if stat.S_ISREG(st.st_mode):
        f += [str(st.st_size), hashlib.sha256(open(p, 'rb').read()).hexdigest()]
        if 'sparse' in want:
            segs = []
            fd = os.open(p, os.O_RDONLY)
            off = 0
            while True:
                try:
                    d = os.lseek(fd, off, os.SEEK_DATA)
                except OSError as e:
                    if e.errno != errno.ENXIO:
                        raise
                    break
                off = os.lseek(fd, d, os.SEEK_HOLE)
                segs.append('%d-%d' % (d, off))
            os.close(fd)
            f += ['blocks=%d' % st.st_blocks, 'data=' + ';'.join(segs)]
        if st.st_nlink > 1 and 'links' in want:
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    if stat.S_ISLNK(st.st_mode) and 'target' in want:
        f.append(os.readlink(p).hex())
    if (stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode)) and 'rdev' in want:
        f.append('%d:%d' % (os.major(st.st_rdev), os.minor(st.st_rdev)))
    if 'xattrs' in want:
        xs = []
        for x in sorted(os.listxattr(p, follow_symlinks=False)):
            xs.append(x + '=' + os.getxattr(p, x, follow_symlinks=False).hex())
        f.append(','.join(xs))
    rows[rel] = f
for names in inodes.values():
    names.sort()
    for n in names:
        rows[n].append('links=' + ','.join(x.hex() for x in names))
for rel in sorted(rows):
    print(' '.join(rows[rel]))
""";

    /// <summary>What a Linux file system (xfs, btrfs) holds, in $1 (no times set: <see cref="TouchScript"/>).</summary>
    private const string LinuxScript = """
set -e
cd "$1"
mkdir tmp && chmod 1777 tmp
echo secret > secret && chmod 0000 secret
echo run > suid && chmod 4755 suid && echo grp > sgid && chmod 2711 sgid
echo linked > a && ln a b && mkdir d && ln a d/c
echo one > x && setfattr -n user.comment -v "hello world" x && setfattr -n user.bin -v 0x00ff01 x && setfattr -n user.empty x
setfacl -m u:1234:r-- x
mkdir acl && setfacl -m u:1234:rwx acl && setfacl -d -m g:55:r-x acl
mknod blk b 8 300 && mknod chr c 1 3 && mkfifo fifo
ln -s /etc/passwd abs && ln -s ../x d/rel && ln -s "$(printf 'dangling\376target')" d/odd
echo bytes > "$(printf 'name\377\001end')" && mkdir "$(printf 'caf\303\251 \346\227\245')"
setfattr -h -n trusted.link -v on abs
yes 'compressible line of text' | head -c 1048576 > text
dd if=/dev/urandom of=sparse bs=64K count=3 seek=100 conv=notrunc status=none && truncate -s 16M sparse
chown 1000:100 x && chown -h 1001:101 abs && chown 0:55 tmp
""";

    /// <summary>Sets distinct times on everything below $1, deepest first (a directory's time is not changed by its
    /// children afterwards): $2 = ns (nanoseconds), even (even seconds, as FAT holds them) or whole (whole seconds).</summary>
    private const string TouchScript = """
set -e
cd "$1"
n=0
find . -mindepth 1 -depth -not -path './lost+found*' -print0 | while IFS= read -r -d '' p; do
  n=$((n+1))
  case "$2" in
    ns) t="16123251$(printf %02d $((n % 100))).$(printf %09d $((n*12345679 % 1000000000)))" ;;
    even) t=$((1612325100 + 2 * n)) ;;
    whole) t=$((1612325100 + 3 * n)) ;;
  esac
  touch -h -d "@$t" "$p"
done
""";

    /// <summary>A btrfs root: the Linux set at the top, a subvolume with hard links and xattrs, a read-only snapshot of it.</summary>
    private const string BtrfsScript = """
set -e
cd "$1"
btrfs -q subvolume create sub
cd sub
echo linked-in-sub > a && ln a b && mkdir d && ln a d/c
echo sub-x > x && setfattr -n user.where -v subvolume x && setfacl -m g:77:rw- x
yes 'compressible in the subvolume' | head -c 524288 > text
""";

    private const string NtfsScript = """
set -e
cd "$1"
echo linked > a && ln a b && mkdir d && ln a d/c
echo downloaded > x && setfattr -n user.Zone.Identifier -v '[ZoneTransfer]' x && setfattr -n user.bin -v 0x00ff01 x
setfattr -n user.empty x && setfattr -n user.dirstream -v 'on a directory' d
ln -s ../x d/rel && ln -s no/such/file dangling
mkfifo fifo && mknod chr c 1 3 && mknod blk b 8 300
echo unicode > "caf$(printf '\303\251') $(printf '\346\227\245').txt" && mkdir "Mixed Case Dir"
dd if=/dev/urandom of=big bs=64K count=20 status=none
setfattr -n user.big -v "0x$(head -c 60000 /dev/urandom | od -An -tx1 -v | tr -d ' \n')" big
dd if=/dev/urandom of=sparse bs=64K count=2 seek=100 conv=notrunc status=none && truncate -s 16M sparse
""";

    /// <summary>vfat and exFAT: names (case, spaces, non-ASCII), sizes, contents, directories (no links, xattrs, special files).</summary>
    private const string FatScript = """
set -e
cd "$1"
mkdir -p "Mixed Case Dir/deeper/deepest" empty
echo hi > UPPER.TXT && echo lo > lower.txt && : > zero && echo ro > readonly.txt
echo unicode > "caf$(printf '\303\251') $(printf '\346\227\245').txt"
dd if=/dev/urandom of="Mixed Case Dir/big.bin" bs=64K count=40 status=none
printf 'x%.0s' $(seq 1 5000) > "Mixed Case Dir/deeper/deepest/long name with spaces.dat"
""";

    /// <summary>The manifest of a tree; <paramref name="onMount"/> adds st_blocks and the data segments (SEEK_DATA/HOLE)
    /// of regular files where the file system has holes (xfs, btrfs, NTFS): a copy's are the copy's own.</summary>
    public string Manifest(string root, string fs, bool onMount = false) =>
        ProcessRunner.Run("python3", ["-c", ManifestScript, root, Fields[fs] + (onMount && Fields[fs].Length > 0 ? ",sparse" : "")], Long)
            .EnsureSuccess("manifest " + root).StdOut;

    /// <summary>Both manifests of the source, from a read-only mount of the finished image (what the VM sees).</summary>
    private void Expect(string fs, string root)
    {
        Expected[fs] = Manifest(root, fs);
        ExpectedOnMount[fs] = Manifest(root, fs, onMount: true);
    }

    public static ProcessResult Run(string tool, params string[] args) =>
        ProcessRunner.Run(Requires.Tool(tool), args, Long).EnsureSuccess(tool + " " + string.Join(' ', args));

    private static ProcessResult RunIn(Dictionary<string, string> environment, string tool, params string[] args) =>
        ProcessRunner.Run(Requires.Tool(tool), args, Long, environment: environment).EnsureSuccess(tool + " " + string.Join(' ', args));

    /// <summary>Where a file system's rsync copy goes: an ext4 with ea_inode (a plain ext4 holds no 60 KB xattr value;
    /// xfs would add its own trusted.SGI_ACL_* names to ACLs the copy sets).</summary>
    public string Copy(string fs) => Path.Combine(copies, fs);

    public string Raw(string fs) => Path.Combine(mnt, "snapshots", "vm/201", Time, "files", Disks[fs] + ".img", "raw");

    public FidelityFilesystemsFixture()
    {
        Requires.Root();
        foreach (var tool in new[] { "qemu-system-x86_64", "mkfs.xfs", "mkfs.btrfs", "btrfs", "mkfs.vfat", "mcopy", "mattrib", "mkfs.exfat",
                     "mount.exfat-fuse", "mkntfs", "ntfs-3g", "setfattr", "setfacl", "rsync", "losetup", "python3" })
        {
            Requires.Tool(tool); // fails naming the tool (scripts/install-deps.sh installs them all)
        }

        env = new Dictionary<string, string> { ["XDG_RUNTIME_DIR"] = Dir.Combine("run") };
        Directory.CreateDirectory(Dir.Combine("run"));
        mnt = Dir.Combine("mnt");
        Directory.CreateDirectory(mnt);
        copies = Dir.Combine("copies");
        Directory.CreateDirectory(copies);
        try
        {
            Build();
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    private string Image(string fs, string size)
    {
        var image = Dir.Combine(fs + ".img");
        Run("truncate", "-s", size, image);
        return image;
    }

    private string HostMount(string fs)
    {
        var target = Dir.Combine("src-" + fs);
        Directory.CreateDirectory(target);
        hostMounts.Add(target);
        return target;
    }

    private void Unmount(string target)
    {
        Run("umount", target);
        hostMounts.Remove(target);
    }

    private void Build()
    {
        var images = new Dictionary<string, string>(StringComparer.Ordinal);
        var copiesImage = Image("copies", "400M");
        Run("mkfs.ext4", "-q", "-F", "-O", "ea_inode", copiesImage);
        Run("mount", "-o", "loop", copiesImage, copies);
        hostMounts.Add(copies);

        // xfs (its minimum size is 300 MiB) and btrfs: the host kernel mounts them from loop devices.
        var xfs = images["xfs"] = Image("xfs", "320M");
        Run("mkfs.xfs", "-q", "-f", xfs);
        var src = HostMount("xfs");
        Run("mount", "-o", "loop", xfs, src);
        Run("bash", "-c", LinuxScript, "populate", src);
        // A value too large to come inline in a listing (the host asks the xattrs endpoint); btrfs holds ~16 KiB at most.
        Run("bash", "-c", "setfattr -n user.big -v \"0x$(head -c 60000 /dev/urandom | od -An -tx1 -v | tr -d ' \\n')\" \"$1/text\"", "big", src);
        Run("bash", "-c", TouchScript, "touch", src, "ns");
        Unmount(src);
        Run("mount", "-o", "loop,ro,norecovery", xfs, src);
        hostMounts.Add(src);
        Expect("xfs", src);
        Unmount(src);

        var btrfs = images["btrfs"] = Image("btrfs", "256M");
        Run("mkfs.btrfs", "-q", "-f", btrfs);
        src = HostMount("btrfs");
        Run("mount", "-o", "loop,compress=zstd", btrfs, src);
        Run("bash", "-c", LinuxScript, "populate", src);
        Run("bash", "-c", BtrfsScript, "populate", src);
        Run("bash", "-c", TouchScript, "touch", src, "ns");
        Run("btrfs", "-q", "subvolume", "snapshot", "-r", Path.Combine(src, "sub"), Path.Combine(src, "snap"));
        // A change after the snapshot: the snapshot keeps the old content, links and times.
        Run("bash", "-c", "set -e; cd \"$1\"; echo changed > sub/x; rm sub/b; touch -d @1700000000.5 sub/x sub", "change", src);
        Unmount(src);
        Run("mount", "-o", "loop,ro", btrfs, src);
        hostMounts.Add(src);
        Expect("btrfs", src);
        Unmount(src);

        // vfat: the host kernel has no vfat, so a tree made here is copied in with mtools (times kept with -m; mtools
        // writes local time: UTC here, as the VM's kernel reads it). Even seconds, as FAT holds them.
        var vfat = images["vfat"] = Image("vfat", "64M");
        Run("mkfs.vfat", "-F", "32", "-n", "FIDELITY", vfat);
        var tree = Dir.Combine("vfat-tree");
        Directory.CreateDirectory(tree);
        Run("bash", "-c", FatScript, "populate", tree);
        Run("bash", "-c", TouchScript, "touch", tree, "even");
        var tools = new Dictionary<string, string> { ["TZ"] = "UTC", ["LANG"] = "C.UTF-8", ["MTOOLS_SKIP_CHECK"] = "1" };
        var top = Directory.GetFileSystemEntries(tree).Order(StringComparer.Ordinal).ToArray();
        RunIn(tools, "mcopy", ["-s", "-m", "-i", vfat, .. top, "::/"]);
        RunIn(tools, "mattrib", "-i", vfat, "+r", "::/readonly.txt");
        Expect("vfat", tree);

        // exFAT: through exfat-fuse on a loop device; it keeps whole seconds (odd ones too).
        var exfat = images["exfat"] = Image("exfat", "64M");
        Run("mkfs.exfat", "-L", "fidelity", exfat);
        var loop = Run("losetup", "-f", "--show", exfat).StdOut.Trim();
        loops.Add(loop);
        src = HostMount("exfat");
        RunIn(tools, "mount.exfat-fuse", loop, src);
        Run("bash", "-c", FatScript, "populate", src);
        Run("bash", "-c", TouchScript, "touch", src, "whole");
        Unmount(src);
        RunIn(tools, "mount.exfat-fuse", "-o", "ro", loop, src);
        hostMounts.Add(src);
        Expect("exfat", src);
        Unmount(src);
        Run("losetup", "-d", loop);
        loops.Remove(loop);

        // NTFS: ntfs-3g, as the VM mounts it (alternate data streams as user.* xattrs); times in 100 ns units.
        var ntfs = images["ntfs"] = Image("ntfs", "64M");
        Run("mkntfs", "-q", "-F", "-Q", "-L", "fidelity", ntfs);
        src = HostMount("ntfs");
        Run("ntfs-3g", "-o", "streams_interface=xattr", ntfs, src);
        Run("bash", "-c", NtfsScript, "populate", src);
        Run("bash", "-c", TouchScript, "touch", src, "ns");
        Unmount(src);
        Run("ntfs-3g", "-o", "ro,norecover,nosuid,nodev,noexec,streams_interface=xattr", ntfs, src);
        hostMounts.Add(src);
        Expect("ntfs", src);
        Unmount(src);

        var store = Dir.Combine("store");
        ProcessRunner.Run(RepoPaths.Cli, ["backup", "--store", store, "--group", "vm/201", "--time", Time,
                .. Disks.Select(d => $"{d.Value}={images[d.Key]}")], Long, environment: env)
            .EnsureSuccess("backup");
        ProcessRunner.Run(RepoPaths.Cli, ["mount", store, mnt], TimeSpan.FromSeconds(120), environment: env).EnsureSuccess("mount");
    }

    public void Dispose()
    {
        if (MountTable.IsMounted(mnt))
        {
            ProcessRunner.Run(RepoPaths.Cli, ["umount", mnt], TimeSpan.FromSeconds(120), environment: env);
            if (MountTable.IsMounted(mnt))
            {
                MountTable.LazyUnmount(mnt);
            }
        }

        foreach (var m in hostMounts.ToList())
        {
            ProcessRunner.Run("umount", [m], Long);
            if (MountTable.IsMounted(m))
            {
                MountTable.LazyUnmount(m);
            }
        }

        foreach (var l in loops)
        {
            ProcessRunner.Run("losetup", ["-d", l], Long);
        }

        // .NET cannot delete names that are not UTF-8 (the copies have some).
        ProcessRunner.Run("rm", ["-rf", "--one-file-system", Dir.Path], Long);
        Dir.Dispose();
    }
}
