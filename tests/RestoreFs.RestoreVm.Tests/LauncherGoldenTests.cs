namespace RestoreFs.RestoreVm.Tests;

/// <summary>QEMU's whole command line, argument by argument, for the default and the fallback launch.</summary>
public sealed class LauncherGoldenTests
{
    private static readonly VmDisk[] TwoDisks =
    [
        new("drive-scsi0", "/run/rfs/nbd.sock", "vm/100/2026-01-01T00:00:00Z/drive-scsi0.img"),
        new("drive-virtio1", "/run/rfs/nbd.sock", "vm/100/2026-01-01T00:00:00Z/drive-virtio1.img"),
    ];

    [Fact]
    public void Microvm_under_tcg_with_virtio_serial()
    {
        var launch = new VmLaunch("store:vm/100/2026-01-01T00:00:00Z", "/img", "/run/rfs/vm/1/initramfs-x.img", "/run/rfs/vm/1", TwoDisks,
            VmMachine.Microvm, "tcg", 2_100_000);
        string[] expected =
        [
            "-name", "restorefs-vm,process=restorefs-vm",
            "-machine", "microvm,pit=off,pic=off,rtc=on",
            "-accel", "tcg,tb-size=128",
            "-cpu", "max",
            "-smp", "2",
            "-m", "256",
            "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none", "-monitor", "none",
            "-kernel", "/img/vmlinux",
            "-initrd", "/run/rfs/vm/1/initramfs-x.img",
            "-append", "console=ttyS0 panic=-1 cryptomgr.notests=1 quiet tsc_early_khz=2100000 tsc=reliable mitigations=off restorefs.idle=600 restorefs.channel=serial",
            "-serial", "file:/run/rfs/vm/1/console.log",
            "-device", "virtio-rng-device",
            "-drive", "file=nbd+unix:///vm/100/2026-01-01T00%3A00%3A00Z/drive-scsi0.img?socket=/run/rfs/nbd.sock,format=raw,if=none,readonly=on,id=drive0",
            "-device", "virtio-blk-device,drive=drive0,serial=drive-scsi0",
            "-drive", "file=nbd+unix:///vm/100/2026-01-01T00%3A00%3A00Z/drive-virtio1.img?socket=/run/rfs/nbd.sock,format=raw,if=none,readonly=on,id=drive1",
            "-device", "virtio-blk-device,drive=drive1,serial=drive-virtio1",
            "-chardev", "socket,id=channel,path=/run/rfs/vm/1/channel.sock,server=on,wait=off",
            "-device", "virtio-serial-device",
            "-device", "virtserialport,chardev=channel,name=org.restorefs.0",
            "-daemonize", "-pidfile", "/run/rfs/vm/1/qemu.pid",
        ];
        Assert.Equal(expected, QemuLauncher.Arguments(launch));
        Assert.True(QemuLauncher.IsVmCommandLine(["qemu-system-x86_64", .. expected], "/run/rfs/vm/1"));
        Assert.False(QemuLauncher.IsVmCommandLine(["qemu-system-x86_64", .. expected], "/run/rfs/vm/2"));
    }

    [Fact]
    public void Pc_fallback_under_kvm_with_vsock_and_debug()
    {
        var launch = new VmLaunch("store:vm/100/2026-01-01T00:00:00Z", "/img", "/vm/initrd", "/vm", TwoDisks[..1], VmMachine.Pc, "kvm", 0,
            VsockCid: 1010, Debug: true, IdleTimeoutSeconds: 30);
        string[] expected =
        [
            "-name", "restorefs-vm,process=restorefs-vm",
            "-machine", "pc",
            "-accel", "kvm",
            "-cpu", "host",
            "-smp", "1",
            "-m", "1024",
            "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none", "-monitor", "none",
            "-kernel", "/img/vmlinuz",
            "-initrd", "/vm/initrd",
            "-append", "console=ttyS0 panic=-1 cryptomgr.notests=1 debug restorefs.idle=30 restorefs.channel=vsock",
            "-serial", "file:/vm/console.log",
            "-device", "virtio-rng-pci",
            "-drive", "file=nbd+unix:///vm/100/2026-01-01T00%3A00%3A00Z/drive-scsi0.img?socket=/run/rfs/nbd.sock,format=raw,if=none,readonly=on,id=drive0",
            "-device", "virtio-blk-pci,drive=drive0,serial=drive-scsi0",
            "-device", "vhost-vsock-pci,guest-cid=1010,disable-legacy=on",
            "-daemonize", "-pidfile", "/vm/qemu.pid",
        ];
        Assert.Equal(expected, QemuLauncher.Arguments(launch));
    }

    [Fact]
    public void Memory_follows_pbs_steps_by_disk_count()
    {
        Assert.Equal(256, QemuLauncher.MemoryMiB(1, false));
        Assert.Equal(256, QemuLauncher.MemoryMiB(9, false));
        Assert.Equal(320, QemuLauncher.MemoryMiB(10, false));
        Assert.Equal(448, QemuLauncher.MemoryMiB(20, false));
        Assert.Equal(1024, QemuLauncher.MemoryMiB(3, true));
    }
}
