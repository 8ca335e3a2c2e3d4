using System.Globalization;
using System.Text;

namespace RestoreFs.RestoreVm;

/// <summary>A disk of the VM: its serial (the archive name without <c>.img.fidx</c>) and the NBD export serving it.</summary>
/// <param name="Writable">The export takes writes (a throwaway overlay of this VM session, for journal replay): the
/// drive is attached read-write. Otherwise it is read-only.</param>
public sealed record VmDisk(string Serial, string NbdSocket, string Export, bool Writable = false);

public enum VmMachine
{
    /// <summary>The uncompressed kernel through its PVH entry on <c>-machine microvm</c>, virtio-mmio devices: fastest.</summary>
    Microvm,

    /// <summary>bzImage on the default pc machine with virtio-pci devices: slower, the fallback.</summary>
    Pc,
}

/// <param name="Accelerator"><c>kvm</c> or <c>tcg</c>.</param>
/// <param name="VsockCid">When set, the channel is vhost-vsock with this guest CID instead of virtio-serial.</param>
public sealed record VmLaunch(
    string Name,
    string ImageDirectory,
    string Initramfs,
    string VmDirectory,
    IReadOnlyList<VmDisk> Disks,
    VmMachine Machine,
    string Accelerator,
    long TscKhz,
    uint? VsockCid = null,
    bool Debug = false,
    int IdleTimeoutSeconds = 600,
    bool GuestKeys = false);

/// <summary>Builds QEMU's command line for a restore VM. The ticket is never on it: it is inside the initramfs copy.</summary>
public static class QemuLauncher
{
    public const string Marker = "restorefs-vm";
    public const string SerialPortName = "org.restorefs.0";

    /// <summary>The daemon's vsock port (PBS's).</summary>
    public const uint VsockPort = 807;

    public static string ChannelSocket(string vmDirectory) => Path.Combine(vmDirectory, "channel.sock");

    public static string ProxySocket(string vmDirectory) => Path.Combine(vmDirectory, "api.sock");

    public static string PidFile(string vmDirectory) => Path.Combine(vmDirectory, "qemu.pid");

    public static string ConsoleLog(string vmDirectory) => Path.Combine(vmDirectory, "console.log");

    /// <summary>RAM as PBS sizes it: 192 MiB below 10 disks, 256 below 20, else 384 (our daemon needs a little more than theirs).</summary>
    public static int MemoryMiB(int disks, bool debug) => debug ? 1024 : disks < 10 ? 256 : disks < 20 ? 320 : 448;

    /// <summary>
    /// RAM of a VM given LUKS passphrases: cryptsetup's argon2 key derivation needs the memory cost the volume was
    /// formatted with (up to 1 GiB). Guest pages are only allocated on the host when touched.
    /// </summary>
    public const int GuestKeyMemoryMiB = 1280;

    public static IReadOnlyList<string> Arguments(VmLaunch l)
    {
        var micro = l.Machine == VmMachine.Microvm;
        var dev = micro ? "device" : "pci";
        var args = new List<string>
        {
            "-name", $"{Marker},process={Marker}",
            // The RTC stays on: without one the guest kernel waits about a second twice at boot for a CMOS clock
            // that never answers (2 s of a 5–8 s cold start under TCG).
            "-machine", micro ? "microvm,pit=off,pic=off,rtc=on" : "pc",
            // TCG's translation cache defaults to 1 GiB of host memory; a small guest needs far less.
            "-accel", l.Accelerator == "tcg" ? "tcg,tb-size=128" : l.Accelerator,
            "-cpu", l.Accelerator == "kvm" ? "host" : "max",
            // Two vCPUs: under TCG QEMU runs them on two host threads (MTTCG), the guest's disk reads and our daemon overlap.
            "-smp", l.Accelerator == "tcg" ? "2" : "1",
            "-m", (l.GuestKeys ? Math.Max(MemoryMiB(l.Disks.Count, l.Debug), GuestKeyMemoryMiB) : MemoryMiB(l.Disks.Count, l.Debug))
                .ToString(CultureInfo.InvariantCulture),
            "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none", "-monitor", "none",
            "-kernel", Path.Combine(l.ImageDirectory, micro ? "vmlinux" : "vmlinuz"),
            "-initrd", l.Initramfs,
            "-append", KernelCommandLine(l),
            "-serial", "file:" + ConsoleLog(l.VmDirectory),
            "-device", $"virtio-rng-{dev}",
        };
        for (var i = 0; i < l.Disks.Count; i++)
        {
            var d = l.Disks[i];
            var uri = $"nbd+unix:///{Uri.EscapeDataString(d.Export).Replace("%2F", "/", StringComparison.Ordinal)}?socket={d.NbdSocket}";
            args.Add("-drive");
            args.Add($"file={Escape(uri)},format=raw,if=none,readonly={(d.Writable ? "off" : "on")},id=drive{i}");
            args.Add("-device");
            args.Add($"virtio-blk-{dev},drive=drive{i},serial={Escape(d.Serial)}");
        }

        if (l.VsockCid is { } cid)
        {
            args.Add("-device");
            args.Add(micro ? $"vhost-vsock-device,guest-cid={cid}" : $"vhost-vsock-pci,guest-cid={cid},disable-legacy=on");
        }
        else
        {
            args.AddRange([
                "-chardev", $"socket,id=channel,path={Escape(ChannelSocket(l.VmDirectory))},server=on,wait=off",
                "-device", $"virtio-serial-{dev}",
                "-device", $"virtserialport,chardev=channel,name={SerialPortName}",
            ]);
        }

        args.AddRange(["-daemonize", "-pidfile", PidFile(l.VmDirectory)]);
        return args;
    }

    public static string KernelCommandLine(VmLaunch l)
    {
        var line = new StringBuilder("console=ttyS0 panic=-1 cryptomgr.notests=1 ");
        line.Append(l.Debug ? "debug" : "quiet");
        if (l.TscKhz > 0)
        {
            // microvm has no HPET or PM timer: without this, TSC calibration can fail under TCG on a busy host.
            line.Append(CultureInfo.InvariantCulture, $" tsc_early_khz={l.TscKhz}");
        }

        if (l.Accelerator == "tcg")
        {
            // TCG's vCPUs run on their own host threads, so the guest finds their TSCs unsynchronized, marks the TSC
            // unstable and falls back to jiffies: 4 ms clock resolution, no vDSO (every clock read a system call),
            // timers rounded up to ticks. The emulated TSC follows the host's clock: tell the guest to trust it.
            // No speculation mitigations either: they guard the guest kernel against untrusted guest programs, and
            // the only program here is our daemon; under emulation retpolines and RSB stuffing cost every syscall.
            line.Append(" tsc=reliable mitigations=off");
        }

        line.Append(CultureInfo.InvariantCulture, $" restorefs.idle={l.IdleTimeoutSeconds}");

        // Writable disks are per-session overlays: the daemon may replay journals (into them, never into the backup).
        if (l.Disks.Any(d => d.Writable))
        {
            line.Append(" restorefs.replay=1");
        }

        // The daemon listens on the channel QEMU was given (the guest kernel may load vsock without a device).
        line.Append(l.VsockCid is null ? " restorefs.channel=serial" : " restorefs.channel=vsock");
        return line.ToString();
    }

    /// <summary>The lowest CID handed to a VM: 0–2 are reserved (2 is the host), low ones have other uses.</summary>
    public const uint FirstCid = 10;

    /// <summary>
    /// The CID asked for a new VM, as PBS does it: one above the largest CID in use (0 when none), offset by the uid
    /// so that users rarely collide, cut to 16 bits, never below <see cref="FirstCid"/>.
    /// </summary>
    public static uint RequestCid(IEnumerable<uint> cidsInUse, uint uid) => ClampCid(cidsInUse.DefaultIfEmpty(0u).Max() + 1L + uid);

    /// <summary>The CID to try after <paramref name="cid"/> was taken.</summary>
    public static uint NextCid(uint cid) => ClampCid(cid + 1L);

    private static uint ClampCid(long cid) => Math.Max((uint)(cid & 0xFFFF), FirstCid);

    /// <summary>True when QEMU failed because another VM (of any user) holds the CID.</summary>
    public static bool CidTaken(string qemuError) =>
        qemuError.Contains("guest cid", StringComparison.OrdinalIgnoreCase) && qemuError.Contains("in use", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// True when <paramref name="argv"/> is the command line of one of our VMs: <c>-name restorefs-vm,…</c>, and when
    /// <paramref name="vmDirectory"/> is given, the pid file in that directory (so a reused pid is not mistaken).
    /// </summary>
    public static bool IsVmCommandLine(IReadOnlyList<string> argv, string? vmDirectory)
    {
        var named = false;
        var pidFile = vmDirectory is null ? null : PidFile(vmDirectory);
        var ownPidFile = pidFile is null;
        for (var i = 0; i + 1 < argv.Count; i++)
        {
            named |= argv[i] == "-name" && (argv[i + 1] == Marker || argv[i + 1].StartsWith(Marker + ",", StringComparison.Ordinal));
            ownPidFile |= argv[i] == "-pidfile" && argv[i + 1] == pidFile;
        }

        return named && ownPidFile;
    }

    /// <summary>QEMU's option syntax: a comma inside a value is written twice.</summary>
    public static string Escape(string value) => value.Replace(",", ",,", StringComparison.Ordinal);

    /// <summary>The host TSC frequency from /proc/cpuinfo, for tsc_early_khz; 0 when unknown.</summary>
    public static long HostTscKhz()
    {
        try
        {
            var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("cpu MHz", StringComparison.Ordinal));
            return line is null ? 0 : (long)(double.Parse(line.Split(':')[1].Trim(), CultureInfo.InvariantCulture) * 1000);
        }
        catch (Exception e) when (e is IOException or FormatException)
        {
            return 0;
        }
    }
}
