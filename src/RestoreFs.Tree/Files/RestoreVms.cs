using Microsoft.Extensions.Logging;
using RestoreFs.Fuse;
using RestoreFs.RestoreApi;
using RestoreFs.RestoreVm;

namespace RestoreFs.Tree.Files;

/// <summary>What <see cref="VmFiles"/> asks of restore VMs: run one request against a snapshot's VM.</summary>
public interface IRestoreVms : IAsyncDisposable
{
    /// <summary>Runs <paramref name="request"/> on the snapshot's VM, started when needed. A VM that stopped answering
    /// is restarted and the request retried once; errors of the restore API come out as <see cref="IOException"/>.</summary>
    Task<T> RequestAsync<T>(SnapshotState snapshot, Func<IRestoreClient, Task<T>> request, CancellationToken ct);

    /// <summary>Whether the VM of <paramref name="vm"/> (see <see cref="RestoreVms.VmName"/>) runs now.</summary>
    bool IsRunning(string vm);
}

/// <summary>
/// Restore VMs for <c>files/</c>: one per snapshot, started on first use with the snapshot's images as disks (exports
/// of this mount's NBD server). A VM that died (killed, crashed, idle-stopped) is restarted and the request retried
/// once, so the user only sees a delay. Nothing here knows about listings, maps or caches.
/// </summary>
public sealed class RestoreVms(TreeContext context, RestoreVmManager manager) : IRestoreVms
{
    private readonly ILogger log = context.Logs.CreateLogger<RestoreVms>();

    /// <summary>The VM's name: the datastore, the namespace and the snapshot.</summary>
    public static string VmName(SnapshotState state)
    {
        var s = state.Snapshot;
        var ns = s.Group.Namespace.Path.Length > 0 ? s.Group.Namespace.Path + "/" : "";
        return $"{state.Context.Options.StorePath}:{ns}{s.Name}";
    }

    public bool IsRunning(string vm) => manager.HasLiveSession(vm);

    public async Task<T> RequestAsync<T>(SnapshotState snapshot, Func<IRestoreClient, Task<T>> request, CancellationToken ct)
    {
        var name = VmName(snapshot);
        for (var attempt = 0; ; attempt++)
        {
            VmSession session;
            try
            {
                session = await manager.EnsureRunningAsync(name, Disks(snapshot), ct).ConfigureAwait(false);
            }
            catch (VmLimitException e)
            {
                throw new FuseException(Errors.EAGAIN, e.Message);
            }

            try
            {
                return await request(session.Client).ConfigureAwait(false);
            }
            catch (IOException e) when (attempt == 0)
            {
                log.LogWarning("Restore VM for {Snapshot} stopped answering ({Reason}); restarting it and retrying", snapshot.Snapshot.Name, e.Message);
                await manager.InvalidateAsync(name).ConfigureAwait(false);
            }
            catch (RestoreApiException e)
            {
                throw new IOException(e.Message, e);
            }
        }
    }

    private List<VmDisk> Disks(SnapshotState snapshot)
    {
        var disks = new List<VmDisk>();
        foreach (var archive in snapshot.ImageArchives)
        {
            context.Exports.UriFor(snapshot, archive); // exports it
            var serial = archive.EndsWith(".img.fidx", StringComparison.Ordinal) ? archive[..^".img.fidx".Length] : archive;
            disks.Add(new VmDisk(serial, context.Exports.SocketPath, ImageExports.ExportName(snapshot, archive)));
        }

        return disks;
    }

    public ValueTask DisposeAsync() => manager.DisposeAsync();
}
