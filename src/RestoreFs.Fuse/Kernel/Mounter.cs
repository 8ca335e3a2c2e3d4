using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using RestoreFs.Fuse.Protocol;

namespace RestoreFs.Fuse.Kernel;

/// <summary>
/// Gets a /dev/fuse descriptor mounted on a directory: mount(2) as root, else through fusermount3 with the descriptor
/// passed back over a socket (SCM_RIGHTS). Also unmounts, and clears stale mounts of dead servers.
/// </summary>
internal static unsafe class Mounter
{
    public static bool IsRoot => LibC.GetEuid() == 0;

    /// <summary>
    /// Whether the kernel should let every user through to us: when others are allowed, or when a non-root owner's mount
    /// can let root in (libfuse's allow_root: the kernel passes everyone, <see cref="FuseAccessPolicy"/> refuses others).
    /// </summary>
    public static bool KernelAllowOther(FuseMountOptions options)
    {
        if (options.AllowOther)
        {
            if (!IsRoot && !UserAllowOtherConfigured())
            {
                throw new IOException("allowing other users needs 'user_allow_other' in /etc/fuse.conf (a line root adds); " +
                                      "without it only the mounting user can enter the mount");
            }

            return true;
        }

        return !IsRoot && UserAllowOtherConfigured();
    }

    /// <summary>fusermount3 accepts allow_other from non-root users only with this line in /etc/fuse.conf.</summary>
    public static bool UserAllowOtherConfigured()
    {
        try
        {
            return File.ReadLines("/etc/fuse.conf").Any(l => l.Trim() == "user_allow_other");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    public static int Mount(string mountPoint, FuseMountOptions options, bool allowOther, ILogger log, out bool viaFusermount)
    {
        viaFusermount = false;
        if (IsRoot)
        {
            var fd = LibC.Open("/dev/fuse", LibC.ORdWr | LibC.OCloExec);
            if (fd < 0)
            {
                throw new IOException($"cannot open /dev/fuse: {LibC.ErrorText(Marshal.GetLastPInvokeError())}");
            }

            // No default_permissions: modes shown are the backup's, never checked against host users (FuseAccessPolicy decides).
            var data = $"fd={fd},rootmode=40000,user_id={LibC.GetEuid()},group_id={LibC.GetEgid()},max_read={FuseConstants.MaxRead}";
            if (allowOther)
            {
                data += ",allow_other";
            }

            if (LibC.Mount(options.FsName, mountPoint, "fuse." + options.Subtype,
                    LibC.MsRdOnly | LibC.MsNoSuid | LibC.MsNoDev, data) == 0)
            {
                return fd;
            }

            var errno = Marshal.GetLastPInvokeError();
            LibC.Close(fd);
            if (errno != 1)
            {
                throw new IOException($"mount of {mountPoint} failed: {LibC.ErrorText(errno)}");
            }

            log.LogInformation("mount(2) was refused (EPERM); trying fusermount3");
        }

        viaFusermount = true;
        return MountWithFusermount(mountPoint, options, allowOther);
    }

    private static int MountWithFusermount(string mountPoint, FuseMountOptions options, bool allowOther)
    {
        var fds = stackalloc int[2];
        if (LibC.SocketPair(LibC.AfUnix, LibC.SockStream | LibC.SockCloExec, 0, fds) != 0)
        {
            throw new IOException($"socketpair failed: {LibC.ErrorText(Marshal.GetLastPInvokeError())}");
        }

        int ours = fds[0], theirs = fds[1];
        try
        {
            LibC.Fcntl(theirs, LibC.FSetFd, 0);
            var opts = $"ro,nosuid,nodev,max_read={FuseConstants.MaxRead},fsname={Escape(options.FsName)},subtype={Escape(options.Subtype)}";
            if (allowOther)
            {
                opts += ",allow_other";
            }

            var psi = new ProcessStartInfo("fusermount3", ["-o", opts, "--", mountPoint])
            {
                UseShellExecute = false,
                RedirectStandardError = true,
                RedirectStandardOutput = true,
            };
            // Children get an explicit, minimal environment: nothing of ours (keys, passphrases) reaches them.
            var path = Environment.GetEnvironmentVariable("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin";
            psi.Environment.Clear();
            psi.Environment["PATH"] = path;
            psi.Environment["LANG"] = "C.UTF-8";
            psi.Environment["_FUSE_COMMFD"] = theirs.ToString(System.Globalization.CultureInfo.InvariantCulture);
            using var process = Process.Start(psi) ?? throw new IOException("cannot start fusermount3");
            LibC.Close(theirs);
            theirs = -1;
            var received = ReceiveFd(ours);
            var stderr = process.StandardError.ReadToEnd();
            process.WaitForExit();
            if (received < 0)
            {
                throw new IOException($"fusermount3 failed (exit {process.ExitCode}): {stderr.Trim()}");
            }

            LibC.Fcntl(received, LibC.FSetFd, LibC.FdCloExec);
            return received;
        }
        finally
        {
            LibC.Close(ours);
            if (theirs >= 0)
            {
                LibC.Close(theirs);
            }
        }
    }

    private static string Escape(string value) => value.Replace("\\", "\\\\", StringComparison.Ordinal).Replace(",", "\\,", StringComparison.Ordinal);

    private static int ReceiveFd(int socket)
    {
        byte data = 0;
        var control = stackalloc byte[24];
        var iov = new LibC.IoVec { Base = &data, Length = 1 };
        var msg = new LibC.MsgHdr { Iov = &iov, IovLength = 1, Control = control, ControlLength = 24 };
        nint n;
        do
        {
            n = LibC.RecvMsg(socket, &msg, 0);
        }
        while (n < 0 && Marshal.GetLastPInvokeError() == Errno.EINTR);

        if (n <= 0 || msg.ControlLength < 20)
        {
            return -1;
        }

        var level = *(int*)(control + 8);
        var type = *(int*)(control + 12);
        return level == 1 && type == 1 ? *(int*)(control + 16) : -1;
    }

    /// <summary>Lazy unmount: umount2(MNT_DETACH) as root, fusermount3 -u -z otherwise.</summary>
    public static bool Unmount(string mountPoint, ILogger log)
    {
        if (IsRoot && LibC.Umount2(mountPoint, LibC.MntDetach) == 0)
        {
            return true;
        }

        try
        {
            using var process = Process.Start(new ProcessStartInfo("fusermount3", ["-u", "-z", "-q", "--", mountPoint])
            {
                UseShellExecute = false,
                RedirectStandardError = true,
            });
            process?.WaitForExit(10_000);
            return process?.ExitCode == 0;
        }
        catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            log.LogWarning("cannot unmount {MountPoint}: {Reason}", mountPoint, e.Message);
            return false;
        }
    }

    /// <summary>The mountinfo line of a mount point: (device "maj:min", fstype), or null.</summary>
    public static (string Device, string FsType)? FindMount(string mountPoint)
    {
        var full = Path.GetFullPath(mountPoint).TrimEnd('/');
        (string, string)? found = null;
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            var fields = line.Split(' ');
            var dash = Array.IndexOf(fields, "-");
            if (fields.Length > 4 && dash > 0 && dash + 1 < fields.Length &&
                fields[4].Replace("\\040", " ", StringComparison.Ordinal) == full)
            {
                found = (fields[2], fields[dash + 1]);
            }
        }

        return found;
    }

    /// <summary>A FUSE mount on the mount point whose server is gone (ENOTCONN) is detached; a live one is an error.</summary>
    public static void ClearStaleMount(string mountPoint, ILogger log)
    {
        if (FindMount(mountPoint) is not { } mount || !mount.FsType.StartsWith("fuse", StringComparison.Ordinal))
        {
            return;
        }

        try
        {
            _ = Directory.GetFileSystemEntries(mountPoint).Length;
        }
        catch (IOException e) when (e.HResult == Errno.ENOTCONN || e.Message.Contains("not connected", StringComparison.OrdinalIgnoreCase))
        {
            log.LogWarning("{MountPoint} holds a stale FUSE mount of a dead server; detaching it", mountPoint);
            Unmount(mountPoint, log);
            return;
        }
        catch (UnauthorizedAccessException)
        {
        }

        throw new IOException($"{mountPoint} is already a mounted filesystem ({mount.FsType})");
    }
}
