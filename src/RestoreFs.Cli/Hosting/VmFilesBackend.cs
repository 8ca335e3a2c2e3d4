using Microsoft.Extensions.Logging;
using RestoreFs.RestoreApi;
using RestoreFs.RestoreVm;
using RestoreFs.Tree;

namespace RestoreFs.Cli.Hosting;

/// <summary>
/// <c>files/</c> through restore VMs: one VM per snapshot, started on first use with the snapshot's images as disks
/// (exports of this mount's NBD server). A VM that died (killed, crashed, idle-stopped) is restarted and the request
/// retried once, so the user only sees a delay.
/// </summary>
public sealed class VmFilesBackend(TreeContext context, RestoreVmManager manager) : IFilesBackend, IAsyncDisposable
{
    private readonly ILogger log = context.Logs.CreateLogger<VmFilesBackend>();

    public static string VmName(SnapshotState state)
    {
        var s = state.Snapshot;
        var ns = s.Group.Namespace.Path.Length > 0 ? s.Group.Namespace.Path + "/" : "";
        return $"{state.Context.Options.StorePath}:{ns}{s.Name}";
    }

    public async ValueTask<IReadOnlyList<RemoteEntry>> ListAsync(SnapshotState snapshot, byte[] path, CancellationToken ct) =>
        await WithVmAsync(snapshot, async client =>
        {
            var list = new List<RemoteEntry>();
            await foreach (var e in client.ListAsync(path, ct).ConfigureAwait(false))
            {
                list.Add(new RemoteEntry(e.Name, e.Type, e.Size ?? 0, e.MTime ?? 0, e.Mode, e.Uid, e.Gid, e.Target, e.Error));
            }

            return (IReadOnlyList<RemoteEntry>)list;
        }, ct).ConfigureAwait(false);

    public async ValueTask<int> ReadAsync(SnapshotState snapshot, byte[] path, long offset, Memory<byte> buffer, CancellationToken ct) =>
        await WithVmAsync(snapshot, client => client.ReadAsync(path, offset, buffer[..Math.Min(buffer.Length, 1 << 20)], ct), ct).ConfigureAwait(false);

    private async Task<T> WithVmAsync<T>(SnapshotState snapshot, Func<IRestoreClient, Task<T>> request, CancellationToken ct)
    {
        var name = VmName(snapshot);
        for (var attempt = 0; ; attempt++)
        {
            var session = await manager.EnsureRunningAsync(name, Disks(snapshot), ct).ConfigureAwait(false);
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
