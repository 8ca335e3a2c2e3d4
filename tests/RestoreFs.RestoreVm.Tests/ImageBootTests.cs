using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using RestoreFs.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace RestoreFs.RestoreVm.Tests;

public class ImageBootTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Image_Builds_And_BootsUnderTcg_ToFirstAnswerOnSerialChannel()
    {
        var imageDir = Path.Combine(Path.GetTempPath(), "restorefs-restore-image-test");
        ProcessRunner.Run(RepoPaths.Script("build-restore-image.sh"), [imageDir], TimeSpan.FromMinutes(5))
            .EnsureSuccess("build-restore-image.sh");
        foreach (var f in new[] { "vmlinux", "vmlinuz", "initramfs.img", "manifest" })
            Assert.True(File.Exists(Path.Combine(imageDir, f)), f);

        using var dir = new TempDirectory("restorefs-vmboot");
        var initrd = Initramfs.AppendTicket(Path.Combine(imageDir, "initramfs.img"), "test-ticket"u8, dir.Path);
        var sock = dir.Combine("ch.sock");
        var mhz = File.ReadLines("/proc/cpuinfo").First(l => l.StartsWith("cpu MHz")).Split(':')[1].Trim();
        var khz = (long)(double.Parse(mhz, CultureInfo.InvariantCulture) * 1000);
        var psi = new ProcessStartInfo("qemu-system-x86_64")
        {
            ArgumentList =
            {
                "-machine", "microvm,pit=off,pic=off,rtc=off", "-accel", "tcg", "-cpu", "max", "-m", "256",
                "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
                "-kernel", Path.Combine(imageDir, "vmlinux"), "-initrd", initrd,
                "-append", $"console=ttyS0 quiet panic=-1 tsc_early_khz={khz} cryptomgr.notests=1",
                "-serial", "file:" + dir.Combine("console.log"), "-device", "virtio-rng-device",
                "-chardev", $"socket,id=c0,path={sock},server=on,wait=off", "-device", "virtio-serial-device",
                "-device", "virtserialport,chardev=c0,name=org.restorefs.0",
            },
            RedirectStandardError = true,
        };
        var sw = Stopwatch.StartNew();
        using var qemu = Process.Start(psi)!;
        try
        {
            using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            while (true)
            {
                try { await socket.ConnectAsync(new UnixDomainSocketEndPoint(sock)); break; }
                catch (SocketException) when (sw.Elapsed < TimeSpan.FromSeconds(10)) { await Task.Delay(50); }
            }
            var received = new StringBuilder();
            var buffer = new byte[256];
            while (!received.ToString().Contains("ok status"))
            {
                Assert.True(sw.Elapsed < TimeSpan.FromSeconds(30),
                    "no answer within 30 s; console: " + File.ReadAllText(dir.Combine("console.log")));
                await socket.SendAsync("status\n"u8.ToArray());
                using var cts = new CancellationTokenSource(200);
                try
                {
                    var n = await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
                    received.Append(Encoding.ASCII.GetString(buffer, 0, n));
                }
                catch (OperationCanceledException) { }
            }
            output.WriteLine($"first answer after {sw.Elapsed.TotalSeconds:F2} s (TCG)");
            await socket.SendAsync("stop\n"u8.ToArray());
            Assert.True(qemu.WaitForExit(15000), "VM did not power off after stop");
        }
        finally
        {
            if (!qemu.HasExited) { qemu.Kill(); qemu.WaitForExit(); }
        }
    }
}
