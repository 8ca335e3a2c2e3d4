namespace RestoreFs.RestoreDaemon.Disks;

/// <param name="Disks">Explicit disks (name = serial, device path), e.g. loop devices in tests; null scans
/// <c>/sys/block/vd*</c> as in the VM (name from <c>/sys/block/vdX/serial</c>).</param>
/// <param name="MountRoot">Where volumes are mounted: <c>MountRoot/dev/&lt;device&gt;</c> and <c>MountRoot/lvm/&lt;vg&gt;/&lt;lv&gt;</c>.</param>
/// <param name="Log">One line per event (disks found, mounts, failures); null logs nothing.</param>
/// <param name="LoopForPartitions">Make read-only loop devices for partitions when the kernel shows none (hosts
/// without partition support, as in tests). False (the VM): the kernel shows them itself, and a partition it does not
/// show (a GPT of 4 KiB sectors, a GPT behind an MBR without its signature) gets a read-only device-mapper device.</param>
/// <param name="ScanLimit">How long callers wait for the disk scan (from construction); 120 s when null. Disks not
/// scanned by then are reported with an error.</param>
/// <param name="ReadyFile">In the VM: a file /init creates once every file system module is loaded (device-mapper
/// is loaded before the daemon starts). A mount whose type the kernel does not know yet waits for its module or
/// for this file (up to 30 s); the disk scan does not wait, except to activate LVM volumes that need device-mapper
/// targets beyond linear/striped (thin, snapshot, …).</param>
/// <param name="Replay">The disks are writable throwaway overlays (the host's, per VM session): ext4, xfs and btrfs
/// are mounted read-only but with journal replay; when that fails, without (logged). False: never replay.</param>
/// <param name="GuestKeys">LUKS passphrases by volume UUID (lower case), <c>*</c> for any volume; null or empty: LUKS
/// volumes are refused.</param>
/// <param name="MountRetryAfter">How long a failed mount is answered from memory before the next caller tries again
/// (30 s when null).</param>
/// <param name="ScanRetryAfter">How long a disk that could not be read at all (an I/O error) is reported so; the next caller
/// after that scans it again (30 s when null).</param>
public sealed record DiskCatalogOptions(
    IReadOnlyList<(string Name, string Device)>? Disks = null,
    string MountRoot = "/mnt",
    Action<string>? Log = null,
    bool LoopForPartitions = false,
    TimeSpan? ScanLimit = null,
    string? ReadyFile = null,
    bool Replay = false,
    IReadOnlyDictionary<string, byte[]>? GuestKeys = null,
    TimeSpan? MountRetryAfter = null,
    TimeSpan? ScanRetryAfter = null);
