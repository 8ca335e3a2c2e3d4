using System.Runtime.InteropServices;

namespace RestoreFs.Pxar;

/// <summary>The libc calls the extractor needs (all relative to a directory fd, names as bytes).</summary>
internal static unsafe partial class NativeWrite
{
    public const int AtFdCwd = -100;
    public const int OWrOnly = 1;
    public const int OCreat = 0x40;
    public const int OExcl = 0x80;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int mkdirat(int dirfd, byte* path, uint mode);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int symlinkat(byte* target, int dirfd, byte* path);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int mknodat(int dirfd, byte* path, uint mode, ulong dev);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int linkat(int olddirfd, byte* oldpath, int newdirfd, byte* newpath, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fchownat(int dirfd, byte* path, uint uid, uint gid, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fchmodat(int dirfd, byte* path, uint mode, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int utimensat(int dirfd, byte* path, long* times, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int unlinkat(int dirfd, byte* path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int lsetxattr(byte* path, byte* name, byte* value, nint size, int flags);

    private static byte[] Z(ReadOnlySpan<byte> s) => [.. s, 0];

    private static void Check(int result, string what, ReadOnlySpan<byte> name)
    {
        if (result != 0)
        {
            throw Native.Error(what, name);
        }
    }

    public static void UnlinkAt(int dirfd, ReadOnlySpan<byte> name)
    {
        fixed (byte* p = Z(name))
        {
            Check(unlinkat(dirfd, p, 0), "cannot remove", name);
        }
    }

    public static void MkdirAt(int dirfd, ReadOnlySpan<byte> name, uint mode)
    {
        fixed (byte* p = Z(name))
        {
            Check(mkdirat(dirfd, p, mode), "cannot create directory", name);
        }
    }

    public static void SymlinkAt(ReadOnlySpan<byte> target, int dirfd, ReadOnlySpan<byte> name)
    {
        fixed (byte* t = Z(target))
        fixed (byte* p = Z(name))
        {
            Check(symlinkat(t, dirfd, p), "cannot create symlink", name);
        }
    }

    public static void MknodAt(int dirfd, ReadOnlySpan<byte> name, uint mode, ulong dev)
    {
        fixed (byte* p = Z(name))
        {
            Check(mknodat(dirfd, p, mode, dev), "cannot create node", name);
        }
    }

    public static void LinkAt(ReadOnlySpan<byte> oldPath, int dirfd, ReadOnlySpan<byte> name)
    {
        fixed (byte* o = Z(oldPath))
        fixed (byte* p = Z(name))
        {
            Check(linkat(AtFdCwd, o, dirfd, p, 0), "cannot create hard link", name);
        }
    }

    public static void ChownAt(int dirfd, ReadOnlySpan<byte> name, uint uid, uint gid)
    {
        fixed (byte* p = Z(name))
        {
            Check(fchownat(dirfd, p, uid, gid, Native.AtSymlinkNoFollow | (name.Length == 0 ? Native.AtEmptyPath : 0)), "cannot change owner of", name);
        }
    }

    public static void ChmodAt(int dirfd, ReadOnlySpan<byte> name, uint mode)
    {
        fixed (byte* p = Z(name))
        {
            Check(fchmodat(dirfd, p, mode, 0), "cannot change mode of", name);
        }
    }

    public static void SetMtimeAt(int dirfd, ReadOnlySpan<byte> name, long seconds, uint nanos)
    {
        var times = stackalloc long[4];
        times[0] = seconds;
        times[1] = nanos;
        times[2] = seconds;
        times[3] = nanos;
        fixed (byte* p = Z(name))
        {
            Check(utimensat(dirfd, p, times, Native.AtSymlinkNoFollow), "cannot set times of", name);
        }
    }

    public static void SetXattr(ReadOnlySpan<byte> path, ReadOnlySpan<byte> name, ReadOnlySpan<byte> value)
    {
        fixed (byte* p = Z(path))
        fixed (byte* n = Z(name))
        fixed (byte* v = value)
        {
            Check(lsetxattr(p, n, v, value.Length, 0), $"cannot set xattr {System.Text.Encoding.UTF8.GetString(name)} on", path);
        }
    }
}
