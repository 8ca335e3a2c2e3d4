using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using RestoreFs.RestoreVm;
using RestoreFs.Tree;

namespace RestoreFs.Cli.Hosting;

/// <summary>
/// Journal replay without writing the backup: every VM session gets its disks as throwaway copy-on-write overlays of
/// the mount's NBD exports (export <c>&lt;image export&gt;@&lt;session&gt;</c>), their bytes in a file under the VM's
/// private directory (0700, inside the mount's run-time directory), at most <see cref="MaxBytesPerDisk"/> each.
/// They are freed when the VM is gone. Host-side reads of the image (file maps, <c>.img</c>, <c>.img.nbd</c>) never see
/// them; the daemon gives no file maps for a volume whose mount wrote (see DEVELOPERS.md, journal replay).
/// </summary>
public sealed class VmDiskOverlays(ImageExports exports, ILogger log) : IVmDiskOverlays
{
    /// <summary>Bound of one disk's overlay: more than any journal replay writes (ext4 journals ≤ 1 GiB, xfs logs ≤ 2 GiB
    /// but replays write far less than the log); a write beyond fails, the mount then falls back to no replay.</summary>
    public static long MaxBytesPerDisk { get; set; } = 1L << 30;

    private readonly ConcurrentDictionary<string, List<string>> sessions = new(StringComparer.Ordinal);

    public IReadOnlyList<VmDisk> Open(string vmDirectory, IReadOnlyList<VmDisk> disks)
    {
        var session = Path.GetFileName(Path.TrimEndingDirectorySeparator(vmDirectory));
        var names = new List<string>();
        var result = new List<VmDisk>();
        try
        {
            for (var i = 0; i < disks.Count; i++)
            {
                var disk = disks[i];
                var name = $"{disk.Export}@{session}";
                exports.AddOverlayExport(disk.Export, name, Path.Combine(vmDirectory, $"overlay-{i}.tmp"), MaxBytesPerDisk);
                names.Add(name);
                result.Add(disk with { Export = name, Writable = true });
            }
        }
        catch
        {
            foreach (var name in names)
            {
                exports.RemoveOverlayExport(name);
            }

            throw;
        }

        sessions[vmDirectory] = names;
        log.LogDebug("Restore VM session {Session}: {Count} disk(s) with throwaway overlays (journal replay)", session, names.Count);
        return result;
    }

    public void Release(string vmDirectory)
    {
        if (!sessions.TryRemove(vmDirectory, out var names))
        {
            return;
        }

        foreach (var name in names)
        {
            var written = exports.RemoveOverlayExport(name);
            if (written > 0)
            {
                log.LogInformation("Freed the overlay of {Export}: {Bytes} bytes written by the restore VM (journal replay)", name, written);
            }
        }
    }
}
