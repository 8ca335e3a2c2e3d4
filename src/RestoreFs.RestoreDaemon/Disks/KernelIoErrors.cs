using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using RestoreFs.RestoreDaemon.Native;

namespace RestoreFs.RestoreDaemon.Disks;

/// <summary>
/// Disk read errors the VM's kernel reported (<c>/dev/kmsg</c>: "I/O error, dev vda, sector N"), in order. A file
/// system may answer a directory whose blocks could not be read (a damaged chunk in the backup) with fewer entries
/// or none instead of an error; a listing during which the kernel failed to read the volume's part of the disk must
/// therefore not be trusted. The kernel names the whole disk and its absolute sector, also for partitions and LVs.
/// </summary>
internal sealed partial class KernelIoErrors : IDisposable
{
    private readonly int fd;
    private readonly object gate = new();
    private readonly List<(string Disk, long Offset)> errors = [];

    private KernelIoErrors(int fd) => this.fd = fd;

    /// <summary>Watches the kernel log from now on; null when it cannot be read.</summary>
    public static KernelIoErrors? Open(string path = "/dev/kmsg")
    {
        var fd = LibC.OpenPath(path, LibC.O_RDONLY | LibC.O_NONBLOCK | LibC.O_CLOEXEC);
        if (fd < 0)
        {
            return null;
        }

        LibC.LSeek(fd, 0, LibC.SEEK_END); // only what happens from now on
        return new KernelIoErrors(fd);
    }

    /// <summary>A position to ask <see cref="Since"/> about later.</summary>
    public int Mark()
    {
        lock (gate)
        {
            Drain();
            return errors.Count;
        }
    }

    /// <summary>The disk read errors reported since <paramref name="mark"/>: disk name (<c>vda</c>) and byte offset.</summary>
    public IReadOnlyList<(string Disk, long Offset)> Since(int mark)
    {
        lock (gate)
        {
            Drain();
            return errors.Skip(mark).ToList();
        }
    }

    /// <summary>Whether an error since <paramref name="mark"/> lies on <paramref name="volume"/>'s part of its disk.</summary>
    public string? OnVolume(int mark, VolumeInfo volume, string diskDevice)
    {
        var disk = Path.GetFileName(diskDevice);
        foreach (var (name, offset) in Since(mark))
        {
            if (name == disk && (volume.Placement is not { } spans || spans.Any(s => offset >= s.DiskOffset && offset < s.DiskOffset + s.Length)))
            {
                return $"the disk could not be read at byte {offset} of {diskDevice} (a damaged or missing chunk in the backup)";
            }
        }

        return null;
    }

    private void Drain()
    {
        var buffer = new byte[8192];
        while (true)
        {
            var n = LibC.Read(fd, buffer);
            if (n == -LibC.EPIPE)
            {
                continue; // records were overwritten before we read them: go on with the next
            }

            if (n <= 0)
            {
                return; // EAGAIN: nothing more now
            }

            // One record per read from /dev/kmsg: "<prio>,<seq>,<usec>,<flags>;<message>\n" (then " KEY=value"
            // continuation lines); a plain file (tests) gives several at once.
            foreach (var line in Encoding.UTF8.GetString(buffer, 0, n).Split('\n'))
            {
                var m = IoError().Match(line);
                if (m.Success && long.TryParse(m.Groups[2].Value, NumberStyles.None, CultureInfo.InvariantCulture, out var sector))
                {
                    errors.Add((m.Groups[1].Value, sector * 512));
                }
            }
        }
    }

    [GeneratedRegex(@";.*I/O error, dev ([A-Za-z0-9_-]+), sector (\d+)")]
    private static partial Regex IoError();

    public void Dispose() => LibC.Close(fd);
}
