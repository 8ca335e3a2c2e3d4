namespace RestoreFs.RestoreDaemon.Disks;

/// <summary>
/// The seam between the API handlers and the disks. The catalog knows the disks (by serial = archive name without
/// <c>.img.fidx</c>), their volumes (<c>part/N</c>, <c>lvm/VG/LV</c>, <c>raw</c>) and mounts a volume read-only on
/// first use.
/// </summary>
public interface IVolumeCatalog
{
    /// <summary>All disks, once the scan has finished (waits for it).</summary>
    Task<IReadOnlyList<DiskInfo>> GetDisksAsync(CancellationToken ct);

    /// <summary>
    /// Mounts the volume (once; later calls return the same directory) and returns the directory where its file
    /// system is. Throws <see cref="VolumeException"/> naming the volume and the reason when it cannot be mounted.
    /// </summary>
    Task<string> MountAsync(VolumeInfo volume, CancellationToken ct);

    /// <summary>Volumes mounted so far, for <c>status</c>.</summary>
    IReadOnlyList<MountedVolume> Mounts { get; }
}

/// <param name="Name">The disk's serial, e.g. <c>drive-scsi0</c> (may be cut to 20 bytes by virtio).</param>
/// <param name="Device">Block device path, e.g. <c>/dev/vda</c>.</param>
public sealed record DiskInfo(string Name, string Device, ulong Size, IReadOnlyList<VolumeInfo> Volumes, string? Error);

/// <param name="Bucket"><c>part</c>, <c>raw</c>, <c>lvm</c>, <c>md</c> or <c>zfs</c>.</param>
/// <param name="Components">After the bucket: <c>["1"]</c> for part/1, <c>["vg0","root"]</c> for lvm/vg0/root, <c>["boot"]</c> for md/boot, none for raw.</param>
/// <param name="Device">Block device holding the file system.</param>
/// <param name="FsType">Detected from the superblock; null when none was recognised.</param>
public sealed record VolumeInfo(string Disk, string Bucket, IReadOnlyList<string> Components, string Device, ulong Size, string? FsType)
{
    public string Id => string.Join('/', new[] { Disk, Bucket }.Concat(Components));

    /// <summary>Why this volume cannot be used (e.g. its LVM volume group could not be activated); null when it can.</summary>
    public string? Error { get; init; }

    /// <summary>Where the volume's bytes lie on its disk, in order (one span for a partition or the whole disk, one
    /// per segment for a linear LV); null when not known (a volume spread over several disks, a non-linear LV).</summary>
    public IReadOnlyList<DiskSpan>? Placement { get; init; }
}

/// <summary>Bytes [VolumeOffset, VolumeOffset+Length) of a volume are bytes [DiskOffset, DiskOffset+Length) of its disk.</summary>
public readonly record struct DiskSpan(long VolumeOffset, long DiskOffset, long Length);

public sealed record MountedVolume(VolumeInfo Volume, string MountPoint, string FsType, string? Error)
{
    /// <summary>
    /// True when the host must not read this volume's files from the image by file maps: the mount wrote (a journal
    /// replay into the VM session's overlay, so the image differs from what the VM reads) or the volume is encrypted.
    /// Asked on every listing (a replay's writes are counted on the device). Null: maps are fine.
    /// </summary>
    public Func<bool>? NoFileMaps { get; init; }
}

public sealed class VolumeException(string message, Exception? inner = null) : Exception(message, inner);
