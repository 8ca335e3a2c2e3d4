using System.Runtime.CompilerServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

[assembly: InternalsVisibleTo("RestoreFs.Datastore.Tests")]

namespace RestoreFs.Datastore;

/// <summary>
/// A datastore directory on a local filesystem. Every open is relative to the store root's descriptor: with
/// openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) where the kernel has it, else component by component with
/// openat(O_NOFOLLOW). Always O_NONBLOCK (a FIFO cannot block the open) and then fstat: a regular file (or a
/// directory where one is listed), anything else refused naming the path. Files and listed directories are opened
/// with O_NOATIME where the kernel allows it (the files' owner, or root): looking leaves no trace in the store, not
/// even access times (PBS's garbage collection reads a chunk's atime).
/// </summary>
internal sealed partial class LocalStoreFiles : IStoreFiles
{
    private static int openat2State; // 0 unknown, 1 available, -1 missing

    // O_NOATIME until the kernel refuses it once (EPERM: the caller neither owns the store's files nor is root).
    private int noAtime = StoreLibC.O_NOATIME;

    private readonly SafeFileHandle root;

    /// <summary>For tests: false walks component by component with O_NOFOLLOW, as on kernels without openat2.</summary>
    internal static bool UseOpenat2
    {
        get => Volatile.Read(ref openat2State) >= 0;
        set => Volatile.Write(ref openat2State, value ? 0 : -1);
    }

    public LocalStoreFiles(string rootPath)
    {
        RootPath = Path.GetFullPath(rootPath);
        var fd = StoreLibC.Open(RootPath, StoreLibC.O_RDONLY | StoreLibC.O_DIRECTORY);
        if (fd < 0)
        {
            throw -fd == StoreLibC.ENOENT
                ? new DatastoreException("datastore directory does not exist", RootPath)
                : new DatastoreException($"cannot open the datastore directory: {StoreLibC.StrError(-fd)}", RootPath);
        }

        root = new SafeFileHandle(fd, ownsHandle: true);
    }

    public string RootPath { get; }

    private int RootFd => (int)root.DangerousGetHandle();

    public string Describe(string relativePath) => relativePath.Length == 0 ? RootPath : Path.Combine(RootPath, relativePath);

    public IStoreFile? TryOpen(string relativePath)
    {
        var fd = OpenChecked(relativePath, directory: false);
        if (fd < 0)
        {
            return null;
        }

        var handle = new SafeFileHandle(fd, ownsHandle: true);
        if (StoreLibC.Stat(fd, string.Empty, out var info) != 0)
        {
            var e = StoreLibC.Errno;
            handle.Dispose();
            throw new DatastoreException($"cannot stat: {StoreLibC.StrError(e)}", Describe(relativePath));
        }

        if (info.Type != StoreLibC.S_IFREG)
        {
            handle.Dispose();
            throw new StoreEntryRefusedException($"{KindName(info.Type)} where a regular file belongs (refused)", Describe(relativePath));
        }

        return new LocalFile(relativePath, handle, info.Size);
    }

    public IStoreFile? TryOpenChunk(string digestHex) => TryOpen(StorePath.ChunkPath(digestHex));

    public IReadOnlyList<StoreEntry>? ListDirectory(string relativePath)
    {
        var fd = OpenChecked(relativePath, directory: true);
        if (fd < 0)
        {
            return null;
        }

        try
        {
            var result = new List<StoreEntry>();
            foreach (var (nameBytes, type) in StoreLibC.ReadDirectory(fd))
            {
                string name;
                try
                {
                    name = Strict.GetString(nameBytes);
                }
                catch (DecoderFallbackException)
                {
                    // Not UTF-8: no valid datastore name; shown escaped so it can be reported.
                    name = Encoding.Latin1.GetString(nameBytes);
                }

                var kind = type switch
                {
                    StoreLibC.DT_REG => StoreEntryKind.File,
                    StoreLibC.DT_DIR => StoreEntryKind.Directory,
                    StoreLibC.DT_LNK => StoreEntryKind.Symlink,
                    0 => StoreLibC.Stat(fd, name, out var info) == 0 ? KindOf(info.Type) : StoreEntryKind.Other,
                    _ => StoreEntryKind.Other,
                };
                result.Add(new StoreEntry(name, kind));
            }

            return result;
        }
        catch (IOException e)
        {
            throw new DatastoreException(e.Message, Describe(relativePath));
        }
        finally
        {
            StoreLibC.Close(fd);
        }
    }

    public StoreEntryKind? Kind(string relativePath)
    {
        var parts = StorePath.Check(relativePath, Describe(relativePath));
        if (parts.Length == 0)
        {
            return StoreEntryKind.Directory;
        }

        var parent = string.Join('/', parts[..^1]);
        var fd = parent.Length == 0 ? -1 : OpenChecked(parent, directory: true);
        if (parent.Length != 0 && fd < 0)
        {
            return null;
        }

        try
        {
            var r = StoreLibC.Stat(fd < 0 ? RootFd : fd, parts[^1], out var info);
            if (r == -StoreLibC.ENOENT || r == -StoreLibC.ENOTDIR)
            {
                return null;
            }

            if (r < 0)
            {
                throw new DatastoreException($"cannot stat: {StoreLibC.StrError(-r)}", Describe(relativePath));
            }

            return KindOf(info.Type);
        }
        finally
        {
            if (fd >= 0)
            {
                StoreLibC.Close(fd);
            }
        }
    }

    private static readonly UTF8Encoding Strict = new(false, throwOnInvalidBytes: true);

    private static StoreEntryKind KindOf(uint type) => type switch
    {
        StoreLibC.S_IFREG => StoreEntryKind.File,
        StoreLibC.S_IFDIR => StoreEntryKind.Directory,
        StoreLibC.S_IFLNK => StoreEntryKind.Symlink,
        _ => StoreEntryKind.Other,
    };

    private static string KindName(uint type) => type switch
    {
        StoreLibC.S_IFDIR => "a directory",
        StoreLibC.S_IFLNK => "a symbolic link",
        StoreLibC.S_IFIFO => "a FIFO",
        StoreLibC.S_IFCHR => "a character device",
        StoreLibC.S_IFBLK => "a block device",
        StoreLibC.S_IFSOCK => "a socket",
        _ => "a regular file",
    };

    /// <summary>
    /// Opens a path below the root without following any symlink: the fd, or -1 when the path does not exist.
    /// A directory when <paramref name="directory"/> (checked), else anything (the caller fstat's it).
    /// </summary>
    private int OpenChecked(string relativePath, bool directory)
    {
        var describe = Describe(relativePath);
        var parts = StorePath.Check(relativePath, describe);
        var flags = StoreLibC.O_RDONLY | StoreLibC.O_NONBLOCK | StoreLibC.O_NOFOLLOW | (directory ? StoreLibC.O_DIRECTORY : 0);
        var path = parts.Length == 0 ? "." : relativePath;
        if (Volatile.Read(ref openat2State) >= 0)
        {
            const ulong resolve = StoreLibC.RESOLVE_BENEATH | StoreLibC.RESOLVE_NO_SYMLINKS | StoreLibC.RESOLVE_NO_MAGICLINKS;
            var atime = Volatile.Read(ref noAtime);
            var fd = StoreLibC.OpenAt2(RootFd, path, flags | atime, resolve);
            if (fd == -StoreLibC.EPERM && atime != 0 && StoreLibC.OpenAt2(RootFd, path, flags, resolve) is var plain && plain != -StoreLibC.EPERM)
            {
                // It was O_NOATIME the kernel refused (not openat2 itself, which a seccomp filter may deny).
                Volatile.Write(ref noAtime, 0);
                fd = plain;
            }

            if (fd != -StoreLibC.ENOSYS && !(fd == -StoreLibC.EPERM && Volatile.Read(ref openat2State) == 0))
            {
                Volatile.Write(ref openat2State, 1);
                return Result(fd, relativePath, describe, directory);
            }

            // No openat2 (an old kernel, or a seccomp filter that denies it): the portable walk from now on.
            Volatile.Write(ref openat2State, -1);
        }

        var current = RootFd;
        try
        {
            for (var i = 0; i < parts.Length; i++)
            {
                var last = i == parts.Length - 1;
                var atime = last ? Volatile.Read(ref noAtime) : 0;
                var next = StoreLibC.OpenAt(current, parts[i], last ? flags | atime : StoreLibC.O_RDONLY | StoreLibC.O_NONBLOCK | StoreLibC.O_NOFOLLOW | StoreLibC.O_DIRECTORY);
                if (next == -StoreLibC.EPERM && atime != 0)
                {
                    Volatile.Write(ref noAtime, 0);
                    next = StoreLibC.OpenAt(current, parts[i], flags);
                }

                if (next == -StoreLibC.ENOTDIR && StoreLibC.Stat(current, parts[i], out var linkInfo) == 0 && linkInfo.Type == StoreLibC.S_IFLNK)
                {
                    // O_DIRECTORY|O_NOFOLLOW on a symlink answers ENOTDIR: report it as the symlink it is.
                    next = -StoreLibC.ELOOP;
                }

                if (next < 0)
                {
                    return Result(next, string.Join('/', parts[..(i + 1)]), Describe(string.Join('/', parts[..(i + 1)])), directory);
                }

                if (current != RootFd)
                {
                    StoreLibC.Close(current);
                }

                current = next;
            }

            if (parts.Length == 0)
            {
                var fd = StoreLibC.OpenAt(RootFd, ".", flags | Volatile.Read(ref noAtime));
                if (fd == -StoreLibC.EPERM && Volatile.Read(ref noAtime) != 0)
                {
                    Volatile.Write(ref noAtime, 0);
                    fd = StoreLibC.OpenAt(RootFd, ".", flags);
                }

                return Result(fd, relativePath, describe, directory);
            }

            var result = current;
            current = RootFd;
            return result;
        }
        finally
        {
            if (current != RootFd)
            {
                StoreLibC.Close(current);
            }
        }
    }

    private static int Result(int fd, string relativePath, string describe, bool directory)
    {
        if (fd >= 0)
        {
            return fd;
        }

        return -fd switch
        {
            StoreLibC.ENOENT => -1,
            StoreLibC.ELOOP => throw new StoreEntryRefusedException(
                $"a symbolic link on the path '{Names.Printable(relativePath)}' (symlinks in a datastore are not followed)", describe),
            StoreLibC.EXDEV => throw new StoreEntryRefusedException($"'{Names.Printable(relativePath)}' leads out of the datastore", describe),
            StoreLibC.ENOTDIR => directory
                ? throw new StoreEntryRefusedException($"'{Names.Printable(relativePath)}' is not a directory", describe)
                : -1,
            _ => throw new DatastoreException($"cannot open: {StoreLibC.StrError(-fd)}", describe),
        };
    }

    private sealed class LocalFile(string relativePath, SafeFileHandle handle, long length) : IStoreFile
    {
        public string RelativePath { get; } = relativePath;

        public long Length { get; } = length;

        public int ReadAt(Span<byte> destination, long offset) => RandomAccess.Read(handle, destination, offset);

        public void WillNeed(long offset, long length) => _ = PosixFadvise(handle, offset, length, 3);

        public void Dispose() => handle.Dispose();
    }

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "posix_fadvise")]
    private static partial int PosixFadvise(SafeFileHandle fd, long offset, long length, int advice);
}
