namespace RestoreFs.Tree;

/// <summary>One entry of a directory inside a disk, as the restore VM reports it.</summary>
public sealed record RemoteEntry(
    byte[] Name,
    char Type,
    ulong Size,
    long MTime,
    uint Mode,
    uint Uid,
    uint Gid,
    byte[]? Target,
    string? Error);

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
}
