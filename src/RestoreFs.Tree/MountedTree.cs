using Microsoft.Extensions.Logging;
using RestoreFs.Datastore;
using RestoreFs.Fuse;

namespace RestoreFs.Tree;

/// <summary>
/// A datastore mounted as the RestoreFs tree. Owns the FUSE mount, the NBD exports and attached devices, and (through
/// <see cref="TreeContext.Files"/>) the restore VMs it started. Disposing tears all of it down in reverse order.
/// </summary>
public sealed class MountedTree : IAsyncDisposable
{
    private readonly FuseMount mount;
    private readonly ILogger log;
    private int disposed;

    private MountedTree(TreeContext context, FuseMount mount)
    {
        Context = context;
        this.mount = mount;
        log = context.Logs.CreateLogger<MountedTree>();
    }

    public TreeContext Context { get; }

    public string MountPoint => mount.MountPoint;

    /// <summary>Completes when the filesystem was unmounted (by us, <c>umount</c> or <c>fusermount3 -u</c>).</summary>
    public Task Completion => mount.Completion;

    /// <summary>Opens the store read-only and mounts it; returns once the kernel answers requests.</summary>
    public static async Task<MountedTree> MountAsync(string storePath, string mountPoint, TreeOptions options,
        ILoggerFactory logs, Func<TreeContext, IFilesBackend?>? filesBackend = null, FuseMountOptions? fuseOptions = null,
        CancellationToken ct = default)
    {
        var store = DatastoreReader.Open(storePath, logs);
        var context = new TreeContext(store, options, logs);
        context.Files = filesBackend?.Invoke(context);
        var root = new RootDirectory(context);
        var fuse = await FuseMount.MountAsync(mountPoint, root,
            fuseOptions ?? new FuseMountOptions(FsName: "restorefs:" + Path.GetFileName(Path.TrimEndingDirectorySeparator(storePath))),
            logs, ct).ConfigureAwait(false);
        logs.CreateLogger<MountedTree>().LogInformation("Mounted datastore {Store} on {MountPoint}", storePath, mountPoint);
        return new MountedTree(context, fuse);
    }

    /// <summary>Detaches devices, stops VMs, then unmounts (lazily) and waits for the FUSE readers to end.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0)
        {
            return;
        }

        await Context.Exports.DisposeAsync().ConfigureAwait(false);
        if (Context.Files is IAsyncDisposable files)
        {
            try
            {
                await files.DisposeAsync().ConfigureAwait(false);
            }
            catch (Exception e)
            {
                log.LogWarning(e, "Stopping the restore VMs of this mount failed");
            }
        }

        try
        {
            await mount.UnmountAsync().ConfigureAwait(false);
        }
        catch (Exception e)
        {
            log.LogWarning(e, "Unmounting {MountPoint} failed", mount.MountPoint);
        }

        await mount.DisposeAsync().ConfigureAwait(false);
        log.LogInformation("Unmounted {MountPoint}", mount.MountPoint);
    }
}
