using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;
using RestoreFs.RestoreDaemon.Native;

namespace RestoreFs.RestoreDaemon.Disks;

/// <summary>The few system calls the disk side needs beyond <see cref="LibC"/>: a block device's size and the kernel log.</summary>
internal static unsafe partial class DiskNative
{
    private const ulong BLKGETSIZE64 = 0x80081272;
    private const int O_RDONLY = 0, O_NONBLOCK = 0x800, O_CLOEXEC = 0x80000;
    private const int SEEK_END = 2;
    private const int EPIPE = 32, EINTR = 4;

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int IoctlU64(SafeFileHandle fd, ulong request, ulong* value);

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    private static partial nint Read(int fd, byte* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "lseek", SetLastError = true)]
    private static partial long LSeek(int fd, long offset, int whence);

    /// <summary>The size in bytes of a block device (BLKGETSIZE64), or -1 when the handle is not one.</summary>
    public static long BlockDeviceSize(SafeFileHandle handle)
    {
        ulong size;
        return IoctlU64(handle, BLKGETSIZE64, &size) == 0 ? (long)size : -1;
    }

    /// <summary>
    /// A reader of the kernel log (/dev/kmsg) positioned at its end when opened: after a failed mount, the lines the
    /// file system driver logged about the device (e.g. "FAT-fs (vda2): IO charset ascii not found") say why.
    /// </summary>
    public sealed class KernelLog : IDisposable
    {
        private int fd;

        private KernelLog(int fd) => this.fd = fd;

        /// <summary>Null when the kernel log cannot be read (no /dev/kmsg, not permitted).</summary>
        public static KernelLog? OpenAtEnd()
        {
            var fd = Open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
            if (fd < 0)
            {
                return null;
            }

            if (LSeek(fd, 0, SEEK_END) < 0)
            {
                LibC.Close(fd);
                return null;
            }

            return new KernelLog(fd);
        }

        /// <summary>The messages logged since opening (or the last call) whose text contains <paramref name="needle"/>.</summary>
        public List<string> ReadNew(string needle)
        {
            var lines = new List<string>();
            var buffer = new byte[8192];
            fixed (byte* b = buffer)
            {
                while (fd >= 0)
                {
                    var n = Read(fd, b, (nuint)buffer.Length);
                    if (n < 0)
                    {
                        var e = LibC.Errno;
                        if (e == EINTR)
                        {
                            continue;
                        }

                        if (e == EPIPE)
                        {
                            continue; // records were overwritten while we read: go on with the next one
                        }

                        break; // EAGAIN: nothing more
                    }

                    if (n == 0)
                    {
                        break;
                    }

                    // "priority,sequence,timestamp,flags;message\n continuation lines"
                    var record = Encoding.UTF8.GetString(buffer, 0, (int)n);
                    var semicolon = record.IndexOf(';', StringComparison.Ordinal);
                    var text = (semicolon >= 0 ? record[(semicolon + 1)..] : record).Split('\n')[0].Trim();
                    if (text.Contains(needle, StringComparison.Ordinal))
                    {
                        lines.Add(text);
                    }
                }
            }

            return lines;
        }

        public void Dispose()
        {
            if (fd >= 0)
            {
                LibC.Close(fd);
                fd = -1;
            }
        }
    }
}
