namespace RestoreFs.RestoreApi;

/// <summary>Type of a listed entry, one character on the wire as in PBS's ArchiveEntry.</summary>
public static class EntryTypes
{
    public const char Directory = 'd';
    public const char File = 'f';
    public const char Symlink = 'l';
    public const char HardLink = 'h';
    public const char BlockDevice = 'b';
    public const char CharDevice = 'c';
    public const char Fifo = 'p';
    public const char Socket = 's';
    /// <summary>A level made by the daemon (disk, bucket type, partition, VG), not a directory of a file system.</summary>
    public const char Virtual = 'v';
    /// <summary>An entry whose inode could not be read (its <c>error</c> says why): listed, but every access fails.</summary>
    public const char Unreadable = '?';
    /// <summary>The last element of a listing that is not complete (the disk could not be read); not an entry: the
    /// client fails the listing with its <c>error</c>.</summary>
    public const char Failed = '!';
    /// <summary>The last element of a listing that stopped at its entry limit: not an entry; its <c>next</c> cookie, sent
    /// back as <c>start</c>, continues the listing (<see cref="RestoreClient"/> follows it by itself).</summary>
    public const char More = '+';
}

/// <summary>
/// One entry of a <c>list</c> answer. PBS's ArchiveEntry (filepath, text, type, leaf, size, mtime) plus what a file
/// system needs (mode, uid, gid, symlink target, an error for a volume that failed to mount). Paths and names are
/// bytes: file names need not be UTF-8.
/// </summary>
public sealed record ArchiveEntry(
    byte[] FilePath,
    byte[] Name,
    char Type,
    bool Leaf,
    ulong? Size,
    long? MTime,
    uint Mode,
    uint Uid,
    uint Gid,
    byte[]? Target,
    string? Error)
{
    /// <summary>The whole content of a small regular file, sent with the listing when the client asked for it
    /// (<c>inline=N</c>): copying a tree of small files then costs one request per directory.</summary>
    public byte[]? Content { get; init; }

    /// <summary>Where a regular file's bytes lie in its disk image, when the client asked (<c>extents=1</c>) and the
    /// daemon's file system gives an exact map: the host then reads them from the image itself. Bytes of the file
    /// that no extent covers are zeros (holes). Null when there is no map.</summary>
    public IReadOnlyList<FileExtent>? Extents { get; init; }

    /// <summary>The device the inode is on (statx stx_dev_major/minor). With <see cref="Ino"/> it names one inode of a
    /// volume: names with the same (dev, ino) are hard links. A btrfs subvolume has a device number of its own.</summary>
    public DeviceNumber? Dev { get; init; }

    /// <summary>The inode number (stx_ino).</summary>
    public ulong? Ino { get; init; }

    /// <summary>The number of hard links (stx_nlink).</summary>
    public uint? NLink { get; init; }

    /// <summary>Allocated space in 512-byte units (stx_blocks): less than the size for a sparse file.</summary>
    public ulong? Blocks { get; init; }

    /// <summary>The device a block or character device node stands for (stx_rdev_major/minor); null for other types.</summary>
    public DeviceNumber? RDev { get; init; }

    /// <summary>Nanoseconds within <see cref="ArchiveEntry.MTime"/>'s second (0…999,999,999).</summary>
    public uint? MTimeNs { get; init; }

    public Timestamp? ATime { get; init; }

    public Timestamp? CTime { get; init; }

    /// <summary>Birth time, when the file system records one (statx STATX_BTIME).</summary>
    public Timestamp? BTime { get; init; }

    /// <summary>All extended attributes, when asked for inline (<c>xattrs=1</c>) and small enough; null means "not
    /// sent": ask <see cref="IRestoreClient.XattrsAsync"/>. Empty: the entry has none.</summary>
    public IReadOnlyList<Xattr>? Xattrs { get; init; }

    /// <summary>For a <see cref="EntryTypes.More"/> element: where the next page of the listing starts.</summary>
    public long? Next { get; init; }

    /// <summary>The modification time with its nanoseconds, when known.</summary>
    public Timestamp? MTimeStamp => MTime is { } s ? new Timestamp(s, MTimeNs ?? 0) : null;
}

/// <summary>A device number as major:minor (Linux).</summary>
public readonly record struct DeviceNumber(uint Major, uint Minor);

/// <summary>A time as seconds since 1970 (may be negative) plus nanoseconds 0…999,999,999.</summary>
public readonly record struct Timestamp(long Seconds, uint Nanoseconds)
{
    public DateTimeOffset ToDateTimeOffset() =>
        DateTimeOffset.FromUnixTimeSeconds(Seconds).AddTicks(Nanoseconds / 100);
}

/// <summary>One extended attribute: its name (bytes, e.g. <c>user.comment</c>, <c>system.posix_acl_access</c>) and
/// its value (bytes, exact), or, when the value cannot be given, why not (too large, unreadable).</summary>
public sealed record Xattr(byte[] Name, byte[]? Value, string? Error = null);

/// <summary>Options of a <c>list</c> request.</summary>
/// <param name="InlineMax">Regular files up to this many bytes come with their content (the daemon bounds the total).</param>
/// <param name="Extents">Regular files the daemon can map come with their extents on the disk.</param>
/// <param name="Xattrs">Entries come with their extended attributes when the set is small (see DEVELOPERS.md).</param>
/// <param name="Limit">At most this many entries per answer (0: the daemon's default); the client asks for the rest.</param>
public sealed record ListOptions(int InlineMax = 0, bool Extents = false, bool Xattrs = false, int Limit = 0);

/// <summary>Bytes [Logical, Logical+Length) of a file are bytes [Disk, Disk+Length) of its disk image.</summary>
public readonly record struct FileExtent(long Logical, long Disk, long Length);

public sealed record DiskStatus(string Name, ulong Size, IReadOnlyList<string> Volumes, string? Error);

public sealed record MountStatus(string Volume, string FsType, string MountPoint, string? Error);

/// <param name="Boot">Where the VM's boot went (a daemon running inside a restore VM); null elsewhere.</param>
public sealed record DaemonStatus(long Uptime, long Timeout, IReadOnlyList<DiskStatus> Disks, IReadOnlyList<MountStatus> Mounts,
    BootTimes? Boot = null);

/// <summary>
/// Steps of a restore VM's boot on the guest's clock (seconds since its kernel started, from <c>/proc/uptime</c>): /init
/// started, its early modules loaded, the daemon started, the daemon listening, the disk scan done, and this answer.
/// What is missing (a step not reached, a daemon not started by our /init) is −1. The host's wall time to the first
/// answer minus <see cref="Now"/> is QEMU's start and kernel load plus the host's own part.
/// </summary>
public sealed record BootTimes(double Init, double Modules, double Daemon, double Listening, double Scanned, double Now);

public enum ExtractFormat
{
    /// <summary>Raw bytes of a file; an error for a directory.</summary>
    Plain,
    /// <summary>A tar stream of a file or a directory tree.</summary>
    Tar,
}

/// <summary>A request failed in the daemon: HTTP status and the daemon's message.</summary>
public class RestoreApiException(int statusCode, string message) : Exception(message)
{
    public int StatusCode { get; } = statusCode;
}

/// <summary>Where requests go: a fresh byte stream per request (a vsock/unix/tcp connection, or a multiplexed
/// stream over one virtio-serial channel).</summary>
public interface IRestoreTransport : IAsyncDisposable
{
    ValueTask<Stream> OpenStreamAsync(CancellationToken ct);
}

/// <summary>The host's view of the restore daemon's API (<c>/api2/json/…</c>, HTTP/1.1, ticket in
/// <c>Authorization</c>).</summary>
public interface IRestoreClient : IAsyncDisposable
{
    Task<DaemonStatus> StatusAsync(bool keepTimeout, CancellationToken ct);

    /// <summary>Entries stream as the daemon sends them; a directory of 100,000 entries is never held whole.</summary>
    IAsyncEnumerable<ArchiveEntry> ListAsync(byte[] path, CancellationToken ct);

    /// <summary>As <see cref="ListAsync(byte[], CancellationToken)"/>, with the content of regular files up to
    /// <paramref name="inlineMax"/> bytes each inline (the daemon bounds the total per answer).</summary>
    IAsyncEnumerable<ArchiveEntry> ListAsync(byte[] path, int inlineMax, CancellationToken ct);

    /// <summary>As above; with <paramref name="extents"/>, regular files the daemon can map come with their
    /// <see cref="ArchiveEntry.Extents"/> (and then without inline content).</summary>
    IAsyncEnumerable<ArchiveEntry> ListAsync(byte[] path, int inlineMax, bool extents, CancellationToken ct);

    /// <summary>As above with all options; pages of a large directory are asked for one after another.</summary>
    IAsyncEnumerable<ArchiveEntry> ListAsync(byte[] path, ListOptions options, CancellationToken ct);

    /// <summary>All extended attributes of the file, directory, symlink (not followed) or volume root at
    /// <paramref name="path"/>, values exact; a value that cannot be sent carries its <see cref="Xattr.Error"/>.</summary>
    Task<IReadOnlyList<Xattr>> XattrsAsync(byte[] path, CancellationToken ct);

    /// <summary>lseek(SEEK_DATA) (<paramref name="data"/>) or lseek(SEEK_HOLE) in the guest on a regular file: the
    /// offset found, or -1 when there is no data (or hole) at or after <paramref name="offset"/> (ENXIO).</summary>
    Task<long> SeekAsync(byte[] path, long offset, bool data, CancellationToken ct);

    /// <summary>Reads up to <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>; fewer only at end of file.</summary>
    Task<int> ReadAsync(byte[] path, long offset, Memory<byte> buffer, CancellationToken ct);

    Task<Stream> ExtractAsync(byte[] path, ExtractFormat format, bool zstd, CancellationToken ct);

    Task StopAsync(CancellationToken ct);
}
