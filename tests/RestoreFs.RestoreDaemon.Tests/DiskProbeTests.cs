using System.Buffers.Binary;
using RestoreFs.RestoreDaemon.Disks;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>Superblock probes against images made by the real mkfs tools (plain files, no root needed except the PV).</summary>
public sealed class DiskProbeTests : IDisposable
{
    private readonly TempDirectory dir = new("restorefs-probe");

    public void Dispose() => dir.Dispose();

    private string Image(string name, long size) => DiskTools.Sparse(dir.Combine(name), size);

    private static string? Detect(string image)
    {
        using var s = File.OpenRead(image);
        return FsProbe.Detect(s, 0, s.Length);
    }

    [Theory]
    [InlineData("ext2", "mkfs.ext2")]
    [InlineData("ext3", "mkfs.ext3")]
    [InlineData("ext4", "mkfs.ext4")]
    public void Ext_flavours_are_told_apart(string expected, string mkfs)
    {
        var img = Image(expected, 16 << 20);
        DiskTools.Run(mkfs, "-q", "-F", img);
        Assert.Equal(expected, Detect(img));
    }

    [Fact]
    public void Xfs_btrfs_exfat_ntfs_and_swap_are_recognised()
    {
        var xfs = Image("xfs", 320 << 20);
        DiskTools.Run("mkfs.xfs", "-q", "-f", xfs);
        Assert.Equal("xfs", Detect(xfs));

        var btrfs = Image("btrfs", 128 << 20);
        DiskTools.Run("mkfs.btrfs", "-q", "-f", btrfs);
        Assert.Equal("btrfs", Detect(btrfs));

        var exfat = Image("exfat", 16 << 20);
        DiskTools.Run("mkfs.exfat", exfat);
        Assert.Equal("exfat", Detect(exfat));

        var ntfs = Image("ntfs", 16 << 20);
        DiskTools.Run("mkntfs", "-q", "-F", "-Q", ntfs);
        Assert.Equal("ntfs", Detect(ntfs));

        var swap = Image("swap", 8 << 20);
        DiskTools.Run("mkswap", swap);
        Assert.Equal(FsProbe.Swap, Detect(swap));
        Assert.True(FsProbe.IsContainer(FsProbe.Swap));
    }

    [Theory]
    [InlineData("reiserfs", 64, "mkfs.reiserfs", "-q", "-ff")]
    [InlineData("jfs", 32, "mkfs.jfs", "-q")]
    [InlineData("f2fs", 64, "mkfs.f2fs", "-q")]
    public void Older_linux_file_systems_are_recognised_and_their_modules_load_on_demand(string expected, int mib, string mkfs, params string[] args)
    {
        var img = Image(expected, (long)mib << 20);
        DiskTools.Run(mkfs, [.. args, img]);
        Assert.Equal(expected, Detect(img));
        Assert.False(FsProbe.IsContainer(expected));
        Assert.True(FsProbe.LoadsOnDemand(FsProbe.KernelType(expected)));
    }

    [Theory]
    [InlineData("12", 4)]
    [InlineData("16", 32)]
    [InlineData("32", 64)]
    public void Fat12_16_and_32_are_vfat(string bits, int megabytes)
    {
        var img = Image("fat" + bits, (long)megabytes << 20);
        DiskTools.Run("mkfs.vfat", "-F", bits, img);
        Assert.Equal("vfat", Detect(img));
    }

    [Fact]
    public void An_lvm_physical_volume_is_recognised_by_its_label()
    {
        Requires.Root();
        var img = Image("pv", 16 << 20);
        var loop = DiskTools.AttachLoop(img, readOnly: false);
        try
        {
            var config = $"devices {{ filter = [ \"a|^{loop}$|\", \"r|.*|\" ] use_devicesfile = 0 obtain_device_list_from_udev = 0 }} backup {{ backup = 0 archive = 0 }}";
            DiskTools.Run("lvm", "pvcreate", "-q", "--config", config, loop);
        }
        finally
        {
            DiskTools.DetachLoop(loop);
        }

        Assert.Equal(FsProbe.LvmMember, Detect(img));
    }

    [Fact]
    public void A_luks_container_is_recognised_and_not_mountable()
    {
        var img = Image("luks", 32 << 20);
        ProcessRunner.Run(Requires.Tool("cryptsetup"),
            ["luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", "-", img],
            TimeSpan.FromMinutes(1), stdin: "secret"u8.ToArray()).EnsureSuccess("cryptsetup luksFormat");
        Assert.Equal(FsProbe.Luks, Detect(img));
        Assert.Contains("encrypted", FsProbe.ContainerReason(FsProbe.Luks));

        // The UUID the passphrase file names it by: the one cryptsetup reports, read from the header.
        var uuid = ProcessRunner.Run(Requires.Tool("cryptsetup"), ["luksUUID", img], TimeSpan.FromMinutes(1)).EnsureSuccess("luksUUID").StdOut.Trim();
        var header = new byte[512];
        using (var f = File.OpenRead(img))
        {
            f.ReadExactly(header);
        }

        Assert.Equal(uuid, FsProbe.LuksUuid(header));
        header[0] = (byte)'X';
        Assert.Null(FsProbe.LuksUuid(header));
    }

    /// <summary>The first sector of a BitLocker volume as Windows 7 and later write it: an NTFS-style boot sector whose OEM
    /// name is the BitLocker signature, with BitLocker's volume GUID at 0xA0. Written by hand from that layout: no tool
    /// here writes BitLocker.</summary>
    internal static byte[] BitLockerBootSector()
    {
        var b = new byte[4096];
        b[0] = 0xEB;
        b[1] = 0x58;
        b[2] = 0x90;
        "-FVE-FS-"u8.CopyTo(b.AsSpan(3));
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(0x0B), 512);
        b[0x0D] = 8;
        b[0x15] = 0xF8;
        new Guid("4967d63b-2e29-4ad8-8399-f6a339e3d001").TryWriteBytes(b.AsSpan(0xA0));
        b[510] = 0x55;
        b[511] = 0xAA;
        return b;
    }

    [Fact]
    public void A_bitlocker_volume_is_named_and_not_mountable()
    {
        var img = Image("bitlocker", 8 << 20);
        DiskTools.WriteAt(img, 0, BitLockerBootSector());
        Assert.Equal(FsProbe.BitLocker, Detect(img));
        Assert.True(FsProbe.IsContainer(FsProbe.BitLocker));
        Assert.Contains("BitLocker", FsProbe.ContainerReason(FsProbe.BitLocker), StringComparison.Ordinal);

        // The same sector with NTFS's own OEM name is an NTFS.
        var ntfs = BitLockerBootSector();
        "NTFS    "u8.CopyTo(ntfs.AsSpan(3));
        DiskTools.WriteAt(img, 0, ntfs);
        Assert.Equal("ntfs", Detect(img));
    }

    [Fact]
    public void Iso9660_is_recognised_by_its_volume_descriptor()
    {
        // No mkisofs/xorriso here: the primary volume descriptor at sector 16 as ECMA-119 lays it out.
        var img = Image("iso", 1 << 20);
        var pvd = new byte[2048];
        pvd[0] = 1;
        "CD001"u8.CopyTo(pvd.AsSpan(1));
        pvd[6] = 1;
        using (var f = new FileStream(img, FileMode.Open, FileAccess.Write))
        {
            f.Position = 16 * 2048;
            f.Write(pvd);
        }

        Assert.Equal("iso9660", Detect(img));
    }

    [Fact]
    public void Zeros_random_bytes_and_partition_tables_are_no_file_system()
    {
        Assert.Null(Detect(Image("zeros", 1 << 20)));

        var random = dir.Combine("random");
        File.WriteAllBytes(random, RandomBytes(1 << 20, 7));
        Assert.Null(Detect(random));

        var gpt = Image("gpt", 64 << 20);
        DiskTools.Run("sgdisk", "-n", "1:2048:+8M", "-t", "1:8300", gpt);
        Assert.Null(Detect(gpt));

        var mbr = Image("mbr", 64 << 20);
        ProcessRunner.Run(Requires.Tool("sfdisk"), ["-q", mbr], stdin: "label: dos\n,8M,83\n,8M,c\n"u8.ToArray()).EnsureSuccess("sfdisk");
        Assert.Null(Detect(mbr));

        Assert.Null(FsProbe.Detect(new byte[100]));
    }

    [Fact]
    public void A_fat_volume_with_a_broken_bios_parameter_block_is_not_vfat()
    {
        var img = Image("badfat", 32 << 20);
        DiskTools.Run("mkfs.vfat", "-F", "16", img);
        var bytes = File.ReadAllBytes(img);
        bytes[0x10] = 0; // number of FATs
        File.WriteAllBytes(img, bytes);
        Assert.Null(Detect(img));
    }

    [Fact]
    public void Mount_data_never_lets_a_journal_be_replayed()
    {
        Assert.Equal(["noload"], FsProbe.MountData("ext4"));
        Assert.Equal(["noload"], FsProbe.MountData("ext3"));
        Assert.Equal(["norecovery"], FsProbe.MountData("xfs"));
        Assert.All(FsProbe.MountData("btrfs"), d => Assert.Contains("nologreplay", d));
        Assert.Equal("utf8", FsProbe.MountData("vfat")[0]);
        Assert.Equal("iocharset=utf8", FsProbe.MountData("exfat")[0]);
        Assert.Equal("iocharset=utf8", FsProbe.MountData("ntfs3")[0]);
    }

    internal static byte[] RandomBytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }
}
