using System.Net.Sockets;
using RestoreFs.RestoreApi;
using RestoreFs.RestoreDaemon.Disks;
using RestoreFs.RestoreDaemon.Server;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>
/// The test disks from scripts/make-test-disks.sh on read-only loop devices, a real <see cref="DiskCatalog"/> over
/// them (partitions through loop devices: this host kernel shows none) and the daemon's server on a unix socket.
/// </summary>
public sealed class DaemonFixture : IAsyncLifetime
{
    public const string Ticket = "0d9a6c1e-5b7f-4e3a-9c2d-7f1e8b6a4c30";

    private readonly List<string> loops = [];
    private readonly CancellationTokenSource stop = new();
    private Socket? listener;
    private Task? serving;

    public TempDirectory Dir { get; } = new("restorefs-daemon");

    public string Expected => Dir.Combine("disks", "expected");

    public string Socket => Dir.Combine("api.sock");

    public DiskCatalog Catalog { get; private set; } = null!;

    public DaemonServer Server { get; private set; } = null!;

    public List<string> Log { get; } = [];

    public int Shutdowns;

    public async Task InitializeAsync()
    {
        Requires.Root();
        ProcessRunner.Run("bash", [RepoPaths.Script("make-test-disks.sh"), Dir.Combine("disks")], TimeSpan.FromMinutes(3))
            .EnsureSuccess("make-test-disks.sh");
        var disks = new List<(string, string)>();
        foreach (var name in new[] { "multi", "bare", "garbage", "ntfs" })
        {
            var loop = ProcessRunner.Run(Requires.Tool("losetup"), ["-r", "-f", "--show", Dir.Combine("disks", name + ".img")])
                .EnsureSuccess("losetup").StdOut.Trim();
            loops.Add(loop);
            disks.Add((name == "multi" ? "drive-scsi0-with-a-long-name" : name, loop));
        }

        Catalog = new DiskCatalog(new DiskCatalogOptions(disks, Dir.Combine("mnt"), AddLog, LoopForPartitions: true));
        Server = new DaemonServer(Catalog, new DaemonServerOptions(Ticket, TimeSpan.FromMinutes(10), TimeSpan.FromMilliseconds(400)), AddLog,
            () => Interlocked.Increment(ref Shutdowns));
        listener = Listeners.Bind(new UnixDomainSocketEndPoint(Socket));
        serving = Listeners.ServeSocketAsync(listener, Server, AddLog, stop.Token);
        await Catalog.GetDisksAsync(CancellationToken.None);
    }

    public RestoreClient Client(string ticket = Ticket) => new(SocketTransport.Unix(Socket), ticket);

    private void AddLog(string line)
    {
        lock (Log)
        {
            Log.Add(line);
        }
    }

    public async Task DisposeAsync()
    {
        stop.Cancel();
        listener?.Dispose();
        if (serving is not null)
        {
            await serving.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }

        Server?.Dispose();
        Catalog?.Dispose();
        foreach (var loop in loops)
        {
            ProcessRunner.Run(Requires.Tool("losetup"), ["-d", loop]);
        }

        Dir.Dispose();
    }
}
