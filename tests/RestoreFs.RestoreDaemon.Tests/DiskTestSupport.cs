using System.Runtime.InteropServices;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>A fact that needs the kernel's device-mapper (LVM activation): skipped, saying why, on a kernel without it.</summary>
public sealed class DeviceMapperFactAttribute : FactAttribute
{
    public DeviceMapperFactAttribute()
    {
        if (!DiskTools.DeviceMapperAvailable)
        {
            Skip = "this kernel has no device-mapper (no 'device-mapper' in /proc/misc): LVM volumes cannot be activated here; "
                   + "the restore VM's kernel has dm-mod, so this runs there";
        }
    }
}

/// <summary>
/// A fact that scans this machine's virtio disks (/sys/block/vd*) as the daemon does in the restore VM. Only with
/// RESTOREFS_TEST_VIRTIO_DISKS=1 (a throw-away VM): elsewhere vd* are the machine's own disks, and the scan would read
/// them and activate their LVM volumes.
/// </summary>
public sealed class VirtioDisksFactAttribute : FactAttribute
{
    public VirtioDisksFactAttribute()
    {
        if (Environment.GetEnvironmentVariable("RESTOREFS_TEST_VIRTIO_DISKS") != "1")
        {
            Skip = "guest-mode disk scan: set RESTOREFS_TEST_VIRTIO_DISKS=1 in a throw-away VM with virtio disks "
                   + "(the restore VM tests cover it end to end)";
        }
        else if (!Directory.Exists("/sys/block") || Directory.GetDirectories("/sys/block", "vd*").Length == 0)
        {
            Skip = "no virtio disks (/sys/block/vd*) on this machine";
        }
    }
}

/// <summary>Tools and checks the disk tests share.</summary>
internal static partial class DiskTools
{
    public const int EROFS = 30;

    public static bool DeviceMapperAvailable =>
        File.Exists("/proc/misc") && File.ReadLines("/proc/misc").Any(l => l.TrimEnd().EndsWith(" device-mapper", StringComparison.Ordinal));

    public static bool KernelHas(string fs) =>
        File.ReadLines("/proc/filesystems").Any(l => l.Split('\t', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).LastOrDefault() == fs);

    public static ProcessResult Run(string tool, params string[] args) =>
        ProcessRunner.Run(Requires.Tool(tool), args, TimeSpan.FromMinutes(2)).EnsureSuccess($"{tool} {string.Join(' ', args)}");

    public static ProcessResult TryRun(string tool, params string[] args) =>
        ProcessRunner.Run(Requires.Tool(tool), args, TimeSpan.FromMinutes(2));

    /// <summary>A sparse file of the given size.</summary>
    public static string Sparse(string path, long size)
    {
        using (var f = new FileStream(path, FileMode.Create, FileAccess.Write))
        {
            f.SetLength(size);
        }

        return path;
    }

    /// <summary>Copies <paramref name="source"/> into <paramref name="image"/> at a byte offset.</summary>
    public static void WriteAt(string image, long offset, string source)
    {
        using var src = File.OpenRead(source);
        using var dst = new FileStream(image, FileMode.Open, FileAccess.Write);
        dst.Position = offset;
        src.CopyTo(dst);
    }

    /// <summary>Writes <paramref name="bytes"/> into <paramref name="image"/> at a byte offset.</summary>
    public static void WriteAt(string image, long offset, byte[] bytes)
    {
        using var dst = new FileStream(image, FileMode.Open, FileAccess.Write);
        dst.Position = offset;
        dst.Write(bytes);
    }

    public static string AttachLoop(string image, bool readOnly = true) =>
        Run("losetup", readOnly ? ["-r", "-f", "--show", image] : ["-f", "--show", image]).StdOut.Trim();

    public static void DetachLoop(string loop) => TryRun("losetup", "-d", loop);

    /// <summary>Loop devices whose backing file is <paramref name="file"/> (a loop device itself for partition loops).</summary>
    public static List<string> LoopsOver(string file) =>
        TryRun("losetup", "-j", file).StdOut.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.Split(':')[0]).ToList();

    /// <summary>Mount points at or under <paramref name="root"/> (from /proc/self/mountinfo).</summary>
    public static List<string> MountsUnder(string root)
    {
        var full = Path.GetFullPath(root).TrimEnd('/');
        return File.ReadLines("/proc/self/mountinfo").Select(l => l.Split(' ')[4].Replace("\\040", " ", StringComparison.Ordinal))
            .Where(m => m == full || m.StartsWith(full + "/", StringComparison.Ordinal)).ToList();
    }

    /// <summary>The mount options (field 6 of mountinfo) of a mount point, e.g. "ro,nosuid,nodev,noexec,relatime".</summary>
    public static string MountOptions(string mountPoint)
    {
        var full = Path.GetFullPath(mountPoint).TrimEnd('/');
        return File.ReadLines("/proc/self/mountinfo").Select(l => l.Split(' ')).Last(f => f[4] == full)[5];
    }

    /// <summary>The errno of creating a file (0 when it worked — then the file is removed again).</summary>
    public static int CreateFileErrno(string path)
    {
        var fd = Open(path, 0x41 /* O_WRONLY|O_CREAT */, 0x1A4);
        if (fd >= 0)
        {
            Close(fd);
            File.Delete(path);
            return 0;
        }

        return Marshal.GetLastPInvokeError();
    }

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int Close(int fd);

    public static string Sha256(string file)
    {
        using var s = File.OpenRead(file);
        return Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(s));
    }
}

/// <summary>
/// The disks from scripts/make-test-disks.sh, made once, each on a read-only loop device (as the VM sees its disks:
/// whole disks; this host kernel shows no partitions on them, so the catalog makes loop devices for those).
/// </summary>
public sealed class DiskImagesFixture : IDisposable
{
    public TempDirectory Dir { get; } = new("restorefs-disks");

    public string Images => Dir.Combine("disks");

    public string Expected => Dir.Combine("disks", "expected");

    /// <summary>Image name (multi, bare, garbage, ntfs) → read-only loop device.</summary>
    public Dictionary<string, string> Loops { get; } = [];

    public DiskImagesFixture()
    {
        Requires.Root();
        ProcessRunner.Run("bash", [RepoPaths.Script("make-test-disks.sh"), Images], TimeSpan.FromMinutes(3)).EnsureSuccess("make-test-disks.sh");
        foreach (var name in new[] { "multi", "bare", "garbage", "ntfs" })
        {
            Loops[name] = DiskTools.AttachLoop(Path.Combine(Images, name + ".img"));
        }
    }

    public string Image(string name) => Path.Combine(Images, name + ".img");

    /// <summary>expected/MANIFEST rows of one volume: (type, mode, size, sha256 or target, path).</summary>
    public List<(string Type, string Mode, long Size, string Hash, string Path)> Manifest(string volume) =>
        File.ReadLines(Path.Combine(Expected, "MANIFEST")).Where(l => !l.StartsWith('#')).Select(l => l.Split('\t'))
            .Where(f => f[0] == volume).Select(f => (f[1], f[2], long.Parse(f[3]), f[4], f[5])).ToList();

    public void Dispose()
    {
        foreach (var loop in Loops.Values)
        {
            DiskTools.DetachLoop(loop);
        }

        Dir.Dispose();
    }
}
