using System.Globalization;
using RestoreFs.RestoreApi;

namespace RestoreFs.RestoreDaemon;

/// <summary>
/// The restore VM's boot on the guest's clock, for the status answer (the host logs it; bench/restore-vm prints it):
/// our /init writes when it started and when its early modules were in (<see cref="InitFile"/>), the daemon marks
/// its own start, when it listens and when its disk scan is done.
/// </summary>
internal static class GuestBoot
{
    /// <summary>Lines "init SECONDS" and "modules SECONDS" (kernel uptime), written by the VM's /init.</summary>
    public const string InitFile = "/run/restorefs-boot";

    private static double daemon = -1;
    private static double listening = -1;
    private static double scanned = -1;

    public static void DaemonStarted() => Volatile.Write(ref daemon, Uptime());

    public static void Listening()
    {
        if (Volatile.Read(ref listening) < 0)
        {
            Volatile.Write(ref listening, Uptime());
        }
    }

    public static void Scanned() => Volatile.Write(ref scanned, Uptime());

    /// <summary>The steps so far; −1 for one not reached or not known.</summary>
    public static BootTimes Read()
    {
        double init = -1, modules = -1;
        try
        {
            foreach (var line in File.ReadLines(InitFile))
            {
                var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (parts.Length == 2 && double.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out var at))
                {
                    switch (parts[0])
                    {
                        case "init": init = at; break;
                        case "modules": modules = at; break;
                    }
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // not started by our /init: those steps stay unknown
        }

        return new BootTimes(init, modules, Volatile.Read(ref daemon), Volatile.Read(ref listening), Volatile.Read(ref scanned), Uptime());
    }

    /// <summary>Seconds since the kernel started (the first field of /proc/uptime); −1 where it cannot be read.</summary>
    public static double Uptime()
    {
        try
        {
            var text = File.ReadAllText("/proc/uptime");
            var end = text.IndexOf(' ', StringComparison.Ordinal);
            return double.TryParse(end < 0 ? text : text[..end], NumberStyles.Float, CultureInfo.InvariantCulture, out var s) ? s : -1;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return -1;
        }
    }
}
