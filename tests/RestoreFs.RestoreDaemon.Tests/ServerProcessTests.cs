using System.Diagnostics;
using System.Text;
using RestoreFs.RestoreApi;
using RestoreFs.TestSupport;
using Xunit.Abstractions;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>The built daemon executable as a process: arguments, ticket file, a real ext4 disk on a loop device,
/// idle timeout and stop. Its stderr goes to the test output.</summary>
public sealed class ServerProcessTests(ITestOutputHelper output) : IDisposable
{
    private readonly TempDirectory dir = new("restorefs-daemonproc");

    public void Dispose()
    {
        TestHelpers.RemoveTree(dir.Path);
        dir.Dispose();
    }

    private sealed class Daemon : IDisposable
    {
        private readonly StringBuilder log = new();

        public Daemon(IEnumerable<string> args)
        {
            var info = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
            info.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "restorefs-daemon.dll"));
            foreach (var a in args)
            {
                info.ArgumentList.Add(a);
            }

            Process = Process.Start(info)!;
            Process.ErrorDataReceived += (_, e) =>
            {
                if (e.Data is not null)
                {
                    lock (log)
                    {
                        log.AppendLine(e.Data);
                    }
                }
            };
            Process.BeginErrorReadLine();
            Process.OutputDataReceived += (_, _) => { };
            Process.BeginOutputReadLine();
        }

        public Process Process { get; }

        public string Log
        {
            get
            {
                lock (log)
                {
                    return log.ToString();
                }
            }
        }

        public bool WaitForExit(TimeSpan timeout)
        {
            if (!Process.WaitForExit(timeout))
            {
                return false;
            }

            Process.WaitForExit(); // drains the redirected output
            return true;
        }

        public void Dispose()
        {
            if (!Process.HasExited)
            {
                Process.Kill();
                Process.WaitForExit();
            }

            Process.Dispose();
        }
    }

    private static async Task<DaemonStatus> WaitForStatusAsync(RestoreClient client, Daemon daemon)
    {
        for (var i = 0; i < 150; i++)
        {
            try
            {
                return await client.StatusAsync(true, CancellationToken.None);
            }
            catch (IOException)
            {
                Assert.False(daemon.Process.HasExited, "the daemon exited: " + daemon.Log);
                await Task.Delay(100);
            }
        }

        throw new TimeoutException("the daemon did not answer: " + daemon.Log);
    }

    [Fact]
    public async Task Serves_an_ext4_disk_with_byte_names_from_a_loop_device_then_stops_and_unmounts()
    {
        Requires.Root();
        var image = dir.Combine("disk.img");
        var tree = dir.Combine("tree");
        Directory.CreateDirectory(tree);
        ProcessRunner.Shell($"""
            set -e
            cd '{tree}'
            mkdir -p etc
            printf 'vm100\n' > etc/hostname
            printf 'latin-1\n' > "$(printf 'caf\351.txt')"
            ln -s /etc/shadow escape
            """).EnsureSuccess("making the tree");
        ProcessRunner.Run(Requires.Tool("truncate"), ["-s", "16M", image]).EnsureSuccess("truncate");
        ProcessRunner.Run(Requires.Tool("mkfs.ext4"), ["-q", "-F", "-d", tree, image]).EnsureSuccess("mkfs.ext4");
        var loop = ProcessRunner.Run(Requires.Tool("losetup"), ["-r", "-f", "--show", image]).EnsureSuccess("losetup").StdOut.Trim();
        try
        {
            await File.WriteAllTextAsync(dir.Combine("ticket"), "process-ticket\n");
            var socket = dir.Combine("api.sock");
            var mnt = dir.Combine("mnt");
            using var daemon = new Daemon(["--ticket-file", dir.Combine("ticket"), "--listen", "unix:" + socket, "--disk", "drive-scsi0=" + loop,
                "--mount-root", mnt, "--idle-timeout", "60"]);
            await using var client = new RestoreClient(SocketTransport.Unix(socket), "process-ticket");
            var status = await WaitForStatusAsync(client, daemon);
            Assert.Equal(["drive-scsi0/raw"], Assert.Single(status.Disks).Volumes);
            Assert.InRange(status.Timeout, 50, 60);
            Assert.Equal("0600", Convert.ToString((int)File.GetUnixFileMode(socket), 8).PadLeft(4, '0'));

            var root = await client.ListAllAsync("drive-scsi0.img.fidx/raw");
            byte[] latin = [.. "caf"u8, 0xE9, .. ".txt"u8];
            var file = root.Single(e => e.Name.SequenceEqual(latin));
            var buffer = new byte[100];
            var n = await client.ReadAsync(file.FilePath, 0, buffer, CancellationToken.None);
            Assert.Equal("latin-1\n", Encoding.ASCII.GetString(buffer, 0, n));
            Assert.Equal("/etc/shadow", Encoding.UTF8.GetString(root.Single(e => e.Name.SequenceEqual("escape"u8.ToArray())).Target!));
            await Assert.ThrowsAsync<RestoreApiException>(() => client.ReadAsync("drive-scsi0/raw/escape"u8.ToArray(), 0, buffer, CancellationToken.None));
            Assert.Contains(File.ReadAllLines("/proc/mounts"), l => l.Contains(mnt, StringComparison.Ordinal) && l.Contains(" ro,", StringComparison.Ordinal));

            await client.StopAsync(CancellationToken.None);
            var exited = daemon.WaitForExit(TimeSpan.FromSeconds(20));
            output.WriteLine(daemon.Log);
            Assert.True(exited, "the daemon did not stop");
            Assert.Equal(0, daemon.Process.ExitCode);
            Assert.Contains("listening on unix:" + socket, daemon.Log);
            Assert.Contains("disk drive-scsi0", daemon.Log);
            Assert.Contains("GET /api2/json/read", daemon.Log);
            Assert.Contains("stop requested", daemon.Log);
            Assert.DoesNotContain(mnt, File.ReadAllText("/proc/mounts"));
        }
        finally
        {
            ProcessRunner.Run(Requires.Tool("losetup"), ["-d", loop]);
        }
    }

    [Fact]
    public async Task Exits_by_itself_when_idle()
    {
        await File.WriteAllTextAsync(dir.Combine("ticket"), "t");
        var socket = dir.Combine("idle.sock");
        using var daemon = new Daemon(["--ticket-file", dir.Combine("ticket"), "--listen", "unix:" + socket, "--idle-timeout", "2",
            "--mount-root", dir.Combine("mnt")]);
        await using var client = new RestoreClient(SocketTransport.Unix(socket), "t");
        var status = await WaitForStatusAsync(client, daemon);
        Assert.Empty(status.Disks);
        var watch = Stopwatch.StartNew();
        var exited = daemon.WaitForExit(TimeSpan.FromSeconds(15));
        output.WriteLine(daemon.Log);
        Assert.True(exited, "the daemon did not exit when idle");
        Assert.InRange(watch.Elapsed.TotalSeconds, 0.5, 10);
        Assert.Equal(0, daemon.Process.ExitCode);
        Assert.Contains("idle for 2 s: shutting down", daemon.Log);
    }

    [Theory]
    [InlineData("empty", "is empty", 1)]
    [InlineData("missing", "cannot read the ticket file", 1)]
    [InlineData("no-ticket-argument", "--ticket-file is required", 2)]
    [InlineData("bad-listen", "bad listen address", 2)]
    [InlineData("bad-timeout", "--idle-timeout", 2)]
    public void Refuses_to_start_without_a_usable_ticket_or_with_bad_arguments(string what, string message, int code)
    {
        File.WriteAllText(dir.Combine("empty"), "\n");
        var ticket = dir.Combine(what == "missing" ? "does-not-exist" : "empty");
        string[] args = what switch
        {
            "no-ticket-argument" => ["--listen", "unix:" + dir.Combine("x.sock")],
            "bad-listen" => ["--ticket-file", ticket, "--listen", "tcp:nowhere"],
            "bad-timeout" => ["--ticket-file", ticket, "--idle-timeout", "soon"],
            _ => ["--ticket-file", ticket, "--listen", "unix:" + dir.Combine("x.sock")],
        };
        using var daemon = new Daemon(args);
        Assert.True(daemon.WaitForExit(TimeSpan.FromSeconds(20)), "the daemon did not exit");
        output.WriteLine(daemon.Log);
        Assert.Equal(code, daemon.Process.ExitCode);
        Assert.Contains(message, daemon.Log);
        Assert.False(File.Exists(dir.Combine("x.sock")), "it listened anyway");
    }
}
