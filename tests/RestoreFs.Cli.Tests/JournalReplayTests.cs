using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// Issue 13, journal replay: ext4 and xfs images taken while mounted, with changes only in the journal (written, then
/// fsync'ed — a journal commit —, the log flushed and the file system shut down, and the device copied while still
/// mounted, so nothing was checkpointed). The host first checks the recipe: a mount without replay shows the old state,
/// one with replay the new state. Then files/ (real restore VM, real NBD, real FUSE) shows the replayed state,
/// <c>--no-replay</c> the old one, and the datastore is byte-identical before and after.
/// </summary>
public sealed class JournalReplayTests : IDisposable
{
    private const string Time = "2026-03-03T00:00:00Z";
    private static readonly TimeSpan Long = TimeSpan.FromMinutes(10);
    private readonly TempDirectory dir = new("restorefs-replay");

    /// <summary>$1 image, $2 ext4|xfs, $3 mount point. Leaves $1 as the device was while mounted after the journal commit.</summary>
    private const string MakeScript = """
set -e
img=$1; kind=$2; m=$3
if [ "$kind" = ext4 ]; then truncate -s 64M "$img"; mkfs.ext4 -q -F "$img"; else truncate -s 320M "$img"; mkfs.xfs -q -f "$img"; fi
mount -o loop "$img" "$m"
echo old > "$m/keep"; echo gone > "$m/deleted"; echo v1 > "$m/rewritten"
head -c 300000 /dev/urandom > "$m/big-old"
umount "$m"
mount -o loop "$img" "$m"
echo new > "$m/newfile"; rm "$m/deleted"; echo v2-rewritten > "$m/rewritten"
mkdir "$m/dir"; echo x > "$m/dir/y"
head -c 700000 /dev/urandom > "$m/big-new"
mv "$m/big-old" "$m/dir/big-moved"
sync "$m/newfile" "$m/rewritten" "$m/dir/y" "$m/big-new" "$m/dir/big-moved" "$m/dir" "$m"
xfs_io -x -c "shutdown -f" "$m"
cp --sparse=always "$img" "$img.snap"
umount "$m"
mv "$img.snap" "$img"
""";

    /// <summary>Names, types and sha256 of everything below $1 (lost+found left out), sorted.</summary>
    private const string ManifestScript = """
import os, sys, hashlib
root = sys.argv[1]
rows = []
for top, dirs, files in os.walk(root):
    for name in dirs + files:
        p = os.path.join(top, name)
        rel = os.path.relpath(p, root)
        if rel.split('/')[0] == 'lost+found':
            continue
        if os.path.isfile(p) and not os.path.islink(p):
            rows.append(rel + ' f ' + hashlib.sha256(open(p, 'rb').read()).hexdigest())
        else:
            rows.append(rel + ' d')
print('\n'.join(sorted(rows)))
""";

    private const string StoreHashScript = """
import os, sys, hashlib
h = hashlib.sha256()
root = sys.argv[1]
for top, dirs, files in sorted(os.walk(root)):
    dirs.sort()
    for name in sorted(files):
        p = os.path.join(top, name)
        st = os.lstat(p)
        h.update(os.path.relpath(p, root).encode() + b'\0' + str(st.st_size).encode() + b'\0' + str(st.st_mtime_ns).encode() + b'\0')
        h.update(open(p, 'rb').read())
print(h.hexdigest())
""";

    private ProcessResult Run(string tool, params string[] args) =>
        ProcessRunner.Run(Requires.Tool(tool), args, Long).EnsureSuccess(tool + " " + string.Join(' ', args));

    private string Manifest(string root) => ProcessRunner.Run("python3", ["-c", ManifestScript, root], Long).EnsureSuccess("manifest " + root).StdOut;

    /// <summary>The image as a host mount sees it: without replay (ro, noload/norecovery, read-only loop) or with it
    /// (a scratch copy on a writable loop device, mounted ro: the replay writes the copy only).</summary>
    private string HostView(string image, string kind, bool replay)
    {
        var m = dir.Combine($"host-{kind}-{replay}");
        Directory.CreateDirectory(m);
        var source = image;
        if (replay)
        {
            source = dir.Combine($"scratch-{kind}.img");
            Run("cp", "--sparse=always", image, source);
        }

        var loop = Run("losetup", replay ? ["-f", "--show", source] : ["-r", "-f", "--show", source]).StdOut.Trim();
        try
        {
            Run("mount", "-o", replay ? "ro" : kind == "ext4" ? "ro,noload" : "ro,norecovery", loop, m);
            try
            {
                return Manifest(m);
            }
            finally
            {
                Run("umount", m);
            }
        }
        finally
        {
            ProcessRunner.Run("losetup", ["-d", loop], Long);
        }
    }

    [Fact]
    public void Files_shows_the_replayed_journal_and_no_replay_the_old_state_and_the_store_is_not_written()
    {
        Requires.Root();
        Requires.Tool("qemu-system-x86_64");
        Requires.Tool("xfs_io");
        var m = dir.Combine("m");
        Directory.CreateDirectory(m);
        var images = new Dictionary<string, string> { ["ext4"] = dir.Combine("ext4.img"), ["xfs"] = dir.Combine("xfs.img") };
        var expectedOld = new Dictionary<string, string>();
        var expectedNew = new Dictionary<string, string>();
        foreach (var (kind, image) in images)
        {
            Run("bash", "-c", MakeScript, "make", image, kind, m);
            expectedOld[kind] = HostView(image, kind, replay: false);
            expectedNew[kind] = HostView(image, kind, replay: true);
            // The recipe must leave the change in the journal only: the two host views differ as intended.
            Assert.Contains("deleted f", expectedOld[kind]);
            Assert.DoesNotContain("newfile", expectedOld[kind]);
            Assert.Contains("newfile f", expectedNew[kind]);
            Assert.DoesNotContain("deleted", expectedNew[kind]);
            Assert.Contains("dir/big-moved f", expectedNew[kind]);
            Assert.Contains("big-new f", expectedNew[kind]);
        }

        var env = new Dictionary<string, string> { ["XDG_RUNTIME_DIR"] = dir.Combine("run") };
        Directory.CreateDirectory(dir.Combine("run"));
        var store = dir.Combine("store");
        ProcessRunner.Run(RepoPaths.Cli, ["backup", "--store", store, "--group", "vm/300", "--time", Time,
            $"drive-scsi0={images["ext4"]}", $"drive-scsi1={images["xfs"]}"], Long, environment: env).EnsureSuccess("backup");
        var storeHash = StoreHash(store);

        var disks = new Dictionary<string, string> { ["ext4"] = "drive-scsi0.img", ["xfs"] = "drive-scsi1.img" };
        foreach (var replay in new[] { true, false })
        {
            var mnt = dir.Combine(replay ? "mnt-replay" : "mnt-noreplay");
            Directory.CreateDirectory(mnt);
            ProcessRunner.Run(RepoPaths.Cli, ["mount", store, mnt, .. replay ? Array.Empty<string>() : ["--no-replay"]], TimeSpan.FromSeconds(120), environment: env)
                .EnsureSuccess("mount");
            try
            {
                foreach (var (kind, disk) in disks)
                {
                    var raw = Path.Combine(mnt, "snapshots", "vm/300", Time, "files", disk, "raw");
                    var expected = replay ? expectedNew[kind] : expectedOld[kind];
                    Assert.Equal(expected, Manifest(raw));
                    // Read twice: the second time file maps (host reads of the image) may serve what the listing mapped.
                    Assert.Equal(expected, Manifest(raw));
                }
            }
            finally
            {
                ProcessRunner.Run(RepoPaths.Cli, ["umount", mnt], TimeSpan.FromSeconds(120), environment: env);
                if (MountTable.IsMounted(mnt))
                {
                    MountTable.LazyUnmount(mnt);
                }
            }

            Assert.Equal(storeHash, StoreHash(store));
        }

        // The overlays lived in the VMs' private directories, which are gone with the VMs.
        var vmDirs = Path.Combine(dir.Combine("run"), "restorefs", "vm");
        Assert.True(!Directory.Exists(vmDirs) || Directory.GetFileSystemEntries(vmDirs).Length == 0,
            "restore VM directories (and their overlays) are left behind");
    }

    internal static string StoreHash(string store) =>
        ProcessRunner.Run("python3", ["-c", StoreHashScript, store], Long).EnsureSuccess("store hash").StdOut.Trim();

    public void Dispose() => dir.Dispose();
}
