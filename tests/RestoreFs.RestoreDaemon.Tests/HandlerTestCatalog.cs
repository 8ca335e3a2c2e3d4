using System.Net.Sockets;
using RestoreFs.RestoreApi;
using RestoreFs.RestoreDaemon.Disks;
using RestoreFs.RestoreDaemon.Server;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>A volume of a <see cref="DirectoryVolumeCatalogForTests"/>: a real directory, or a mount failure.</summary>
/// <param name="Directory">Served as the volume's file system; null with <paramref name="MountError"/>.</param>
internal sealed record TestVolume(string Bucket, string[] Components, string? Directory, ulong Size = 0, string? MountError = null);

internal sealed record TestDisk(string Name, TestVolume[] Volumes, ulong Size = 1 << 30);

/// <summary>
/// Real directories served as volumes (no mounting): a stand-in for the disk scanner's <see cref="DiskCatalog"/> so
/// that the handlers and the protocol are tested without disk images. A volume with a <c>MountError</c> fails to
/// "mount" with that message, as a disk with a broken file system would.
/// </summary>
internal sealed class DirectoryVolumeCatalogForTests : IVolumeCatalog
{
    private readonly List<DiskInfo> disks;
    private readonly Dictionary<string, TestVolume> byId = [];
    private readonly List<MountedVolume> mounts = [];
    private int mountCalls;

    /// <summary>One disk named "dir" whose raw volume is <paramref name="directory"/>.</summary>
    public DirectoryVolumeCatalogForTests(string directory)
        : this([new TestDisk("dir", [new TestVolume("raw", [], directory)])])
    {
    }

    public DirectoryVolumeCatalogForTests(IEnumerable<TestDisk> testDisks)
    {
        disks = [];
        foreach (var d in testDisks)
        {
            var volumes = new List<VolumeInfo>();
            foreach (var v in d.Volumes)
            {
                var info = new VolumeInfo(d.Name, v.Bucket, v.Components, v.Directory ?? "/nonexistent", v.Size, v.Directory is null ? null : "directory");
                byId[info.Id] = v;
                volumes.Add(info);
            }

            disks.Add(new DiskInfo(d.Name, "/dev/test-" + d.Name, d.Size, volumes, null));
        }
    }

    /// <summary>How many times a volume was asked to mount.</summary>
    public int MountCalls => Volatile.Read(ref mountCalls);

    public IReadOnlyList<MountedVolume> Mounts
    {
        get
        {
            lock (mounts)
            {
                return [.. mounts];
            }
        }
    }

    public Task<IReadOnlyList<DiskInfo>> GetDisksAsync(CancellationToken ct) => Task.FromResult<IReadOnlyList<DiskInfo>>(disks);

    public Task<string> MountAsync(VolumeInfo volume, CancellationToken ct)
    {
        Interlocked.Increment(ref mountCalls);
        var v = byId[volume.Id];
        lock (mounts)
        {
            if (!mounts.Any(m => m.Volume.Id == volume.Id))
            {
                mounts.Add(new MountedVolume(volume, v.Directory ?? "", "directory", v.MountError));
            }
        }

        return v.MountError is not null ? Task.FromException<string>(new VolumeException(v.MountError)) : Task.FromResult(v.Directory!);
    }
}

/// <summary>The daemon's server in this process on a real unix socket, with its log lines kept.</summary>
internal sealed class ServerHarness : IAsyncDisposable
{
    private readonly CancellationTokenSource stop = new();
    private readonly Socket listener;
    private readonly Task serving;
    private readonly TaskCompletionSource shutdown = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public ServerHarness(IVolumeCatalog catalog, string socketPath, string ticket, TimeSpan? idle = null, TimeSpan? authDelay = null,
        int maxExtractions = 8)
    {
        SocketPath = socketPath;
        Ticket = ticket;
        Server = new DaemonServer(catalog, new DaemonServerOptions(ticket, idle ?? TimeSpan.FromMinutes(10), authDelay ?? TimeSpan.FromMilliseconds(300),
            maxExtractions), AddLog, () => shutdown.TrySetResult());
        listener = Listeners.Bind(new UnixDomainSocketEndPoint(socketPath));
        serving = Listeners.ServeSocketAsync(listener, Server, AddLog, stop.Token);
    }

    public string SocketPath { get; }

    public string Ticket { get; }

    public DaemonServer Server { get; }

    /// <summary>Completes when the server asked to shut down (stop or idle timeout).</summary>
    public Task ShutdownRequested => shutdown.Task;

    public List<string> Log { get; } = [];

    public string[] LogLines()
    {
        lock (Log)
        {
            return [.. Log];
        }
    }

    public RestoreClient Client(string? ticket = null) => new(SocketTransport.Unix(SocketPath), ticket ?? Ticket);

    private void AddLog(string line)
    {
        lock (Log)
        {
            Log.Add(line);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await stop.CancelAsync();
        listener.Dispose();
        await serving.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        Server.Dispose();
        stop.Dispose();
    }
}

internal static class TestHelpers
{
    public static async Task<List<ArchiveEntry>> ListAllAsync(this IRestoreClient client, byte[] path)
    {
        var result = new List<ArchiveEntry>();
        await foreach (var e in client.ListAsync(path, CancellationToken.None))
        {
            result.Add(e);
        }

        return result;
    }

    public static Task<List<ArchiveEntry>> ListAllAsync(this IRestoreClient client, string path) =>
        client.ListAllAsync(System.Text.Encoding.UTF8.GetBytes(path));

    /// <summary>Removes a directory tree whose names may not be UTF-8 (which .NET's Directory APIs cannot delete).</summary>
    public static void RemoveTree(string path)
    {
        if (Directory.Exists(path))
        {
            ProcessRunner.Run("rm", ["-rf", "--one-file-system", path]);
        }
    }
}
