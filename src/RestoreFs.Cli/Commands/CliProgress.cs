using System.Diagnostics;

namespace RestoreFs.Cli.Commands;

/// <summary>Progress of a long copy on stderr: a bar redrawn in place on a terminal; otherwise, when
/// <paramref name="logWhenRedirected"/>, a line every 10 % (<c>NAME: 40% (DONE/TOTAL bytes, RATE MB/s, …)</c>), so that
/// logs show it without a line per step.</summary>
public sealed class CliProgress(string name, long total, bool logWhenRedirected = true) : IDisposable
{
    private readonly bool terminal = !Console.IsErrorRedirected;
    private readonly Stopwatch clock = Stopwatch.StartNew();
    private readonly object gate = new();
    private int lastShown = -1;

    /// <param name="done">Bytes done so far.</param>
    /// <param name="extra">What else to show: a short form for the bar, a longer one for the log line.</param>
    public void Report(long done, (string Terminal, string Log)? extra = null)
    {
        if (!terminal && !logWhenRedirected)
        {
            return;
        }

        var percent = (int)(done * 100 / Math.Max(1, total));
        lock (gate)
        {
            if (percent == lastShown || (!terminal && percent / 10 == lastShown / 10 && percent != 100))
            {
                return;
            }

            lastShown = percent;
            var rate = done / 1e6 / Math.Max(0.001, clock.Elapsed.TotalSeconds);
            if (terminal)
            {
                var filled = percent / 4;
                Console.Error.Write($"\r{name} [{new string('#', filled)}{new string('.', 25 - filled)}] {percent,3}% {rate,6:0} MB/s  {extra?.Terminal} ");
            }
            else
            {
                Console.Error.WriteLine($"{name}: {percent}% ({done}/{total} bytes, {rate:0} MB/s{(extra is { } e ? ", " + e.Log : "")})");
            }
        }
    }

    public void Dispose()
    {
        if (terminal && lastShown >= 0)
        {
            Console.Error.WriteLine();
        }
    }
}
