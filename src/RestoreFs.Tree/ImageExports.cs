using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using RestoreFs.Nbd;

namespace RestoreFs.Tree;

/// <summary>
/// The mount's NBD server (one export per image, added on first use) and the block devices attached through the
/// companion <c>.img.dev</c> paths. Disposing detaches every device and stops the server.
/// </summary>
public sealed class ImageExports : IAsyncDisposable
{
    private readonly TreeContext context;
    private readonly object gate = new();
    private readonly ConcurrentDictionary<string, IBlockSource> exports = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, (string Base, OverlayBlockSource Overlay)> overlays = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, Lazy<Task<AttachedDevice>>> devices = new(StringComparer.Ordinal);
    private NbdServer? server;
    private string? socketPath;

    public ImageExports(TreeContext context)
    {
        this.context = context;
    }

    /// <summary>Export name of an image: <c>[ns/a/b/]vm/100/2024-05-01T100000Z/drive-scsi0.img</c> (no colons).</summary>
    public static string ExportName(SnapshotState state, string archive)
    {
        var s = state.Snapshot;
        var prefix = s.Group.Namespace.Path.Length > 0 ? "ns/" + s.Group.Namespace.Path + "/" : string.Empty;
        return $"{prefix}{s.Group.Type}/{s.Group.Id}/{s.TimeName.Replace(":", string.Empty, StringComparison.Ordinal)}/{SnapshotDirectory.ImageName(archive)}";
    }

    /// <summary>Makes sure the image is exported and returns the export's URI.</summary>
    public string UriFor(SnapshotState state, string archive)
    {
        var nbd = EnsureServer();
        var name = ExportName(state, archive);
        exports.GetOrAdd(name, n =>
        {
            var source = new LazyImageSource(state, archive);
            nbd.AddExport(n, source, $"{state.Snapshot.Name} {archive}");
            return source;
        });
        return nbd.UriFor(name);
    }

    /// <summary>
    /// Adds <paramref name="overlayExport"/>: a writable, throwaway copy-on-write view of the export
    /// <paramref name="baseExport"/> (which must exist, see <see cref="UriFor"/>) whose writes go to
    /// <paramref name="file"/> (deleted at once; null: memory), at most <paramref name="maxBytes"/>. The image is never
    /// written. <see cref="RemoveOverlayExport"/> frees it.
    /// </summary>
    public OverlayBlockSource AddOverlayExport(string baseExport, string overlayExport, string? file, long maxBytes)
    {
        var nbd = EnsureServer();
        if (!exports.TryGetValue(baseExport, out var source))
        {
            throw new InvalidOperationException($"no export {baseExport} to lay an overlay over");
        }

        var overlay = new OverlayBlockSource(source, file, maxBytes);
        if (!overlays.TryAdd(overlayExport, (baseExport, overlay)))
        {
            overlay.Dispose();
            throw new InvalidOperationException($"the overlay export {overlayExport} exists already");
        }

        nbd.AddExport(overlayExport, overlay, $"throwaway overlay of {baseExport}");
        return overlay;
    }

    /// <summary>Removes an overlay export and frees its bytes; returns the bytes it held (-1: no such overlay).</summary>
    public long RemoveOverlayExport(string overlayExport)
    {
        if (!overlays.TryRemove(overlayExport, out var entry))
        {
            return -1;
        }

        lock (gate)
        {
            server?.RemoveExport(overlayExport);
        }

        var written = entry.Overlay.WrittenBytes;
        entry.Overlay.Dispose();
        return written;
    }

    /// <summary>
    /// True when a live overlay of this image (a restore VM's session) holds a write in [offset, offset+length): a
    /// reader of the image itself would see other bytes there than the VM does. The hook for host-side mapped reads.
    /// </summary>
    public bool OverlayTouches(SnapshotState state, string archive, long offset, long length)
    {
        var name = ExportName(state, archive);
        return overlays.Values.Any(o => o.Base == name && o.Overlay.Touches(offset, length));
    }

    /// <summary>The URI <see cref="UriFor"/> will answer, computed without starting anything.</summary>
    public string PlannedUri(SnapshotState state, string archive)
    {
        var export = ExportName(state, archive);
        return $"nbd+unix:///{Uri.EscapeDataString(export).Replace("%2F", "/", StringComparison.Ordinal)}?socket={PlannedSocketPath}";
    }

    /// <summary>Where the mount's NBD server listens (once started).</summary>
    public string PlannedSocketPath => Path.Combine(context.Options.RuntimeDirectory, $"nbd-{Environment.ProcessId}.sock");

    public string SocketPath
    {
        get
        {
            EnsureServer();
            return socketPath!;
        }
    }

    private NbdServer EnsureServer()
    {
        lock (gate)
        {
            if (server is not null)
            {
                return server;
            }

            Directory.CreateDirectory(context.Options.RuntimeDirectory);
            socketPath = PlannedSocketPath;
            var created = new NbdServer(new NbdServerOptions { UnixSocketPath = socketPath }, context.Logs);
            created.StartAsync(CancellationToken.None).GetAwaiter().GetResult();
            context.Log.LogInformation("NBD server for the mount listens on {Socket}", socketPath);
            server = created;
            return created;
        }
    }

    /// <summary>Attaches the image as a block device once; later calls return the same device.</summary>
    public Task<AttachedDevice> AttachAsync(SnapshotState state, string archive, string imagePathInMount)
    {
        var key = ExportName(state, archive);
        var lazy = devices.GetOrAdd(key, _ => new Lazy<Task<AttachedDevice>>(() => Task.Run(async () =>
        {
            var uri = UriFor(state, archive);
            var size = state.OpenImage(archive).Size;
            var attacher = BlockDeviceAttacher.CreateDefault(context.Logs);
            var device = await attacher.AttachAsync(new AttachRequest(imagePathInMount, socketPath, key, size), CancellationToken.None)
                .ConfigureAwait(false);
            context.Log.LogInformation("Attached {Image} of {Snapshot} as {Device} ({Kind}; export {Uri})",
                archive, state.Snapshot.Name, device.DevicePath, device.Kind, uri);
            return device;
        })));
        var task = lazy.Value;
        // A failed attach is not kept: the next open of the .dev path tries again (it used to get the same failure
        // until a caller happened to see the task already faulted).
        _ = task.ContinueWith(_ => devices.TryRemove(new KeyValuePair<string, Lazy<Task<AttachedDevice>>>(key, lazy)), CancellationToken.None,
            TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        return task;
    }

    /// <summary>The device path of an attached image, or null when it has not been attached.</summary>
    public string? AttachedPath(SnapshotState state, string archive) =>
        devices.TryGetValue(ExportName(state, archive), out var lazy) && lazy.IsValueCreated && lazy.Value.IsCompletedSuccessfully
            ? lazy.Value.Result.DevicePath
            : null;

    /// <summary>Devices attached so far (for status output and clean-up).</summary>
    public IReadOnlyList<AttachedDevice> AttachedDevices =>
        devices.Values.Where(l => l.IsValueCreated && l.Value.IsCompletedSuccessfully).Select(l => l.Value.Result).ToList();

    public async ValueTask DetachAllAsync()
    {
        foreach (var (key, lazy) in devices.ToArray())
        {
            devices.TryRemove(key, out _);
            if (!lazy.IsValueCreated)
            {
                continue;
            }

            try
            {
                var device = await lazy.Value.ConfigureAwait(false);
                await device.DisposeAsync().ConfigureAwait(false);
                context.Log.LogInformation("Detached {Device}", device.DevicePath);
            }
            catch (Exception e)
            {
                context.Log.LogWarning(e, "Detaching the device of {Export} failed", key);
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await DetachAllAsync().ConfigureAwait(false);
        foreach (var name in overlays.Keys.ToList())
        {
            RemoveOverlayExport(name);
        }

        NbdServer? s;
        lock (gate)
        {
            s = server;
            server = null;
        }

        if (s is not null)
        {
            await s.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Opens the image reader only when a client first reads, so listing exports costs nothing. A failed open
    /// (the store out of reach for a moment) fails that read only: the next read opens again, so an export first read
    /// during an outage works once the store is back.</summary>
    private sealed class LazyImageSource(SnapshotState state, string archive) : IBlockSource
    {
        private readonly object gate = new();
        private ImageBlockSource? opened;
        private long size = -1;

        private ImageBlockSource Inner
        {
            get
            {
                if (Volatile.Read(ref opened) is { } source)
                {
                    return source;
                }

                lock (gate)
                {
                    return opened ??= new ImageBlockSource(state.OpenImage(archive));
                }
            }
        }

        public long Size
        {
            get
            {
                if (size < 0)
                {
                    size = (long)state.Manifest.Files.First(f => f.FileName == archive).Size;
                }

                return size;
            }
        }

        public async ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct)
        {
            try
            {
                await Inner.ReadAsync(offset, destination, ct).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                state.ExportReadFailures.Add(archive, offset, destination.Length, e.Message);
                throw;
            }
        }

        public IEnumerable<BlockExtent> GetExtents(long offset, long length) => Inner.GetExtents(offset, length);
    }
}
