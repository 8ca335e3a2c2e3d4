using RestoreFs.Fuse;

namespace RestoreFs.Tree;

/// <summary>
/// One entry of a directory inside a disk, as the restore VM reports it. The init-only members are what the guest's
/// statx says (null from an older daemon, and for the levels the restore API adds: disk, <c>part</c>, <c>lvm</c>).
/// </summary>
public sealed record RemoteEntry(
    byte[] Name,
    char Type,
    ulong Size,
    long MTime,
    uint Mode,
    uint Uid,
    uint Gid,
    byte[]? Target,
    string? Error)
{
    /// <summary>Nanoseconds within <see cref="MTime"/>'s second.</summary>
    public uint MTimeNs { get; init; }

    public FuseTime? ATime { get; init; }

    public FuseTime? CTime { get; init; }

    /// <summary>The guest's device number of the inode (a btrfs subvolume has its own); with <see cref="Ino"/> it
    /// names one inode of a volume.</summary>
    public (uint Major, uint Minor)? Dev { get; init; }

    public ulong? Ino { get; init; }

    public uint? NLink { get; init; }

    /// <summary>Allocated 512-byte units.</summary>
    public ulong? Blocks { get; init; }

    /// <summary>The device a block/character device node stands for.</summary>
    public (uint Major, uint Minor)? RDev { get; init; }

    /// <summary>All extended attributes when the listing carried them; null: ask the backend.</summary>
    public IReadOnlyList<RemoteXattr>? Xattrs { get; init; }

    /// <summary>Whether the entry carries the guest's stat (a volume root does; the levels above it do not).</summary>
    public bool HasStat => Dev is not null;
}

/// <summary>One extended attribute of a guest entry: a value, or why the guest could not give it.</summary>
public sealed record RemoteXattr(byte[] Name, byte[]? Value, string? Error = null);

/// <summary>
/// What <c>files/</c> needs from the restore VM: list a path and read a range of a file. Paths are bytes in the restore
/// API's scheme: <c>drive-scsi0.img.fidx/part/1/etc/hostname</c>.
/// </summary>
public interface IFilesBackend
{
    ValueTask<IReadOnlyList<RemoteEntry>> ListAsync(SnapshotState snapshot, byte[] path, CancellationToken ct);

    ValueTask<int> ReadAsync(SnapshotState snapshot, byte[] path, long offset, Memory<byte> buffer, CancellationToken ct);

    /// <summary>Whether the snapshot's restore VM runs now (asking it then starts nothing).</summary>
    bool IsVmRunning(SnapshotState snapshot);

    /// <summary>Whether reads of this file are served from the backup image without the VM.</summary>
    bool IsMapped(SnapshotState snapshot, byte[] path);

    /// <summary>All extended attributes of the entry at <paramref name="path"/> (its own: a symlink is not followed).</summary>
    ValueTask<IReadOnlyList<RemoteXattr>> XattrsAsync(SnapshotState snapshot, byte[] path, CancellationToken ct) =>
        ValueTask.FromResult<IReadOnlyList<RemoteXattr>>([]);

    /// <summary>SEEK_DATA/SEEK_HOLE in a regular file: the offset found, or -1 when there is no data at or after
    /// <paramref name="offset"/>. <see cref="NotSupportedException"/>: the whole file counts as data.</summary>
    ValueTask<long> SeekAsync(SnapshotState snapshot, byte[] path, long offset, bool data, CancellationToken ct) =>
        throw new NotSupportedException();
}
