using System.Text.RegularExpressions;

namespace RestoreFs.TestSupport;

/// <summary>A process's memory from <c>/proc/PID/status</c>, in MiB: VmRSS, VmHWM (peak RSS) and RssAnon.</summary>
public readonly partial record struct ProcessMemory(long RssMb, long PeakMb, long AnonMb)
{
    [GeneratedRegex(@"^(VmRSS|VmHWM|RssAnon):\s+(\d+) kB", RegexOptions.Multiline)]
    private static partial Regex Fields();

    public static ProcessMemory Of(int pid)
    {
        var m = Fields().Matches(File.ReadAllText($"/proc/{pid}/status")).ToDictionary(x => x.Groups[1].Value, x => long.Parse(x.Groups[2].Value) / 1024);
        return new ProcessMemory(m["VmRSS"], m["VmHWM"], m["RssAnon"]);
    }

    /// <summary>A mount's server process: the one whose command line names the mount point and runs in the foreground.</summary>
    public static int MountServer(string mountPoint) => Directory.GetDirectories("/proc").Select(Path.GetFileName).Where(p => p!.All(char.IsDigit)).Select(int.Parse!)
        .First(pid =>
        {
            try
            {
                var cmd = File.ReadAllText($"/proc/{pid}/cmdline").Split('\0');
                return cmd.Contains(mountPoint) && cmd.Contains("--foreground") && cmd.Contains("mount");
            }
            catch (IOException)
            {
                return false;
            }
        });
}
