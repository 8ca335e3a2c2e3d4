namespace RestoreFs.Cli.Hosting;

/// <summary>
/// Where a user's RestoreFs run-time files live (sockets, pid files, logs, the VM map): <c>$XDG_RUNTIME_DIR/restorefs</c>,
/// else <c>/run/restorefs</c> for root, else <c>/tmp/restorefs-UID</c>. Each is made with mode 0700 and checked before
/// use — ours, a real directory (no symlink), mode 0700 — so that no other user can plant or read anything in it.
/// </summary>
public static class RuntimePaths
{
    public static string Directory
    {
        get
        {
            var uid = NativeMethods.GetEuid();
            var xdg = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR");
            string dir;
            if (!string.IsNullOrEmpty(xdg) && Path.IsPathRooted(xdg) && System.IO.Directory.Exists(xdg))
            {
                dir = Path.Combine(xdg, "restorefs");
            }
            else if (uid == 0)
            {
                dir = "/run/restorefs";
            }
            else
            {
                dir = Path.Combine(Path.GetTempPath(), $"restorefs-{uid}");
            }

            EnsurePrivateDirectory(dir, uid);
            return dir;
        }
    }

    /// <summary>Creates <paramref name="dir"/> with mode 0700 if missing, then refuses it unless it is a directory we own, mode 0700.</summary>
    public static void EnsurePrivateDirectory(string dir, uint uid)
    {
        try
        {
            System.IO.Directory.CreateDirectory(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }
        catch (IOException)
        {
            // exists as something else: the check below says what
        }

        if (NativeMethods.LStat(dir, out var st) != 0)
        {
            throw new IOException($"run-time directory {dir} cannot be created");
        }

        if ((st.Mode & 0xF000) != 0x4000)
        {
            throw new IOException($"run-time directory {dir} is not a directory (a symlink or file is in its place); refusing to use it");
        }

        if (st.Uid != uid)
        {
            throw new IOException($"run-time directory {dir} belongs to uid {st.Uid}, not to us (uid {uid}); refusing to use it");
        }

        if ((st.Mode & 0x1FF) != 0x1C0)
        {
            File.SetUnixFileMode(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }
    }

    /// <summary>The pid file of the process serving a mount point.</summary>
    public static string MountPidFile(string mountPoint) =>
        Path.Combine(MountsDirectory, Escape(Path.GetFullPath(mountPoint)) + ".pid");

    public static string MountLogFile(string mountPoint) =>
        Path.Combine(MountsDirectory, Escape(Path.GetFullPath(mountPoint)) + ".log");

    private static string MountsDirectory
    {
        get
        {
            var dir = Path.Combine(Directory, "mounts");
            EnsurePrivateDirectory(dir, NativeMethods.GetEuid());
            return dir;
        }
    }

    /// <summary>systemd-style escaping of a path into one file name.</summary>
    public static string Escape(string path)
    {
        var trimmed = path.Trim('/');
        var sb = new System.Text.StringBuilder();
        foreach (var b in System.Text.Encoding.UTF8.GetBytes(trimmed))
        {
            var c = (char)b;
            if (c == '/')
            {
                sb.Append('-');
            }
            else if (char.IsAsciiLetterOrDigit(c) || c is '_' or '.' && sb.Length > 0)
            {
                sb.Append(c);
            }
            else
            {
                sb.Append($"\\x{b:x2}");
            }
        }

        return sb.Length == 0 ? "-" : sb.ToString();
    }
}
