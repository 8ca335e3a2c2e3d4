namespace RestoreFs.TestSupport;

/// <summary>
/// A datastore mounted through the real CLI (<c>restorefs mount</c> in background mode). Disposing runs
/// <c>restorefs umount</c> and, should that fail, a lazy unmount, so a failed test leaves no mount behind.
/// </summary>
public sealed class CliMount : IDisposable
{
    private CliMount(string store, string mountPoint)
    {
        Store = store;
        MountPoint = mountPoint;
    }

    public string Store { get; }

    public string MountPoint { get; }

    public string Snapshots => Path.Combine(MountPoint, "snapshots");

    public static CliMount Start(string store, string mountPoint, params string[] extraArgs)
    {
        if (!MountTable.IsMounted(mountPoint))
        {
            Directory.CreateDirectory(mountPoint);
        }

        var result = ProcessRunner.Run(RepoPaths.Cli, ["mount", store, mountPoint, .. extraArgs], TimeSpan.FromSeconds(60));
        result.EnsureSuccess($"restorefs mount {store} {mountPoint}");
        if (!MountTable.IsMounted(mountPoint))
        {
            throw new InvalidOperationException($"restorefs mount returned 0 but {mountPoint} is not mounted");
        }

        return new CliMount(store, mountPoint);
    }

    public ProcessResult Unmount() => ProcessRunner.Run(RepoPaths.Cli, ["umount", MountPoint], TimeSpan.FromSeconds(60));

    public void Dispose()
    {
        if (MountTable.IsMounted(MountPoint))
        {
            try
            {
                Unmount();
            }
            catch (TimeoutException)
            {
            }

            MountTable.LazyUnmount(MountPoint);
        }
    }
}
