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
}

/// <summary>A directory.</summary>
public interface IFuseDirectory
{
    /// <summary>The child called <paramref name="name"/> (raw bytes), or null.</summary>
    ValueTask<FuseNode?> LookupAsync(ReadOnlyMemory<byte> name, FuseRequestContext ctx, CancellationToken ct);

    /// <summary>All children; taken once per OPENDIR and kept in the handle.</summary>
    ValueTask<IReadOnlyList<FuseDirectoryEntry>> ListAsync(FuseRequestContext ctx, CancellationToken ct);

    /// <summary>How long the kernel may remember that a name does not exist (zero: not at all).</summary>
    TimeSpan NegativeTimeout { get; }

    /// <summary>True when the listing never changes: the kernel may cache it across opens.</summary>
    bool ListingIsImmutable { get; }
}

/// <summary>One entry of a directory listing.</summary>
public readonly record struct FuseDirectoryEntry(ReadOnlyMemory<byte> Name, FuseNode Node);

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

/// <summary>Extended attributes of a node (optional).</summary>
public interface IFuseXattrs
{
    IReadOnlyDictionary<string, byte[]> GetXattrs();
}

/// <summary>What <c>stat</c> shows for a node.</summary>
public sealed record FuseAttributes(
    ulong Ino,
    ulong Size,
    uint Mode,
    uint Uid,
    uint Gid,
    DateTimeOffset MTime,
    uint NLink = 1,
    ulong Blocks = 0,
    uint BlockSize = 4096,
    uint RDev = 0);

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

/// <summary>Answers the request with a positive errno (ENOENT = 2, EIO = 5, EACCES = 13 …).</summary>
public class FuseException : Exception
{
    public FuseException(int errno, string message)
        : base(message)
    {
        Errno = errno;
    }

    public int Errno { get; }
}

/// <summary>Options of a mount.</summary>
public sealed record FuseMountOptions(
    string FsName = "restorefs",
    string Subtype = "restorefs",
    bool AllowOther = true,
    int Readers = 4,
    int ReadAheadKb = 1024,
    bool ClearStaleMount = true);
