namespace RestoreFs.Fuse.Protocol;

/// <summary>FUSE opcodes (include/uapi/linux/fuse.h).</summary>
public enum FuseOpcode : uint
{
    Lookup = 1, Forget = 2, GetAttr = 3, SetAttr = 4, ReadLink = 5, Symlink = 6, MkNod = 8, MkDir = 9, Unlink = 10,
    RmDir = 11, Rename = 12, Link = 13, Open = 14, Read = 15, Write = 16, StatFs = 17, Release = 18, Fsync = 20,
    SetXattr = 21, GetXattr = 22, ListXattr = 23, RemoveXattr = 24, Flush = 25, Init = 26, OpenDir = 27, ReadDir = 28,
    ReleaseDir = 29, FsyncDir = 30, GetLk = 31, SetLk = 32, SetLkW = 33, Access = 34, Create = 35, Interrupt = 36,
    Bmap = 37, Destroy = 38, Ioctl = 39, Poll = 40, NotifyReply = 41, BatchForget = 42, Fallocate = 43,
    ReadDirPlus = 44, Rename2 = 45, Lseek = 46, CopyFileRange = 47, SetupMapping = 48, RemoveMapping = 49,
    SyncFs = 50, TmpFile = 51, Statx = 52, CopyFileRange64 = 53,
}

/// <summary>INIT capability bits we use.</summary>
[Flags]
public enum InitFlags : uint
{
    AsyncRead = 0x1,
    DoReaddirplus = 0x2000,
    ReaddirplusAuto = 0x4000,
    ParallelDirops = 0x40000,
    MaxPages = 0x400000,
    CacheSymlinks = 0x800000,
}

/// <summary>FOPEN_* bits of open_out.</summary>
[Flags]
public enum OpenOutFlags : uint
{
    None = 0,
    DirectIo = 0x1,
    KeepCache = 0x2,
    CacheDir = 0x8,
}

/// <summary>errno values the server answers with.</summary>
public static class Errno
{
    public const int EPERM = 1, ENOENT = 2, EINTR = 4, EIO = 5, ENXIO = 6, EBADF = 9, EAGAIN = 11, EACCES = 13,
        ENODEV = 19, ENOTDIR = 20, EISDIR = 21, EINVAL = 22, EROFS = 30, ERANGE = 34, ENOSYS = 38, ENODATA = 61,
        EPROTO = 71, ENOTSUP = 95, ECONNABORTED = 103, ENOTCONN = 107;
}

/// <summary>Sizes and numbers of the protocol.</summary>
public static class FuseConstants
{
    public const int InHeaderSize = 40;
    public const int OutHeaderSize = 16;
    public const int AttrSize = 88;
    public const int EntryOutSize = 128;
    public const int AttrOutSize = 104;
    public const int OpenOutSize = 16;
    public const int InitOutSize = 64;
    public const int KstatfsSize = 80;
    public const uint KernelMajor = 7;
    public const uint OurMinor = 31;
    public const uint MinimumMinor = 28;
    public const int MaxPages = 256;
    public const int MaxWrite = 128 * 1024;
    public const int MaxRead = MaxPages * 4096;
    public const int RequestBufferSize = MaxWrite + 4096;
    public const uint RequestedFlags = (uint)(InitFlags.AsyncRead | InitFlags.DoReaddirplus | InitFlags.ReaddirplusAuto |
                                              InitFlags.ParallelDirops | InitFlags.MaxPages | InitFlags.CacheSymlinks);
}
