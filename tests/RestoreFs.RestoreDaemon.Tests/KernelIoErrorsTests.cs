using RestoreFs.RestoreDaemon.Disks;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>
/// The kernel-log watch that tells a complete listing from one cut short by unreadable disk blocks. A fake kernel
/// log (a plain file in /dev/kmsg's record format) stands in for the VM's: the host's log is not ours to fill.
/// </summary>
public sealed class KernelIoErrorsTests : IDisposable
{
    private readonly TempDirectory dir = new("restorefs-kmsg");

    [Fact]
    public void Errors_after_the_mark_on_the_volumes_part_of_the_disk_count_and_others_do_not()
    {
        var log = dir.Combine("kmsg");
        File.WriteAllText(log, "3,100,7000000,-;I/O error, dev vda, sector 8266 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 2\n");
        using var watch = KernelIoErrors.Open(log)!;
        Assert.NotNull(watch);
        var part1 = new VolumeInfo("d", "part", ["1"], "/dev/vda1", 40 << 20, "ext4") { Placement = [new DiskSpan(0, 1 << 20, 40 << 20)] };
        var part2 = part1 with { Components = ["2"], Placement = [new DiskSpan(0, 41 << 20, 16 << 20)] };
        var mark = watch.Mark();
        Assert.Null(watch.OnVolume(mark, part1, "/dev/vda")); // the error before Open is not news

        File.AppendAllText(log, "6,101,7100000,-;EXT4-fs (vda1): mounted filesystem\n"
            + "3,102,7200000,-;I/O error, dev vdb, sector 8266 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 2\n"
            + "3,103,7300000,-;I/O error, dev vda, sector 90000 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 2\n"
            + " SUBSYSTEM=block\n");
        Assert.Null(watch.OnVolume(mark, part1, "/dev/vda")); // another disk; another partition (sector 90000 = 45 MB)
        Assert.Contains("46080000", watch.OnVolume(mark, part2, "/dev/vda"));
        Assert.Equal(2, watch.Since(mark).Count);

        var later = watch.Mark();
        Assert.Null(watch.OnVolume(later, part2, "/dev/vda"));
        var unplaced = part1 with { Placement = null };
        Assert.NotNull(watch.OnVolume(mark, unplaced, "/dev/vda")); // no known place: any error on its disk counts
    }

    public void Dispose() => dir.Dispose();
}
