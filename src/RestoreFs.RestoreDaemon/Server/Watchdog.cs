using System.Diagnostics;

namespace RestoreFs.RestoreDaemon.Server;

/// <summary>
/// Idle timeout: expires <see cref="Timeout"/> after the last <see cref="Touch"/>; never while an extraction runs
/// (it is touched again when the last one ends).
/// </summary>
public sealed class Watchdog : IDisposable
{
    private readonly Action expired;
    private readonly Timer timer;
    private readonly Stopwatch clock = Stopwatch.StartNew();
    private long lastTouch;
    private int active;
    private int fired;

    public Watchdog(TimeSpan timeout, Action expired)
    {
        Timeout = timeout;
        this.expired = expired;
        timer = new Timer(_ => Check(), null, TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(Math.Clamp(timeout.TotalMilliseconds / 10, 50, 1000)));
    }

    public TimeSpan Timeout { get; }

    public TimeSpan Remaining => Volatile.Read(ref active) > 0
        ? Timeout
        : Timeout - TimeSpan.FromMilliseconds(clock.ElapsedMilliseconds - Interlocked.Read(ref lastTouch)) is var left && left > TimeSpan.Zero ? left : TimeSpan.Zero;

    public void Touch() => Interlocked.Exchange(ref lastTouch, clock.ElapsedMilliseconds);

    public IDisposable Busy()
    {
        Interlocked.Increment(ref active);
        return new Release(this);
    }

    private void Check()
    {
        if (Volatile.Read(ref active) == 0 && Remaining == TimeSpan.Zero && Interlocked.Exchange(ref fired, 1) == 0)
        {
            expired();
        }
    }

    public void Dispose() => timer.Dispose();

    private sealed class Release(Watchdog owner) : IDisposable
    {
        private int done;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref done, 1) == 0)
            {
                owner.Touch();
                Interlocked.Decrement(ref owner.active);
            }
        }
    }
}
