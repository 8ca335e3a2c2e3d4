using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace RestoreFs.RestoreDaemon.Native;

/// <summary>What the daemon needs from libc, with file names as bytes (names in a backed-up disk need not be UTF-8).</summary>
internal static unsafe partial class LibC
{
    public const int O_RDONLY = 0, O_NOFOLLOW = 0x20000, O_DIRECTORY = 0x10000, O_CLOEXEC = 0x80000, O_NONBLOCK = 0x800;
    public const int AT_FDCWD = -100, AT_SYMLINK_NOFOLLOW = 0x100, AT_EMPTY_PATH = 0x1000;
    public const uint STATX_BASIC = 0x7ff, STATX_BTIME = 0x800;
    public const int ENXIO = 6, E2BIG = 7, ERANGE = 34, ENODATA = 61, EOPNOTSUPP = 95;
    public const int SEEK_SET = 0, SEEK_DATA = 3, SEEK_HOLE = 4;
    public const int EINTR = 4, ENOENT = 2, EACCES = 13, ELOOP = 40, ENOTDIR = 20, EINVAL = 22, EBUSY = 16;
    public const uint S_IFMT = 0xF000, S_IFDIR = 0x4000, S_IFREG = 0x8000, S_IFLNK = 0xA000, S_IFBLK = 0x6000, S_IFCHR = 0x2000,
        S_IFIFO = 0x1000, S_IFSOCK = 0xC000;
    public const ulong MS_RDONLY = 1, MS_NOSUID = 2, MS_NODEV = 4, MS_NOEXEC = 8;

    [LibraryImport("libc", EntryPoint = "openat", SetLastError = true)]
    private static partial int OpenAtRaw(int dirfd, byte* path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "close")]
    public static partial int Close(int fd);

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true)]
    private static partial int StatxRaw(int dirfd, byte* path, int flags, uint mask, byte* buffer);

    [LibraryImport("libc", EntryPoint = "readlinkat", SetLastError = true)]
    private static partial nint ReadLinkAtRaw(int dirfd, byte* path, byte* buffer, nuint size);

    [LibraryImport("libc", EntryPoint = "getdents64", SetLastError = true)]
    private static partial nint GetDents64(int fd, byte* buffer, nuint size);

    [LibraryImport("libc", EntryPoint = "pread64", SetLastError = true)]
    private static partial nint PRead(int fd, byte* buffer, nuint count, long offset);

    [LibraryImport("libc", EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Mount(string source, string target, string type, ulong flags, string? data);

    [LibraryImport("libc", EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Umount2(string target, int flags);

    [LibraryImport("libc", EntryPoint = "mknod", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int MkNod(string path, uint mode, ulong dev);

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    private static partial nint ReadRaw(int fd, byte* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "lseek64", SetLastError = true)]
    public static partial long LSeek(int fd, long offset, int whence);

    public const int SEEK_END = 2, EPIPE = 32, EAGAIN = 11;

    /// <summary>One read(2); the count, or -errno.</summary>
    public static int Read(int fd, Span<byte> buffer)
    {
        while (true)
        {
            nint n;
            fixed (byte* b = buffer)
            {
                n = ReadRaw(fd, b, (nuint)buffer.Length);
            }

            if (n >= 0)
            {
                return (int)n;
            }

            var errno = Errno;
            if (errno != EINTR)
            {
                return -errno;
            }
        }
    }

    [LibraryImport("libc", EntryPoint = "llistxattr", SetLastError = true)]
    private static partial nint LListXattrRaw(byte* path, byte* list, nuint size);

    [LibraryImport("libc", EntryPoint = "lgetxattr", SetLastError = true)]
    private static partial nint LGetXattrRaw(byte* path, byte* name, byte* value, nuint size);

    [LibraryImport("libc", EntryPoint = "flistxattr", SetLastError = true)]
    private static partial nint FListXattrRaw(int fd, byte* list, nuint size);

    [LibraryImport("libc", EntryPoint = "fgetxattr", SetLastError = true)]
    private static partial nint FGetXattrRaw(int fd, byte* name, byte* value, nuint size);

    /// <summary>flistxattr(2) into <paramref name="buffer"/> (empty: size probe); the byte count, or -errno.</summary>
    public static int FListXattr(int fd, Span<byte> buffer)
    {
        fixed (byte* b = buffer)
        {
            while (true)
            {
                var n = FListXattrRaw(fd, buffer.IsEmpty ? null : b, (nuint)buffer.Length);
                if (n >= 0)
                {
                    return (int)n;
                }

                var e = Errno;
                if (e != EINTR)
                {
                    return -e;
                }
            }
        }
    }

    /// <summary>fgetxattr(2) into <paramref name="buffer"/> (empty: size probe); the byte count, or -errno.</summary>
    public static int FGetXattr(int fd, ReadOnlySpan<byte> name, Span<byte> buffer)
    {
        Span<byte> zn = stackalloc byte[name.Length + 1];
        name.CopyTo(zn);
        zn[^1] = 0;
        fixed (byte* np = zn)
        fixed (byte* b = buffer)
        {
            while (true)
            {
                var n = FGetXattrRaw(fd, np, buffer.IsEmpty ? null : b, (nuint)buffer.Length);
                if (n >= 0)
                {
                    return (int)n;
                }

                var e = Errno;
                if (e != EINTR)
                {
                    return -e;
                }
            }
        }
    }

    /// <summary>llistxattr(2) into <paramref name="buffer"/> (empty: size probe); the byte count, or -errno.</summary>
    public static int LListXattr(ReadOnlySpan<byte> path, Span<byte> buffer)
    {
        Span<byte> z = stackalloc byte[path.Length + 1];
        path.CopyTo(z);
        z[^1] = 0;
        fixed (byte* p = z)
        fixed (byte* b = buffer)
        {
            while (true)
            {
                var n = LListXattrRaw(p, buffer.IsEmpty ? null : b, (nuint)buffer.Length);
                if (n >= 0)
                {
                    return (int)n;
                }

                var e = Errno;
                if (e != EINTR)
                {
                    return -e;
                }
            }
        }
    }

    /// <summary>lgetxattr(2) into <paramref name="buffer"/> (empty: size probe); the byte count, or -errno.</summary>
    public static int LGetXattr(ReadOnlySpan<byte> path, ReadOnlySpan<byte> name, Span<byte> buffer)
    {
        Span<byte> z = stackalloc byte[path.Length + 1];
        path.CopyTo(z);
        z[^1] = 0;
        Span<byte> zn = stackalloc byte[name.Length + 1];
        name.CopyTo(zn);
        zn[^1] = 0;
        fixed (byte* p = z)
        fixed (byte* np = zn)
        fixed (byte* b = buffer)
        {
            while (true)
            {
                var n = LGetXattrRaw(p, np, buffer.IsEmpty ? null : b, (nuint)buffer.Length);
                if (n >= 0)
                {
                    return (int)n;
                }

                var e = Errno;
                if (e != EINTR)
                {
                    return -e;
                }
            }
        }
    }

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(int fd, nuint request, byte* argument);

    /// <summary>The dataset name of a ZFS volume's block device (ZFS's BLKZNAME ioctl, as udev's zvol_id asks it); null
    /// when the device is not a ZFS volume or cannot be opened.</summary>
    public static string? ZvolName(string device)
    {
        const nuint BlkZName = (2u << 30) | (256u << 16) | (0x12 << 8) | 125; // _IOR(0x12, 125, char[256])
        var fd = OpenPath(device, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0)
        {
            return null;
        }

        using var handle = new Fd(fd);
        var name = new byte[256]; // ZFS_MAX_DATASET_NAME_LEN
        fixed (byte* p = name)
        {
            if (Ioctl(fd, BlkZName, p) != 0)
            {
                return null;
            }
        }

        var end = Array.IndexOf(name, (byte)0);
        return end <= 0 ? null : Encoding.UTF8.GetString(name, 0, end);
    }

    [LibraryImport("libc", EntryPoint = "sync")]
    public static partial void Sync();

    [LibraryImport("libc", EntryPoint = "reboot", SetLastError = true)]
    public static partial int Reboot(int command);

    [LibraryImport("libc", EntryPoint = "strerror")]
    private static partial nint StrErrorRaw(int errno);

    public static string StrError(int errno) => Marshal.PtrToStringUTF8(StrErrorRaw(errno)) ?? $"errno {errno}";

    public static int Errno => Marshal.GetLastPInvokeError();

    public static ulong MakeDev(uint major, uint minor) =>
        ((ulong)(major & 0xfffff000) << 32) | ((ulong)(major & 0xfff) << 8) | ((ulong)(minor & 0xffffff00) << 12) | (minor & 0xff);

    /// <summary>openat with a byte name; returns the fd or -errno.</summary>
    public static int OpenAt(int dirfd, ReadOnlySpan<byte> name, int flags)
    {
        Span<byte> z = stackalloc byte[name.Length + 1];
        name.CopyTo(z);
        z[^1] = 0;
        fixed (byte* p = z)
        {
            while (true)
            {
                var fd = OpenAtRaw(dirfd, p, flags | O_CLOEXEC, 0);
                if (fd >= 0)
                {
                    return fd;
                }

                var e = Errno;
                if (e != EINTR)
                {
                    return -e;
                }
            }
        }
    }

    public static int OpenPath(string path, int flags) => OpenAt(AT_FDCWD, Encoding.UTF8.GetBytes(path), flags);

    /// <summary>statx without following a final symlink; an empty name stats <paramref name="dirfd"/> itself.</summary>
    public static int Stat(int dirfd, ReadOnlySpan<byte> name, out StatInfo info)
    {
        Span<byte> z = stackalloc byte[name.Length + 1];
        name.CopyTo(z);
        z[^1] = 0;
        var buffer = stackalloc byte[256];
        fixed (byte* p = z)
        {
            var flags = AT_SYMLINK_NOFOLLOW | (name.IsEmpty ? AT_EMPTY_PATH : 0);
            if (StatxRaw(dirfd, p, flags, STATX_BASIC | STATX_BTIME, buffer) != 0)
            {
                info = default;
                return -Errno;
            }
        }

        var s = new ReadOnlySpan<byte>(buffer, 256);
        var mask = BinaryPrimitives.ReadUInt32LittleEndian(s);
        info = new StatInfo(
            Mode: BinaryPrimitives.ReadUInt16LittleEndian(s[28..]),
            Uid: BinaryPrimitives.ReadUInt32LittleEndian(s[20..]),
            Gid: BinaryPrimitives.ReadUInt32LittleEndian(s[24..]),
            Size: BinaryPrimitives.ReadUInt64LittleEndian(s[40..]),
            MTime: BinaryPrimitives.ReadInt64LittleEndian(s[112..]),
            MTimeNsec: BinaryPrimitives.ReadUInt32LittleEndian(s[120..]),
            Inode: BinaryPrimitives.ReadUInt64LittleEndian(s[32..]),
            Links: BinaryPrimitives.ReadUInt32LittleEndian(s[16..]),
            RdevMajor: BinaryPrimitives.ReadUInt32LittleEndian(s[128..]),
            RdevMinor: BinaryPrimitives.ReadUInt32LittleEndian(s[132..]))
        {
            Blocks = BinaryPrimitives.ReadUInt64LittleEndian(s[48..]),
            ATime = BinaryPrimitives.ReadInt64LittleEndian(s[64..]),
            ATimeNsec = BinaryPrimitives.ReadUInt32LittleEndian(s[72..]),
            HasBTime = (mask & STATX_BTIME) != 0,
            BTime = BinaryPrimitives.ReadInt64LittleEndian(s[80..]),
            BTimeNsec = BinaryPrimitives.ReadUInt32LittleEndian(s[88..]),
            CTime = BinaryPrimitives.ReadInt64LittleEndian(s[96..]),
            CTimeNsec = BinaryPrimitives.ReadUInt32LittleEndian(s[104..]),
            DevMajor = BinaryPrimitives.ReadUInt32LittleEndian(s[136..]),
            DevMinor = BinaryPrimitives.ReadUInt32LittleEndian(s[140..]),
        };
        return 0;
    }

    public static byte[]? ReadLink(int dirfd, ReadOnlySpan<byte> name)
    {
        Span<byte> z = stackalloc byte[name.Length + 1];
        name.CopyTo(z);
        z[^1] = 0;
        var buffer = new byte[4096];
        fixed (byte* p = z)
        fixed (byte* b = buffer)
        {
            var n = ReadLinkAtRaw(dirfd, p, b, (nuint)buffer.Length);
            return n < 0 ? null : buffer[..(int)n];
        }
    }

    /// <summary>Directory entries of an open directory as raw name bytes (without . and ..).</summary>
    public static IEnumerable<byte[]> ReadDirectory(int fd) => ReadDirectoryEntries(fd).Select(e => e.Name);

    /// <summary>Names with the directory position after each (d_off: lseek(SEEK_SET) to it continues after that name).</summary>
    public static IEnumerable<(byte[] Name, long Next)> ReadDirectoryEntries(int fd)
    {
        var buffer = new byte[64 * 1024];
        while (true)
        {
            var n = ReadDents(fd, buffer);
            if (n < 0)
            {
                throw new IOException($"cannot read directory: {StrError(Errno)}");
            }

            if (n == 0)
            {
                yield break;
            }

            var names = new List<(byte[], long)>();
            for (var offset = 0; offset < n;)
            {
                var next = BinaryPrimitives.ReadInt64LittleEndian(buffer.AsSpan(offset + 8));
                var recordLength = BinaryPrimitives.ReadUInt16LittleEndian(buffer.AsSpan(offset + 16));
                var nameSpan = buffer.AsSpan(offset + 19, recordLength - 19);
                var end = nameSpan.IndexOf((byte)0);
                var name = (end < 0 ? nameSpan : nameSpan[..end]).ToArray();
                if (!(name is [(byte)'.'] or [(byte)'.', (byte)'.']))
                {
                    names.Add((name, next));
                }

                offset += recordLength;
            }

            foreach (var entry in names)
            {
                yield return entry;
            }
        }
    }

    private static nint ReadDents(int fd, byte[] buffer)
    {
        fixed (byte* b = buffer)
        {
            return GetDents64(fd, b, (nuint)buffer.Length);
        }
    }

    public static int PReadAll(int fd, Span<byte> buffer, long offset)
    {
        var done = 0;
        fixed (byte* b = buffer)
        {
            while (done < buffer.Length)
            {
                var n = PRead(fd, b + done, (nuint)(buffer.Length - done), offset + done);
                if (n < 0)
                {
                    if (Errno == EINTR)
                    {
                        continue;
                    }

                    throw new IOException($"read failed at offset {offset + done}: {StrError(Errno)}");
                }

                if (n == 0)
                {
                    break;
                }

                done += (int)n;
            }
        }

        return done;
    }
}

internal readonly record struct StatInfo(uint Mode, uint Uid, uint Gid, ulong Size, long MTime, uint MTimeNsec, ulong Inode, uint Links,
    uint RdevMajor, uint RdevMinor)
{
    /// <summary>Allocated 512-byte units (stx_blocks).</summary>
    public ulong Blocks { get; init; }

    public long ATime { get; init; }

    public uint ATimeNsec { get; init; }

    public long CTime { get; init; }

    public uint CTimeNsec { get; init; }

    /// <summary>Whether the file system reported a birth time (statx STATX_BTIME).</summary>
    public bool HasBTime { get; init; }

    public long BTime { get; init; }

    public uint BTimeNsec { get; init; }

    /// <summary>The device holding the file (stx_dev_major/minor): a btrfs subvolume has its own.</summary>
    public uint DevMajor { get; init; }

    public uint DevMinor { get; init; }

    public uint Kind => Mode & LibC.S_IFMT;

    public char TypeChar => Kind switch
    {
        LibC.S_IFDIR => 'd',
        LibC.S_IFREG => 'f',
        LibC.S_IFLNK => 'l',
        LibC.S_IFBLK => 'b',
        LibC.S_IFCHR => 'c',
        LibC.S_IFIFO => 'p',
        LibC.S_IFSOCK => 's',
        _ => '?',
    };
}

/// <summary>An owned file descriptor.</summary>
internal sealed class Fd(int value) : IDisposable
{
    public int Value { get; private set; } = value;

    public void Dispose()
    {
        if (Value >= 0)
        {
            LibC.Close(Value);
            Value = -1;
        }
    }
}
