using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace RestoreFs.Pxar;

/// <summary>
/// The inode attributes pxar keeps beside the stat: chattr flags (append-only, immutable, nodump, noatime, nocow, …)
/// in the entry's flags, as PBS's client maps them, and the quota project id of ext4/xfs. Read from and applied to
/// open file descriptors of directories and regular files (as PBS does: never through special files). A file system
/// that has none of them (tmpfs, vfat, NFS) simply yields none; applying them is best effort, like chown as a user.
/// </summary>
internal static unsafe partial class InodeFlags
{
    /// <summary>pxar's flag bit and the kernel's FS_*_FL bit of each chattr attribute.</summary>
    private static readonly (ulong Pxar, int Kernel)[] Map =
    [
        (0x10000, 0x20), // append-only (a)
        (0x20000, 0x80), // no atime updates (A)
        (0x40000, 0x4), // compressed (c)
        (0x80000, 0x800000), // no copy-on-write (C)
        (0x100000, 0x40), // no dump (d)
        (0x200000, 0x10000), // synchronous directory updates (D)
        (0x400000, 0x10), // immutable (i)
        (0x800000, 0x8), // synchronous updates (S)
        (0x1000000, 0x400), // no compression (m)
        (0x2000000, 0x20000000), // project id inherited (P)
    ];

    /// <summary>The pxar bits that stop a file from being changed: applied last, after contents, owner and times.</summary>
    public const ulong Freezing = 0x10000 | 0x400000;

    private const nuint GetFlags = 0x80086601, SetFlags = 0x40086602, FsGetXattr = 0x801C581F, FsSetXattr = 0x401C5820;
    private const int FsxattrSize = 28, ProjIdOffset = 12;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ioctl(int fd, nuint request, void* argument);

    /// <summary>The pxar flags of an open directory or regular file; 0 where the file system keeps none.</summary>
    public static ulong Read(int fd)
    {
        var kernel = 0;
        if (ioctl(fd, GetFlags, &kernel) != 0)
        {
            return 0;
        }

        ulong flags = 0;
        foreach (var (pxar, bit) in Map)
        {
            if ((kernel & bit) != 0)
            {
                flags |= pxar;
            }
        }

        return flags;
    }

    /// <summary>The quota project id of an open directory or regular file, null when it has none (0) or the file system
    /// keeps none.</summary>
    public static ulong? ReadProjectId(int fd)
    {
        var fsx = stackalloc byte[FsxattrSize];
        if (ioctl(fd, FsGetXattr, fsx) != 0)
        {
            return null;
        }

        var id = BinaryPrimitives.ReadUInt32LittleEndian(new ReadOnlySpan<byte>(fsx + ProjIdOffset, 4));
        return id == 0 ? null : id;
    }

    /// <summary>Sets the chattr attributes that <paramref name="pxarFlags"/> names (among those in <paramref name="only"/>)
    /// and clears the others of that set; false when the file system or the caller's rights refuse it.</summary>
    public static bool Apply(int fd, ulong pxarFlags, ulong only = ulong.MaxValue)
    {
        var kernel = 0;
        if (ioctl(fd, GetFlags, &kernel) != 0)
        {
            return pxarFlags == 0;
        }

        var wanted = kernel;
        foreach (var (pxar, bit) in Map)
        {
            if ((only & pxar) == 0)
            {
                continue;
            }

            wanted = (pxarFlags & pxar) != 0 ? wanted | bit : wanted & ~bit;
        }

        return wanted == kernel || ioctl(fd, SetFlags, &wanted) == 0;
    }

    /// <summary>Sets the quota project id; false when the file system or the caller's rights refuse it.</summary>
    public static bool ApplyProjectId(int fd, ulong id)
    {
        var fsx = stackalloc byte[FsxattrSize];
        if (id > uint.MaxValue || ioctl(fd, FsGetXattr, fsx) != 0)
        {
            return false;
        }

        var span = new Span<byte>(fsx + ProjIdOffset, 4);
        if (BinaryPrimitives.ReadUInt32LittleEndian(span) == id)
        {
            return true;
        }

        BinaryPrimitives.WriteUInt32LittleEndian(span, (uint)id);
        return ioctl(fd, FsSetXattr, fsx) == 0;
    }
}
