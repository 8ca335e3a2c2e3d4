using System.Diagnostics;
using RestoreFs.RestoreApi;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>The daemon executable as a process: a bare ext4 disk on a loop device, its API on a unix socket, stop.</summary>
public sealed class ProcessTests
{
    [Fact]
    public async Task The_daemon_program_serves_a_disk_and_stops_on_request()
    {
        Requires.Root();
        using var dir = new TempDirectory("restorefs-daemon-proc");
        var image = dir.Combine("bare.img");
        var tree = dir.Combine("tree");
        Directory.CreateDirectory(tree);
        await File.WriteAllTextAsync(Path.Combine(tree, "hello.txt"), "hello from the disk\n");
        ProcessRunner.Run(Requires.Tool("truncate"), ["-s", "16M", image]).EnsureSuccess("truncate");
        ProcessRunner.Run(Requires.Tool("mkfs.ext4"), ["-q", "-F", "-d", tree, image]).EnsureSuccess("mkfs.ext4");
        var loop = ProcessRunner.Run(Requires.Tool("losetup"), ["-r", "-f", "--show", image]).EnsureSuccess("losetup").StdOut.Trim();
        try
        {
            await File.WriteAllTextAsync(dir.Combine("ticket"), "secret-ticket");
            var socket = dir.Combine("api.sock");
            var daemon = Path.Combine(AppContext.BaseDirectory, "restorefs-daemon.dll");
            var info = new ProcessStartInfo("dotnet") { RedirectStandardError = true, UseShellExecute = false };
            foreach (var a in new[] { daemon, "--ticket-file", dir.Combine("ticket"), "--listen", "unix:" + socket, "--disk", "disk0=" + loop, "--mount-root", dir.Combine("mnt") })
            {
                info.ArgumentList.Add(a);
            }

            using var process = Process.Start(info)!;
            var log = process.StandardError.ReadToEndAsync();
            await using var client = new RestoreClient(SocketTransport.Unix(socket), "secret-ticket");
            DaemonStatus? status = null;
            for (var i = 0; i < 100 && status is null; i++)
            {
                try
                {
                    status = await client.StatusAsync(true, CancellationToken.None);
                }
                catch (IOException)
                {
                    await Task.Delay(100);
                }
            }

            Assert.NotNull(status);
            Assert.Equal(["disk0/raw"], Assert.Single(status!.Disks).Volumes);
            var buffer = new byte[100];
            var n = await client.ReadAsync("disk0.img.fidx/raw/hello.txt"u8.ToArray(), 0, buffer, CancellationToken.None);
            Assert.Equal("hello from the disk\n", System.Text.Encoding.UTF8.GetString(buffer, 0, n));
            await client.StopAsync(CancellationToken.None);
            if (!process.WaitForExit(10_000))
            {
                process.Kill();
                Assert.Fail("the daemon did not stop; its log:\n" + await log);
            }

            Assert.Equal(0, process.ExitCode);
            var text = await log;
            Assert.Contains("stop requested", text);
            Assert.DoesNotContain(dir.Combine("mnt"), File.ReadAllText("/proc/mounts"));
        }
        finally
        {
            ProcessRunner.Run(Requires.Tool("losetup"), ["-d", loop]);
        }
    }
}
