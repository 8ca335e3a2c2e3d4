using System.Runtime.InteropServices;

namespace RestoreFs.Pxar;

/// <summary>The libc calls the archiver needs to see a directory tree exactly: names as bytes, ns times, devices, xattrs.</summary>
internal static unsafe partial class Native
{
    public const int ORdOnly = 0;
    public const int ONoFollow = 0x20000;
    public const int ODirectory = 0x10000;
    public const int OCloExec = 0x80000;
    public const int ONonBlock = 0x800;
    public const int ONoAtime = 0x40000;
    public const int AtSymlinkNoFollow = 0x100;
    public const int AtEmptyPath = 0x1000;
    public const uint StatxBasicStats = 0x7ff;
    private const int ERange = 34;
    private const int ENoData = 61;
    private const int ENotSup = 95;

    [LibraryImport("libc", SetLastError = true)]
    public static partial int openat(int dirfd, byte* path, int flags, int mode);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int close(int fd);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int dup(int fd);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int statx(int dirfd, byte* path, int flags, uint mask, byte* buffer);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint fdopendir(int fd);

    [LibraryImport("libc", SetLastError = true, EntryPoint = "readdir64")]
    private static partial byte* readdir(nint dir);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int closedir(nint dir);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint readlinkat(int dirfd, byte* path, byte* buffer, nint size);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint llistxattr(byte* path, byte* list, nint size);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint lgetxattr(byte* path, byte* name, byte* value, nint size);

    public readonly record struct Stat(uint Mode, uint Uid, uint Gid, uint NLink, ulong Ino, ulong Size, long MtimeSeconds, uint MtimeNanos,
        uint RDevMajor, uint RDevMinor, uint DevMajor, uint DevMinor);

    public static IOException Error(string what, ReadOnlySpan<byte> path)
    {
        var errno = Marshal.GetLastPInvokeError();
        return new IOException($"{what} {System.Text.Encoding.UTF8.GetString(path)}: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})");
    }

    private static byte[] Z(ReadOnlySpan<byte> s) => [.. s, 0];

    public static int OpenAt(int dirfd, ReadOnlySpan<byte> name, int flags)
    {
        fixed (byte* p = Z(name))
        {
            var fd = openat(dirfd, p, flags | OCloExec, 0);
            if (fd < 0)
            {
                throw Error("cannot open", name);
            }

            return fd;
        }
    }

    /// <summary>
    /// <see cref="OpenAt"/> with O_NOATIME while <paramref name="noAtime"/> holds, so that reading a tree to back it up
    /// leaves its access times as they were (as PBS's client does); the first EPERM (a file the caller does not own,
    /// without root) clears it and opens without.
    /// </summary>
    public static int OpenAtNoAtime(int dirfd, ReadOnlySpan<byte> name, int flags, ref bool noAtime)
    {
        if (noAtime)
        {
            fixed (byte* p = Z(name))
            {
                var fd = openat(dirfd, p, flags | ONoAtime | OCloExec, 0);
                if (fd >= 0)
                {
                    return fd;
                }

                if (Marshal.GetLastPInvokeError() != 1) // EPERM: O_NOATIME not allowed here
                {
                    throw Error("cannot open", name);
                }

                noAtime = false;
            }
        }

        return OpenAt(dirfd, name, flags);
    }

    /// <summary>lstat of <paramref name="name"/> in <paramref name="dirfd"/> (an empty name: the fd itself).</summary>
    public static Stat StatAt(int dirfd, ReadOnlySpan<byte> name)
    {
        var buffer = stackalloc byte[256];
        fixed (byte* p = Z(name))
        {
            if (statx(dirfd, p, AtSymlinkNoFollow | (name.Length == 0 ? AtEmptyPath : 0), StatxBasicStats, buffer) != 0)
            {
                throw Error("cannot stat", name);
            }
        }

        return new Stat(*(ushort*)(buffer + 28), *(uint*)(buffer + 20), *(uint*)(buffer + 24), *(uint*)(buffer + 16), *(ulong*)(buffer + 32),
            *(ulong*)(buffer + 40), *(long*)(buffer + 112), *(uint*)(buffer + 120), *(uint*)(buffer + 128), *(uint*)(buffer + 132),
            *(uint*)(buffer + 136), *(uint*)(buffer + 140));
    }

    /// <summary>The names in a directory (without . and ..), in raw byte order.</summary>
    public static List<byte[]> ListDirectory(int dirfd, ReadOnlySpan<byte> pathForErrors)
    {
        var copy = dup(dirfd);
        if (copy < 0)
        {
            throw Error("cannot dup", pathForErrors);
        }

        var dir = fdopendir(copy);
        if (dir == 0)
        {
            close(copy);
            throw Error("cannot list", pathForErrors);
        }

        var names = new List<byte[]>();
        try
        {
            while (true)
            {
                Marshal.SetLastPInvokeError(0);
                var entry = readdir(dir);
                if (entry == null)
                {
                    if (Marshal.GetLastPInvokeError() != 0)
                    {
                        throw Error("cannot list", pathForErrors);
                    }

                    break;
                }

                var name = MemoryMarshal.CreateReadOnlySpanFromNullTerminated(entry + 19);
                if (!name.SequenceEqual("."u8) && !name.SequenceEqual(".."u8))
                {
                    names.Add(name.ToArray());
                }
            }
        }
        finally
        {
            closedir(dir);
        }

        names.Sort((a, b) => a.AsSpan().SequenceCompareTo(b));
        return names;
    }

    public static byte[] ReadLinkAt(int dirfd, ReadOnlySpan<byte> name)
    {
        var buffer = new byte[4097];
        fixed (byte* p = Z(name))
        fixed (byte* b = buffer)
        {
            var n = readlinkat(dirfd, p, b, buffer.Length);
            if (n < 0)
            {
                throw Error("cannot read link", name);
            }

            if (n >= buffer.Length)
            {
                throw new IOException($"symlink target of {System.Text.Encoding.UTF8.GetString(name)} is longer than 4096 bytes");
            }

            return buffer[..(int)n];
        }
    }

    /// <summary>All extended attributes of a path (not following a final symlink), name-sorted; none where unsupported.</summary>
    public static List<(byte[] Name, byte[] Value)> Xattrs(ReadOnlySpan<byte> path)
    {
        var result = new List<(byte[], byte[])>();
        var z = Z(path);
        fixed (byte* p = z)
        {
            byte[] list;
            while (true)
            {
                var size = llistxattr(p, null, 0);
                if (size < 0)
                {
                    var errno = Marshal.GetLastPInvokeError();
                    if (errno is ENotSup or ENoData)
                    {
                        return result;
                    }

                    throw Error("cannot list xattrs of", path);
                }

                list = new byte[size];
                fixed (byte* l = list)
                {
                    var got = llistxattr(p, l, list.Length);
                    if (got >= 0)
                    {
                        list = list[..(int)got];
                        break;
                    }

                    if (Marshal.GetLastPInvokeError() != ERange)
                    {
                        throw Error("cannot list xattrs of", path);
                    }
                }
            }

            foreach (var range in list.AsSpan().Split((byte)0))
            {
                var name = list.AsSpan(range);
                if (name.Length == 0)
                {
                    continue;
                }

                var value = GetXattr(p, name, path);
                if (value is not null)
                {
                    result.Add((name.ToArray(), value));
                }
            }
        }

        result.Sort((a, b) => a.Item1.AsSpan().SequenceCompareTo(b.Item1));
        return result;
    }

    private static byte[]? GetXattr(byte* path, ReadOnlySpan<byte> name, ReadOnlySpan<byte> pathForErrors)
    {
        fixed (byte* n = Z(name))
        {
            while (true)
            {
                var size = lgetxattr(path, n, null, 0);
                if (size < 0)
                {
                    if (Marshal.GetLastPInvokeError() == ENoData)
                    {
                        return null;
                    }

                    throw Error("cannot read xattr of", pathForErrors);
                }

                var value = new byte[size];
                fixed (byte* v = value)
                {
                    var got = lgetxattr(path, n, v, value.Length);
                    if (got >= 0)
                    {
                        return value[..(int)got];
                    }

                    if (Marshal.GetLastPInvokeError() != ERange)
                    {
                        throw Error("cannot read xattr of", pathForErrors);
                    }
                }
            }
        }
    }
}
