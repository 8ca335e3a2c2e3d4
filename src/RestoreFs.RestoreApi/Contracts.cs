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
}

/// <summary>Bytes [Logical, Logical+Length) of a file are bytes [Disk, Disk+Length) of its disk image.</summary>
public readonly record struct FileExtent(long Logical, long Disk, long Length);

public sealed record DiskStatus(string Name, ulong Size, IReadOnlyList<string> Volumes, string? Error);

public sealed record MountStatus(string Volume, string FsType, string MountPoint, string? Error);

public sealed record DaemonStatus(long Uptime, long Timeout, IReadOnlyList<DiskStatus> Disks, IReadOnlyList<MountStatus> Mounts);

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

    /// <summary>Reads up to <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>; fewer only at end of file.</summary>
    Task<int> ReadAsync(byte[] path, long offset, Memory<byte> buffer, CancellationToken ct);

    Task<Stream> ExtractAsync(byte[] path, ExtractFormat format, bool zstd, CancellationToken ct);

    Task StopAsync(CancellationToken ct);
}
