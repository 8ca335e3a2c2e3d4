using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using RestoreFs.Fuse;
using RestoreFs.Tree;

namespace RestoreFs.Cli.Hosting;

/// <summary>What <c>restorefs mount</c> was asked to do.</summary>
public sealed record MountSettings(string StorePath, string MountPoint, TreeOptions Tree, bool StartVms, FuseMountOptions? Fuse = null);

/// <summary>
/// Serves one mount for the life of the host: mounts, reports readiness, and unmounts on SIGINT/SIGTERM, on
/// <c>restorefs umount</c>, or when someone else unmounts it (<c>umount</c>, <c>fusermount3 -u</c>).
/// </summary>
public sealed class MountService(
    MountSettings settings,
    ILoggerFactory logs,
    IHostApplicationLifetime lifetime,
    Func<TreeContext, IFilesBackend?>? filesBackend = null) : BackgroundService
{
    private readonly ILogger log = logs.CreateLogger<MountService>();

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        MountedTree? tree = null;
        PidFile? pid = null;
        var pidFile = RuntimePaths.MountPidFile(settings.MountPoint);
        try
        {
            // A server killed earlier may have left devices, a stale mount, a socket and VMs: clean up first.
            if (PidFile.Inspect(pidFile, out var live) is { } previous && !live)
            {
                log.LogWarning("The previous server of {MountPoint} (pid {Pid}) died; cleaning up after it", settings.MountPoint, previous.Pid);
                StaleMount.Cleanup(settings.MountPoint, previous, log);
            }

            pid = PidFile.Acquire(pidFile, null);
            tree = await MountedTree.MountAsync(settings.StorePath, settings.MountPoint, settings.Tree, logs,
                settings.StartVms ? filesBackend : null, settings.Fuse, stoppingToken).ConfigureAwait(false);
            pid.Write(tree.Context.Exports.PlannedSocketPath); // the lock is never let go between the two writes
            Daemon.SignalReady(RuntimePaths.MountLogFile(settings.MountPoint));

            var mountPoint = Path.GetFullPath(settings.MountPoint);
            using var watch = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken);
            var gone = WatchMountTableAsync(mountPoint, watch.Token);
            var ended = await Task.WhenAny(tree.Completion, gone, Task.Delay(Timeout.Infinite, stoppingToken)).ConfigureAwait(false);
            await watch.CancelAsync().ConfigureAwait(false);
            if (ended == tree.Completion || ended == gone)
            {
                log.LogInformation("{MountPoint} was unmounted; cleaning up", settings.MountPoint);
            }
            else
            {
                log.LogInformation("Stopping: unmounting {MountPoint}", settings.MountPoint);
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
        catch (Exception e)
        {
            log.LogError("Mounting {Store} on {MountPoint} failed: {Reason}", settings.StorePath, settings.MountPoint, e.Message);
            log.LogDebug(e, "Mount failure details");
            Environment.ExitCode = 1;
        }
        finally
        {
            if (tree is not null)
            {
                await tree.DisposeAsync().ConfigureAwait(false);
                TryDelete(pidFile);
            }

            pid?.Dispose();

            lifetime.StopApplication();
        }
    }

    /// <summary>Completes when the mount point no longer appears in the mount table.</summary>
    private static async Task WatchMountTableAsync(string mountPoint, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(TimeSpan.FromSeconds(2), ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            if (!IsMounted(mountPoint))
            {
                return;
            }
        }
    }

    public static bool IsMounted(string mountPoint)
    {
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            var fields = line.Split(' ');
            if (fields.Length > 4 && Unescape(fields[4]) == mountPoint && line.Contains(" - fuse", StringComparison.Ordinal))
            {
                return true;
            }
        }

        return false;
    }

    private static string Unescape(string field) =>
        field.Replace("\\040", " ", StringComparison.Ordinal).Replace("\\011", "\t", StringComparison.Ordinal)
            .Replace("\\012", "\n", StringComparison.Ordinal).Replace("\\134", "\\", StringComparison.Ordinal);

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
        }
    }
}
