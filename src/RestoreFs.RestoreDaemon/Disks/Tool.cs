using System.Diagnostics;

namespace RestoreFs.RestoreDaemon.Disks;

internal readonly record struct ToolResult(int Code, string Out, string Err)
{
    public bool Ok => Code == 0;

    /// <summary>The first non-empty line of stderr (else stdout), for error messages.</summary>
    public string FirstLine
    {
        get
        {
            foreach (var text in new[] { Err, Out })
            {
                var line = text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault();
                if (line is not null)
                {
                    return line;
                }
            }

            return $"exit code {Code}";
        }
    }
}

/// <summary>Runs the external tools the disk side needs (losetup, lvm, ntfs-3g) with a time limit.</summary>
internal static class Tool
{
    /// <summary>The tool's path: from PATH, else /usr/sbin or /sbin (a daemon started without them in PATH).</summary>
    public static string Resolve(string file)
    {
        if (file.Contains('/', StringComparison.Ordinal))
        {
            return file;
        }

        var dirs = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Concat(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]);
        foreach (var dir in dirs)
        {
            var candidate = Path.Combine(dir, file);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        return file;
    }

    /// <param name="stdin">Bytes for the tool's standard input (a passphrase: never an argument), then end of file.</param>
    public static ToolResult Run(string file, IReadOnlyList<string> args, TimeSpan? timeout = null, byte[]? stdin = null)
    {
        var info = new ProcessStartInfo(Resolve(file))
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = stdin is not null, UseShellExecute = false,
        };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        // lvm complains about every inherited descriptor otherwise; its output is parsed in the C locale.
        info.Environment["LVM_SUPPRESS_FD_WARNINGS"] = "1";
        info.Environment["LC_ALL"] = "C";

        Process process;
        try
        {
            process = Process.Start(info) ?? throw new InvalidOperationException($"{file} did not start");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return new ToolResult(-1, "", $"cannot run {file}: {e.Message}");
        }

        using (process)
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            if (stdin is not null)
            {
                try
                {
                    process.StandardInput.BaseStream.Write(stdin);
                    process.StandardInput.Close();
                }
                catch (IOException)
                {
                    // the tool ended without reading: its exit code says why
                }
            }

            var limit = timeout ?? TimeSpan.FromSeconds(60);
            if (!process.WaitForExit(limit))
            {
                try
                {
                    process.Kill(entireProcessTree: true);
                }
                catch (InvalidOperationException)
                {
                }

                return new ToolResult(-1, "", $"{file} {string.Join(' ', args)} did not finish within {limit.TotalSeconds:0} s");
            }

            process.WaitForExit();
            return new ToolResult(process.ExitCode, stdout.Result, stderr.Result);
        }
    }
}
