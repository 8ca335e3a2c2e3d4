using RestoreFs.RestoreApi;

namespace RestoreFs.RestoreDaemon.Server;

/// <summary>How a request to an endpoint re-arms the idle <see cref="Watchdog"/>.</summary>
internal enum IdleUse
{
    /// <summary>Not at all.</summary>
    None,

    /// <summary>Re-armed when the request is let in.</summary>
    Rearm,

    /// <summary>Re-armed when the request is let in and again once it is answered (a long answer is activity).</summary>
    RearmAround,

    /// <summary>Re-armed when let in with a valid ticket and without <c>keep-timeout</c> (status: a probe must not keep
    /// the VM alive).</summary>
    RearmUnlessKeepTimeout,

    /// <summary>Not re-armed on entry; the handler holds the watchdog busy while it streams (extract), which re-arms it
    /// at the end.</summary>
    BusyInHandler,
}

/// <summary>One endpoint below <c>/api2/json</c>: its name, whether it needs the ticket, its use of the watchdog and
/// the handler that answers it (with 200; errors are exceptions, see <see cref="DaemonServer"/>).</summary>
internal sealed record Route(string Endpoint, bool NeedsTicket, IdleUse Idle, Func<Stream, Http.Request, CancellationToken, Task> Handler);
