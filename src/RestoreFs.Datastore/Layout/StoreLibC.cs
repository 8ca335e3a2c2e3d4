using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace RestoreFs.Datastore;

/// <summary>The few libc calls the datastore needs to open files without following symlinks or blocking on FIFOs.</summary>
internal static unsafe partial class StoreLibC
{
    public const int O_RDONLY = 0, O_NONBLOCK = 0x800, O_DIRECTORY = 0x10000, O_NOFOLLOW = 0x20000, O_NOATIME = 0x40000, O_CLOEXEC = 0x80000,
        O_PATH = 0x200000;
    public const int AT_SYMLINK_NOFOLLOW = 0x100, AT_EMPTY_PATH = 0x1000;
    public const ulong RESOLVE_NO_MAGICLINKS = 0x02, RESOLVE_NO_SYMLINKS = 0x04, RESOLVE_BENEATH = 0x08;
    public const int EINTR = 4, ENOENT = 2, ENOTDIR = 20, ELOOP = 40, EXDEV = 18, ENOSYS = 38, EPERM = 1, EAGAIN = 11, ESRCH = 3;
    public const uint S_IFMT = 0xF000, S_IFDIR = 0x4000, S_IFREG = 0x8000, S_IFLNK = 0xA000, S_IFBLK = 0x6000, S_IFCHR = 0x2000,
        S_IFIFO = 0x1000, S_IFSOCK = 0xC000;

    /// <summary>openat2(2): the same number on every 64-bit Linux architecture.</summary>
    private const long SysOpenAt2 = 437;

    private const uint StatxType = 0x1, StatxMode = 0x2, StatxSize = 0x200, StatxMTime = 0x40;

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long Syscall4(long number, long a, long b, long c, long d);

    [LibraryImport("libc", EntryPoint = "openat", SetLastError = true)]
    private static partial int OpenAtRaw(int dirfd, byte* path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true)]
    private static partial int OpenRaw(byte* path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "close")]
    public static partial int Close(int fd);

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true)]
    private static partial int StatxRaw(int dirfd, byte* path, int flags, uint mask, byte* buffer);

    [LibraryImport("libc", EntryPoint = "getdents64", SetLastError = true)]
    private static partial nint GetDents64(int fd, byte* buffer, nuint size);

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int KillRaw(int pid, int signal);

    [LibraryImport("libc", EntryPoint = "strerror")]
    private static partial nint StrErrorRaw(int errno);

    public static string StrError(int errno) => Marshal.PtrToStringUTF8(StrErrorRaw(errno)) ?? $"errno {errno}";

    public static int Errno => Marshal.GetLastPInvokeError();

    /// <summary>Whether a process with this pid exists (on this machine's pid namespace).</summary>
    public static bool ProcessExists(int pid) => KillRaw(pid, 0) == 0 || Errno != ESRCH;

    private static byte[] Z(string s)
    {
        var bytes = new byte[Encoding.UTF8.GetByteCount(s) + 1];
        Encoding.UTF8.GetBytes(s, bytes);
        return bytes;
    }

    /// <summary>open(2) of an absolute or cwd-relative path (following symlinks: the caller chose it); fd or -errno.</summary>
    public static int Open(string path, int flags)
    {
        var z = Z(path);
        fixed (byte* p = z)
        {
            while (true)
            {
                var fd = OpenRaw(p, flags | O_CLOEXEC, 0);
                if (fd >= 0)
                {
                    return fd;
                }

                if (Errno != EINTR)
                {
                    return -Errno;
                }
            }
        }
    }

    /// <summary>openat(2) of one name; fd or -errno.</summary>
    public static int OpenAt(int dirfd, string name, int flags)
    {
        var z = Z(name);
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

    /// <summary>openat2(2) with a resolve mask; fd or -errno (-ENOSYS where the kernel lacks it).</summary>
    public static int OpenAt2(int dirfd, string path, int flags, ulong resolve)
    {
        var z = Z(path);
        var how = stackalloc ulong[3];
        how[0] = (ulong)(uint)(flags | O_CLOEXEC);
        how[1] = 0;
        how[2] = resolve;
        fixed (byte* p = z)
        {
            while (true)
            {
                var fd = Syscall4(SysOpenAt2, dirfd, (long)p, (long)how, 24);
                if (fd >= 0)
                {
                    return (int)fd;
                }

                var e = Errno;
                if (e != EINTR && e != EAGAIN)
                {
                    return -e;
                }
            }
        }
    }

    public readonly record struct StatInfo(uint Mode, long Size, long MTimeSeconds)
    {
        public uint Type => Mode & S_IFMT;
    }

    /// <summary>statx without following a final symlink; an empty name stats <paramref name="dirfd"/> itself. 0 or -errno.</summary>
    public static int Stat(int dirfd, string name, out StatInfo info)
    {
        var z = Z(name);
        var buffer = stackalloc byte[256];
        fixed (byte* p = z)
        {
            var flags = AT_SYMLINK_NOFOLLOW | (name.Length == 0 ? AT_EMPTY_PATH : 0);
            if (StatxRaw(dirfd, p, flags, StatxType | StatxMode | StatxSize | StatxMTime, buffer) != 0)
            {
                info = default;
                return -Errno;
            }
        }

        var s = new ReadOnlySpan<byte>(buffer, 256);
        info = new StatInfo(BinaryPrimitives.ReadUInt16LittleEndian(s[28..]), (long)BinaryPrimitives.ReadUInt64LittleEndian(s[40..]),
            BinaryPrimitives.ReadInt64LittleEndian(s[112..]));
        return 0;
    }

    /// <summary>Entries of an open directory (without . and ..): name and d_type (0 = unknown).</summary>
    public static List<(byte[] Name, byte Type)> ReadDirectory(int fd)
    {
        var result = new List<(byte[], byte)>();
        var buffer = new byte[64 * 1024];
        while (true)
        {
            nint n;
            fixed (byte* b = buffer)
            {
                n = GetDents64(fd, b, (nuint)buffer.Length);
            }

            if (n < 0)
            {
                var e = Errno;
                if (e == EINTR)
                {
                    continue;
                }

                throw new IOException($"cannot read directory: {StrError(e)}");
            }

            if (n == 0)
            {
                return result;
            }

            for (var offset = 0; offset < n;)
            {
                var recordLength = BinaryPrimitives.ReadUInt16LittleEndian(buffer.AsSpan(offset + 16));
                var type = buffer[offset + 18];
                var nameSpan = buffer.AsSpan(offset + 19, recordLength - 19);
                var end = nameSpan.IndexOf((byte)0);
                var name = (end < 0 ? nameSpan : nameSpan[..end]).ToArray();
                if (!(name is [(byte)'.'] or [(byte)'.', (byte)'.']))
                {
                    result.Add((name, type));
                }

                offset += recordLength;
            }
        }
    }

    public const byte DT_FIFO = 1, DT_CHR = 2, DT_DIR = 4, DT_BLK = 6, DT_REG = 8, DT_LNK = 10, DT_SOCK = 12;
}
