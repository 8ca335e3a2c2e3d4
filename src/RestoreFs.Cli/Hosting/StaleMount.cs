using System.Diagnostics;
using Microsoft.Extensions.Logging;
using RestoreFs.RestoreVm;

namespace RestoreFs.Cli.Hosting;

/// <summary>
/// Cleans up after a mount whose serving process died (kill -9, OOM): loop devices over its image files, the stale
/// FUSE mount, its NBD socket, its restore VMs and its pid file. Run by the next <c>umount</c> or <c>mount</c> of
/// that mount point; never signals a process.
/// </summary>
public static class StaleMount
{
    public static void Cleanup(string mountPoint, PidFile.Content? dead, ILogger log)
    {
        var full = Path.GetFullPath(mountPoint).TrimEnd('/');
        foreach (var loop in LoopDevicesUnder(full))
        {
            log.LogWarning("Detaching {Device}, left attached by the dead server of {MountPoint}", loop, full);
            Run("losetup", "-d", loop);
        }

        if (MountService.IsMounted(full))
        {
            log.LogWarning("Detaching the stale mount on {MountPoint}", full);
            if (NativeMethods.Umount2(full, NativeMethods.MntDetach) != 0)
            {
                Run("fusermount3", "-u", "-z", "-q", "--", full);
            }
        }

        if (dead?.NbdSocket is { } socket && File.Exists(socket) &&
            Path.GetDirectoryName(socket) == RuntimePaths.Directory && Path.GetFileName(socket).StartsWith("nbd-", StringComparison.Ordinal))
        {
            TryDelete(socket);
        }

        try
        {
            var manager = new RestoreVmManager(FilesBackendFactory.Options(FilesBackendFactory.ImageDirectory() ?? RuntimePaths.Directory),
                Logging.LogSetup.Factory);
            manager.CleanupAsync(CancellationToken.None).GetAwaiter().GetResult();
        }
        catch (Exception e)
        {
            log.LogWarning("Cleaning up restore VMs failed: {Reason}", e.Message);
        }

        TryDelete(RuntimePaths.MountPidFile(full));
    }

    /// <summary>Loop devices whose backing file lies below <paramref name="mountPoint"/>.</summary>
    public static IReadOnlyList<string> LoopDevicesUnder(string mountPoint)
    {
        var found = new List<string>();
        if (!Directory.Exists("/sys/block"))
        {
            return found;
        }

        foreach (var dir in Directory.EnumerateDirectories("/sys/block", "loop*"))
        {
            try
            {
                var backing = Path.Combine(dir, "loop", "backing_file");
                if (File.Exists(backing) && File.ReadAllText(backing).Trim().StartsWith(mountPoint + "/", StringComparison.Ordinal))
                {
                    found.Add("/dev/" + Path.GetFileName(dir));
                }
            }
            catch (IOException)
            {
            }
        }

        return found;
    }

    private static void Run(string tool, params string[] args)
    {
        try
        {
            var psi = new ProcessStartInfo(tool, args) { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
            Secrets.MinimalEnvironment(psi);
            using var p = Process.Start(psi);
            p?.WaitForExit(10_000);
        }
        catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception)
        {
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }
}
