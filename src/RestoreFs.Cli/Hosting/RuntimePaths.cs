namespace RestoreFs.Cli.Hosting;

/// <summary>Where a user's RestoreFs run-time files live: <c>$XDG_RUNTIME_DIR/restorefs</c>, else <c>/run/restorefs</c> for root.</summary>
public static class RuntimePaths
{
    public static string Directory
    {
        get
        {
            var xdg = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR");
            string dir;
            if (!string.IsNullOrEmpty(xdg) && System.IO.Directory.Exists(xdg))
            {
                dir = Path.Combine(xdg, "restorefs");
            }
            else if (NativeMethods.GetEuid() == 0)
            {
                dir = "/run/restorefs";
            }
            else
            {
                dir = Path.Combine(Path.GetTempPath(), $"restorefs-{NativeMethods.GetEuid()}");
            }

            System.IO.Directory.CreateDirectory(dir);
            File.SetUnixFileMode(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            return dir;
        }
    }

    /// <summary>The pid file of the process serving a mount point.</summary>
    public static string MountPidFile(string mountPoint) =>
        Path.Combine(Directory, "mounts", Escape(Path.GetFullPath(mountPoint)) + ".pid");

    public static string MountLogFile(string mountPoint) =>
        Path.Combine(Directory, "mounts", Escape(Path.GetFullPath(mountPoint)) + ".log");

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
