using System.Globalization;
using System.Runtime.InteropServices;

namespace RestoreFs.Cli.Hosting;

/// <summary>
/// The pid file of a mount's serving process, proof of life included: the server holds an exclusive flock on it for
/// as long as it runs, and writes its pid, its start time (field 22 of /proc/PID/stat) and its NBD socket. Whoever finds
/// the lock free knows the server is dead — whatever process now has that pid — and may clean up after it; a held lock
/// whose pid and start time still match is the live server, the only process ever signalled.
/// </summary>
public sealed class PidFile : IDisposable
{
    private int fd;

    private PidFile(int fd)
    {
        this.fd = fd;
    }

    /// <summary>What a pid file says.</summary>
    public sealed record Content(int Pid, ulong StartTime, string? NbdSocket);

    /// <summary>Takes the lock and writes our identity; throws when another live server holds it.</summary>
    public static PidFile Acquire(string path, string? nbdSocket)
    {
        var fd = NativeMethods.Open(path, NativeMethods.ORdWr | NativeMethods.OCreat | NativeMethods.ONoFollow | NativeMethods.OCloExec, 0x180);
        if (fd < 0)
        {
            throw new IOException($"cannot open pid file {path}: errno {Marshal.GetLastPInvokeError()}");
        }

        if (NativeMethods.Flock(fd, NativeMethods.LockEx | NativeMethods.LockNb) != 0)
        {
            NativeMethods.Close(fd);
            throw new IOException($"another restorefs process serves this mount point (pid file {path} is locked)");
        }

        var pidFile = new PidFile(fd);
        pidFile.Write(nbdSocket);
        return pidFile;
    }

    /// <summary>Rewrites the content (our identity and the NBD socket) while keeping the lock.</summary>
    public unsafe void Write(string? nbdSocket)
    {
        var text = System.Text.Encoding.UTF8.GetBytes(
            $"{Environment.ProcessId} {StartTimeOf(Environment.ProcessId)}\n{nbdSocket ?? string.Empty}\n");
        NativeMethods.FTruncate(fd, 0);
        fixed (byte* p = text)
        {
            NativeMethods.PWrite(fd, p, text.Length, 0);
        }
    }

    /// <summary>
    /// Reads the pid file. <paramref name="live"/> is true only when a server holds the lock and its pid still names the
    /// same process (same start time); a missing file gives null.
    /// </summary>
    public static Content? Inspect(string path, out bool live)
    {
        live = false;
        var fd = NativeMethods.Open(path, NativeMethods.ORdOnly | NativeMethods.ONoFollow | NativeMethods.OCloExec, 0);
        if (fd < 0)
        {
            return null;
        }

        try
        {
            var content = Parse(ReadAll(fd));
            var locked = NativeMethods.Flock(fd, NativeMethods.LockEx | NativeMethods.LockNb) != 0;
            live = locked && content is not null && StartTimeOf(content.Pid) == content.StartTime && content.StartTime != 0;
            return content;
        }
        catch (IOException)
        {
            return null;
        }
        finally
        {
            NativeMethods.Close(fd);
        }
    }

    /// <summary>
    /// The pid file's text, read with plain read(2): .NET's own file API takes a shared flock, which the live server's
    /// exclusive lock refuses.
    /// </summary>
    public static string ReadText(string path)
    {
        var fd = NativeMethods.Open(path, NativeMethods.ORdOnly | NativeMethods.ONoFollow | NativeMethods.OCloExec, 0);
        if (fd < 0)
        {
            throw new FileNotFoundException($"cannot open {path}", path);
        }

        try
        {
            return ReadAll(fd);
        }
        finally
        {
            NativeMethods.Close(fd);
        }
    }

    private static unsafe string ReadAll(int fd)
    {
        var buffer = new byte[4096];
        var used = 0;
        fixed (byte* p = buffer)
        {
            while (used < buffer.Length)
            {
                var n = NativeMethods.PRead(fd, p + used, buffer.Length - used, used);
                if (n <= 0)
                {
                    break;
                }

                used += (int)n;
            }
        }

        return System.Text.Encoding.UTF8.GetString(buffer, 0, used);
    }

    public static Content? Parse(string text)
    {
        var lines = text.Split('\n');
        var first = lines[0].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (first.Length < 1 || !int.TryParse(first[0], NumberStyles.None, CultureInfo.InvariantCulture, out var pid) || pid <= 0)
        {
            return null;
        }

        var start = first.Length > 1 && ulong.TryParse(first[1], NumberStyles.None, CultureInfo.InvariantCulture, out var s) ? s : 0;
        var socket = lines.Length > 1 && lines[1].Length > 0 ? lines[1] : null;
        return new Content(pid, start, socket);
    }

    /// <summary>A process's start time in clock ticks since boot; 0 when there is no such process.</summary>
    public static ulong StartTimeOf(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return fields.Length > 19 && ulong.TryParse(fields[19], NumberStyles.None, CultureInfo.InvariantCulture, out var t) ? t : 0;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return 0;
        }
    }

    public void Dispose()
    {
        if (fd >= 0)
        {
            NativeMethods.Close(fd);
            fd = -1;
        }
    }
}
