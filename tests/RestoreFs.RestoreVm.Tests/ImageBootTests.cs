using RestoreFs.TestSupport;

namespace RestoreFs.RestoreVm.Tests;

/// <summary>The restore image from make restore-image: what it holds (booting it is <see cref="VmTests"/>).</summary>
public class ImageBootTests
{
    [Fact]
    public void The_image_holds_the_kernel_the_daemon_with_its_libraries_lvm_and_the_modules()
    {
        var dir = VmFixture.ImageDirectory;
        var vmlinux = File.ReadAllBytes(Path.Combine(dir, "vmlinux"));
        Assert.Equal([0x7f, (byte)'E', (byte)'L', (byte)'F'], vmlinux[..4]);
        Assert.Equal(64, File.ReadAllText(Path.Combine(dir, "manifest")).Trim().Length);
        var listing = ProcessRunner.Shell($"lz4 -dc '{Path.Combine(dir, "initramfs.img")}' | cpio -t --quiet").EnsureSuccess("list the initramfs").StdOut
            .Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToHashSet();
        foreach (var file in new[] { "init", "restorefs-daemon", "sbin/lvm", "sbin/pvs", "bin/ntfs-3g", "bin/busybox", "lib64/ld-linux-x86-64.so.2", "etc/modules.early", "etc/modules.late" })
        {
            Assert.Contains(file, listing);
        }

        foreach (var module in new[] { "ext4.ko", "xfs.ko", "btrfs.ko", "vfat.ko", "exfat.ko", "dm-mod.ko", "virtio_blk.ko", "virtio_console.ko", "crc32c_generic.ko" })
        {
            Assert.Contains(listing, f => f.EndsWith("/" + module, StringComparison.Ordinal));
        }

        Assert.Contains(listing, f => f.StartsWith("lib/x86_64-linux-gnu/libdevmapper.so", StringComparison.Ordinal));
    }

    [Fact]
    public void A_second_build_with_the_same_inputs_is_a_cache_hit()
    {
        var daemon = Path.Combine(RepoPaths.Root, "build", "daemon", "restorefs-daemon");
        var result = ProcessRunner.Run("bash", [RepoPaths.Script("build-restore-image.sh"), VmFixture.ImageDirectory, daemon], TimeSpan.FromMinutes(5))
            .EnsureSuccess("build-restore-image.sh");
        Assert.Contains("up to date", result.StdErr);
    }
}
