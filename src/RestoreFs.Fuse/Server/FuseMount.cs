using Microsoft.Extensions.Logging;
using RestoreFs.Fuse.Kernel;
using RestoreFs.Fuse.Server;

namespace RestoreFs.Fuse;

/// <summary>
/// A mounted filesystem served from a tree of <see cref="FuseNode"/>s. <see cref="MountAsync"/> returns once the
/// kernel has been answered INIT and readers are serving; <see cref="Completion"/> ends when the mount is gone
/// (unmounted by us, <c>umount</c> or <c>fusermount3 -u</c>).
/// </summary>
public sealed class FuseMount : IAsyncDisposable
{
    private readonly FuseSession session;
    private readonly ILogger log;
    private int unmounted;

    private FuseMount(string mountPoint, FuseSession session, (int Major, int Minor) device, ILogger log)
    {
        MountPoint = mountPoint;
        this.session = session;
        Device = device;
        this.log = log;
    }

    public string MountPoint { get; }

    /// <summary>The mount's device number (the bdi name <c>major:minor</c>).</summary>
    public (int Major, int Minor) Device { get; }

    public Task Completion => session.Completion;

    /// <summary>Who this mount answers, and who may cause side effects.</summary>
    public FuseAccessPolicy Access { get; private init; } = new(0, false);

    /// <summary>Nodes the kernel currently holds (root included): lookup accounting, for tests.</summary>
    public int KnownNodes => session.NodeCount;

    /// <summary>Requests a polling reader took (see <see cref="FuseMountOptions.PollMicroseconds"/>).</summary>
    public long PolledRequests => session.PolledRequests;

    /// <summary>Times a blocked handler's reader was relieved by a follower (see <see cref="FuseMountOptions.PollMicroseconds"/>).</summary>
    public long HandOffs => session.HandOffs;

    public static async Task<FuseMount> MountAsync(string mountPoint, FuseNode root, FuseMountOptions options, ILoggerFactory logs,
        CancellationToken ct = default)
    {
        var log = logs.CreateLogger<FuseMount>();
        var full = Path.GetFullPath(mountPoint).TrimEnd('/');
        if (options.ClearStaleMount)
        {
            Mounter.ClearStaleMount(full, log);
        }

        if (!Directory.Exists(full))
        {
            throw new IOException($"mount point {full} does not exist");
        }

        var policy = new FuseAccessPolicy(LibC.GetEuid(), options.AllowOther);
        var kernelAllowOther = Mounter.KernelAllowOther(options);
        var fd = Mounter.Mount(full, options, kernelAllowOther, log, out var viaFusermount);
        var session = new FuseSession(root, log, policy, options.TraceRequests);
        try
        {
            var init = Task.Factory.StartNew(() => session.HandleInit(fd), ct, TaskCreationOptions.LongRunning, TaskScheduler.Default);
            if (await Task.WhenAny(init, Task.Delay(TimeSpan.FromSeconds(30), ct)).ConfigureAwait(false) != init)
            {
                throw new IOException("the kernel sent no INIT within 30 s");
            }

            await init.ConfigureAwait(false);
        }
        catch
        {
            Mounter.Unmount(full, log);
            throw;
        }

        session.Start(fd, Math.Clamp(options.Readers, 1, 16), Math.Clamp(options.PollMicroseconds, 0, 10_000));
        var device = (0, 0);
        if (Mounter.FindMount(full) is { } mount)
        {
            var parts = mount.Device.Split(':');
            device = (int.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture), int.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture));
            SetReadAhead(mount.Device, options.ReadAheadKb, log);
        }

        log.LogInformation("Mounted {MountPoint} ({How}, FUSE 7.{Minor}, {Readers} readers, {Access})", full,
            viaFusermount ? "fusermount3" : "mount(2)", session.Init.Minor, Math.Clamp(options.Readers, 1, 16),
            options.AllowOther ? "every local user may read" : kernelAllowOther ? "owner and root only" : "owner only");
        return new FuseMount(full, session, device, log) { Access = policy };
    }

    /// <summary>Page-cache reads of 1 MiB need the mount's readahead raised (root only).</summary>
    private static void SetReadAhead(string device, int kb, ILogger log)
    {
        var path = $"/sys/class/bdi/{device}/read_ahead_kb";
        try
        {
            if (kb > 0 && File.Exists(path))
            {
                File.WriteAllText(path, kb.ToString(System.Globalization.CultureInfo.InvariantCulture));
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            log.LogDebug("could not set {Path}: {Reason}", path, e.Message);
        }
    }

    /// <summary>Detaches the mount lazily and waits for the readers; aborts the connection if it lingers.</summary>
    public async Task UnmountAsync()
    {
        if (Interlocked.Exchange(ref unmounted, 1) == 0 && !Completion.IsCompleted)
        {
            Mounter.Unmount(MountPoint, log);
        }

        if (await Task.WhenAny(Completion, Task.Delay(TimeSpan.FromSeconds(10))).ConfigureAwait(false) == Completion)
        {
            return;
        }

        // Files still open on the detached mount keep the connection alive: abort it through fusectl.
        log.LogWarning("{MountPoint}: the connection is still in use after unmount; aborting it", MountPoint);
        Abort();
        await Task.WhenAny(Completion, Task.Delay(TimeSpan.FromSeconds(10))).ConfigureAwait(false);
    }

    private void Abort()
    {
        const string connections = "/sys/fs/fuse/connections";
        try
        {
            if (!File.Exists(Path.Combine(connections, Device.Minor.ToString(System.Globalization.CultureInfo.InvariantCulture), "abort")))
            {
                LibC.Mount("fusectl", connections, "fusectl", 0, string.Empty);
            }

            File.WriteAllText(Path.Combine(connections, Device.Minor.ToString(System.Globalization.CultureInfo.InvariantCulture), "abort"), "1");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            log.LogWarning("aborting the FUSE connection failed: {Reason}", e.Message);
        }
    }

    public async ValueTask DisposeAsync() => await UnmountAsync().ConfigureAwait(false);
}
