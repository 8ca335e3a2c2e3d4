namespace RestoreFs.Fuse;

/// <summary>
/// A node of a mounted filesystem. The library gives each node object a node id while the kernel holds it (the same
/// object always maps to the same id) and keeps lookup counts. A node is a directory, file or symlink by implementing
/// <see cref="IFuseDirectory"/>, <see cref="IFuseFile"/> or <see cref="IFuseSymlink"/>; anything else is shown with the
/// type its attributes say (device nodes, fifos) and cannot be opened.
/// </summary>
public abstract class FuseNode
{
    /// <summary>Attributes; <see cref="FuseAttributes.Ino"/> 0 means "use the node id".</summary>
    public abstract FuseAttributes GetAttributes();

    /// <summary>How long the kernel may keep the name → node binding.</summary>
    public virtual TimeSpan EntryTimeout => TimeSpan.FromSeconds(1);

    /// <summary>How long the kernel may keep the attributes.</summary>
    public virtual TimeSpan AttrTimeout => TimeSpan.FromSeconds(1);

    // The node id the mount gave this node and the kernel's lookup count, kept by the mount's node table under its
    // lock (0: the kernel does not know the node). On the node rather than in a second dictionary: a mount may hold
    // hundreds of thousands of nodes (a walk of a large archive). A node object belongs to one mount at a time.
    internal ulong TableId;
    internal long TableLookups;
}

/// <summary>A directory.</summary>
public interface IFuseDirectory
{
    /// <summary>The child called <paramref name="name"/> (raw bytes), or null.</summary>
    ValueTask<FuseNode?> LookupAsync(ReadOnlyMemory<byte> name, FuseRequestContext ctx, CancellationToken ct);

    /// <summary>All children; taken once per open handle and kept in it: at OPENDIR, or for an immutable listing at the
    /// handle's first READDIR (none comes when the kernel lists the directory from its cache). Errors reach whoever
    /// opens the directory, or reads it.</summary>
    ValueTask<IReadOnlyList<FuseDirectoryEntry>> ListAsync(FuseRequestContext ctx, CancellationToken ct);

    /// <summary>How long the kernel may remember that a name does not exist (zero: not at all).</summary>
    TimeSpan NegativeTimeout { get; }

    /// <summary>True when the listing never changes: the kernel may cache it across opens, and it is made only when
    /// the kernel asks for it.</summary>
    bool ListingIsImmutable { get; }
}

/// <summary>
/// One entry of a directory listing: with its node, or — when the node would be costly to make for a listing —
/// only its name, <paramref name="Type"/> (the file type bits of st_mode, <c>mode &gt;&gt; 12</c>, as d_type) and
/// <paramref name="Ino"/> (its st_ino). READDIRPLUS then gives the kernel no attributes for it, and the kernel looks
/// the name up when someone needs them (<c>ls -l</c>, <c>stat</c>), while a plain walk (<c>find</c>) never does.
/// </summary>
public readonly record struct FuseDirectoryEntry(ReadOnlyMemory<byte> Name, FuseNode? Node, uint Type = 0, ulong Ino = 0)
{
    /// <summary>A name-only entry (see the type's remarks).</summary>
    public static FuseDirectoryEntry NameOnly(ReadOnlyMemory<byte> name, uint type, ulong ino) => new(name, null, type, ino);
}

/// <summary>A regular file.</summary>
public interface IFuseFile
{
    ValueTask<IFuseFileHandle> OpenAsync(FuseOpenFlags flags, FuseRequestContext ctx, CancellationToken ct);
}

/// <summary>An open file. Reads arrive concurrently and must be reentrant.</summary>
public interface IFuseFileHandle : IAsyncDisposable
{
    /// <summary>Fills <paramref name="buffer"/> fully unless the end of the file comes first; returns the byte count.</summary>
    ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct);

    /// <summary>Let the kernel keep cached pages across opens (immutable data).</summary>
    bool KeepCache { get; }

    /// <summary>Bypass the page cache (sizes not known in advance).</summary>
    bool DirectIo { get; }

    /// <summary>SEEK_DATA (<paramref name="data"/> true) or SEEK_HOLE from <paramref name="offset"/>.
    /// Throw <see cref="NotSupportedException"/> (the default) to have the whole file treated as data.</summary>
    ValueTask<long> SeekDataOrHoleAsync(long offset, bool data, CancellationToken ct) => throw new NotSupportedException();
}

/// <summary>A symbolic link.</summary>
public interface IFuseSymlink
{
    ValueTask<byte[]> ReadLinkAsync(FuseRequestContext ctx, CancellationToken ct);
}

/// <summary>Extended attributes of a node (optional). Names and values are bytes, as the kernel passes them.</summary>
public interface IFuseXattrs
{
    /// <summary>Every attribute of the node; empty when it has none.</summary>
    ValueTask<IReadOnlyList<FuseXattr>> ListXattrsAsync(FuseRequestContext ctx, CancellationToken ct);
}

/// <summary>One extended attribute.</summary>
public readonly record struct FuseXattr(byte[] Name, byte[] Value);

/// <summary>A timestamp with nanoseconds (seconds may be negative: before 1970).</summary>
public readonly record struct FuseTime(long Seconds, uint Nanoseconds)
{
    public static implicit operator FuseTime(DateTimeOffset t)
    {
        var ticks = t.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks;
        var seconds = Math.DivRem(ticks, TimeSpan.TicksPerSecond, out var rest);
        if (rest < 0)
        {
            seconds--;
            rest += TimeSpan.TicksPerSecond;
        }

        return new FuseTime(seconds, (uint)(rest * 100));
    }

    /// <summary>From seconds and nanoseconds as a file system reports them (nanoseconds are clamped to 0..999999999).</summary>
    public static FuseTime From(long seconds, long nanoseconds) => new(seconds, (uint)Math.Clamp(nanoseconds, 0, 999_999_999));
}

/// <summary>What <c>stat</c> shows for a node. Access and change times default to the modification time.</summary>
public sealed record FuseAttributes(
    ulong Ino,
    ulong Size,
    uint Mode,
    uint Uid,
    uint Gid,
    FuseTime MTime,
    uint NLink = 1,
    ulong Blocks = 0,
    uint BlockSize = 4096,
    uint RDev = 0,
    FuseTime? ATime = null,
    FuseTime? CTime = null);

/// <summary>Who asks: the caller's fsuid/fsgid/pid and the request id.</summary>
public sealed class FuseRequestContext
{
    public uint Uid { get; init; }

    public uint Gid { get; init; }

    public uint Pid { get; init; }

    public ulong Unique { get; init; }
}

/// <summary>The open(2) flags of an OPEN request.</summary>
[Flags]
public enum FuseOpenFlags : uint
{
    ReadOnly = 0,
    WriteOnly = 1,
    ReadWrite = 2,
    AccessModeMask = 3,
}

/// <summary>Answers the request with a positive errno (use the names in <see cref="Errors"/>).</summary>
public class FuseException : Exception
{
    public FuseException(int errno, string message)
        : base(message)
    {
        Errno = errno;
    }

    public int Errno { get; }
}

/// <summary>The errno values nodes answer with, by name.</summary>
public static class Errors
{
    public const int EPERM = 1, ENOENT = 2, EINTR = 4, EIO = 5, ENXIO = 6, EBADF = 9, EAGAIN = 11, EACCES = 13,
        EEXIST = 17, ENOTDIR = 20, EISDIR = 21, EINVAL = 22, EFBIG = 27, EROFS = 30, ERANGE = 34, ENOSYS = 38,
        ENODATA = 61, ENOTSUP = 95;
}

/// <summary>
/// Options of a mount. Access: without <see cref="AllowOther"/> only the mounting user (and root, where the kernel lets
/// it in) gets an answer; with it every local user may read. Permission bits shown by nodes are never checked by the
/// kernel (no <c>default_permissions</c>): nodes show the backup's metadata, this policy decides access.
/// </summary>
public sealed record FuseMountOptions(
    string FsName = "restorefs",
    string Subtype = "restorefs",
    bool AllowOther = false,
    int Readers = 4,
    int ReadAheadKb = 1024,
    bool ClearStaleMount = true)
{
    /// <summary>Logs every request at trace level (<c>rx 12 LOOKUP n1 "etc"</c>).</summary>
    public bool TraceRequests { get; init; }

    /// <summary>
    /// How long a reader that has just answered a metadata request (not a READ) polls for the next one before it sleeps, in microseconds.
    /// Above 0 the readers also take turns (one reads the device, the others wait; a blocked handler is relieved after
    /// a millisecond; several calling processes get every reader). 0: every reader sleeps in read(). Saves wake-ups per
    /// request while a program walks or copies a tree.
    /// </summary>
    public int PollMicroseconds { get; init; } = DefaultPollMicroseconds;

    /// <summary>The default of <see cref="PollMicroseconds"/>.</summary>
    public const int DefaultPollMicroseconds = 100;
}
