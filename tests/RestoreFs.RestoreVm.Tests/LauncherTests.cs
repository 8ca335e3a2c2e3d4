using Microsoft.Extensions.Logging.Abstractions;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreVm.Tests;

/// <summary>QEMU's command line and the state map, without a VM.</summary>
public sealed class LauncherTests
{
    [Fact]
    public void Microvm_command_line_has_disks_serials_channel_and_no_ticket()
    {
        var launch = new VmLaunch("store:vm/1/2026-01-01T00:00:00Z", "/img", "/vm/initrd", "/vm",
            [new VmDisk("drive-scsi0", "/run/nbd.sock", "vm/1/20260101T000000Z/drive-scsi0.img"), new VmDisk("a,b", "/run/nbd.sock", "x")],
            VmMachine.Microvm, "tcg", 2_500_000, IdleTimeoutSeconds: 42);
        var args = QemuLauncher.Arguments(launch);
        var line = string.Join(' ', args);
        Assert.Contains("-machine microvm,pit=off,pic=off,rtc=on -accel tcg,tb-size=128 -cpu max", line);
        Assert.Contains("-kernel /img/vmlinux -initrd /vm/initrd", line);
        Assert.Contains("-drive file=nbd+unix:///vm/1/20260101T000000Z/drive-scsi0.img?socket=/run/nbd.sock,format=raw,if=none,readonly=on,id=drive0", line);
        Assert.Contains("-device virtio-blk-device,drive=drive0,serial=drive-scsi0", line);
        Assert.Contains("serial=a,,b", line); // QEMU's comma escape
        Assert.Contains("-chardev socket,id=channel,path=/vm/channel.sock,server=on,wait=off", line);
        Assert.Contains("-device virtserialport,chardev=channel,name=org.restorefs.0", line);
        Assert.Contains("tsc_early_khz=2500000", line);
        Assert.Contains(" tsc=reliable", line); // TCG: a real clock source instead of jiffies
        Assert.Contains("restorefs.idle=42", line);
        Assert.Contains(QemuLauncher.Marker, line);
        Assert.Equal("256", args[args.ToList().IndexOf("-m") + 1]);

        var pc = string.Join(' ', QemuLauncher.Arguments(launch with { Machine = VmMachine.Pc, Accelerator = "kvm", VsockCid = 12 }));
        Assert.Contains("-machine pc -accel kvm -cpu host", pc);
        Assert.Contains("-kernel /img/vmlinuz", pc);
        Assert.Contains("virtio-blk-pci,drive=drive0", pc);
        Assert.Contains("vhost-vsock-pci,guest-cid=12", pc);
        Assert.DoesNotContain("chardev", pc);
        Assert.DoesNotContain("tsc=reliable", pc); // KVM has its own clock
    }

    [Fact]
    public void Overlay_disks_are_attached_writable_with_replay_on_and_guest_keys_raise_memory_and_travel_in_the_initramfs()
    {
        var launch = new VmLaunch("s:vm/1/t", "/img", "/vm/initrd", "/vm",
            [new VmDisk("drive-scsi0", "/run/nbd.sock", "vm/1/t/drive-scsi0.img@abc", Writable: true)], VmMachine.Microvm, "tcg", 0);
        var args = QemuLauncher.Arguments(launch);
        var line = string.Join(' ', args);
        Assert.Contains("format=raw,if=none,readonly=off,id=drive0", line);
        Assert.Contains("restorefs.replay=1", line);
        Assert.Equal("256", args[args.ToList().IndexOf("-m") + 1]);
        var readOnly = string.Join(' ', QemuLauncher.Arguments(launch with { Disks = [new VmDisk("d", "/s", "e")] }));
        Assert.DoesNotContain("restorefs.replay", readOnly);
        Assert.Contains("readonly=on", readOnly);

        var keyed = QemuLauncher.Arguments(launch with { GuestKeys = true });
        Assert.Equal(QemuLauncher.GuestKeyMemoryMiB.ToString(System.Globalization.CultureInfo.InvariantCulture), keyed[keyed.ToList().IndexOf("-m") + 1]);
        Assert.DoesNotContain(keyed, a => a.Contains("guest-keys", StringComparison.Ordinal));

        var archive = Initramfs.BuildTicketArchive("ticket"u8, "* cGFzcw==\n"u8.ToArray());
        var text = System.Text.Encoding.ASCII.GetString(archive);
        Assert.Contains("guest-keys\0", text);
        Assert.Contains("* cGFzcw==\n", text);
        Assert.Equal(0, archive.Length % 512);
        Assert.DoesNotContain("guest-keys", System.Text.Encoding.ASCII.GetString(Initramfs.BuildTicketArchive("ticket"u8)));
    }

    [Fact]
    public async Task State_map_survives_corruption_and_serialises_changes()
    {
        using var dir = new TempDirectory("restorefs-map");
        var map = new VmStateMap(dir.Path, NullLogger.Instance);
        await File.WriteAllTextAsync(map.FilePath, "{ not json");
        Assert.Empty(map.Read()); // an unlocked read leaves the file where it is: only a lock holder sets it aside
        Assert.False(File.Exists(map.FilePath + ".corrupt"));
        Assert.Empty(await map.ReadLockedAsync(CancellationToken.None));
        Assert.True(File.Exists(map.FilePath + ".corrupt"));

        // 20 concurrent writers, each adding one entry: none is lost.
        await Task.WhenAll(Enumerable.Range(0, 20).Select(i => Task.Run(() => map.UpdateAsync(entries =>
        {
            entries.Add(new VmEntry { Name = $"vm{i}", Pid = i, Channel = "serial:x", Ticket = "t", Directory = "d", Started = 0, Disks = [] });
            return 0;
        }, CancellationToken.None))));
        Assert.Equal(20, map.Read().Count);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(map.FilePath));
    }

    [Fact]
    public async Task Cleanup_drops_entries_whose_process_is_not_a_restore_vm()
    {
        using var dir = new TempDirectory("restorefs-map2");
        await using var manager = new RestoreVmManager(new RestoreVmOptions { RuntimeDirectory = dir.Path, ImageDirectory = dir.Path }, NullLoggerFactory.Instance);
        // A live process that is not one of our VMs (a stand-in `sleep`): its pid must never be trusted or killed.
        using var sleep = System.Diagnostics.Process.Start("sleep", "30");
        await manager.Map.UpdateAsync(e =>
        {
            e.Add(new VmEntry { Name = "gone", Pid = sleep.Id, Channel = "serial:x", Ticket = "t", Directory = dir.Combine("vm-gone"), Started = 0, Disks = [] });
            return 0;
        }, CancellationToken.None);
        await manager.CleanupAsync(CancellationToken.None);
        Assert.Empty(manager.Map.Read());
        Assert.False(sleep.HasExited);
        sleep.Kill();
    }
}
