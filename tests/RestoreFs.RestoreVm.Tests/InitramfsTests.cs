using System.Text;
using RestoreFs.TestSupport;
using Xunit;

namespace RestoreFs.RestoreVm.Tests;

public class InitramfsTests
{
    [Fact]
    public void AppendTicket_PrivateCopyStartsWithTicketArchiveReadableByCpio()
    {
        using var dir = new TempDirectory("restorefs-initramfs");
        var image = dir.Combine("base.img");
        var imageBytes = Encoding.ASCII.GetBytes("not-really-lz4-but-opaque-payload");
        File.WriteAllBytes(image, imageBytes);

        var copy = Initramfs.AppendTicket(image, Encoding.ASCII.GetBytes("s3cr3t-ticket"), dir.Combine("run"));

        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(copy));
        var bytes = File.ReadAllBytes(copy);
        Assert.Equal(0, (bytes.Length - imageBytes.Length) % 512);
        Assert.Equal(imageBytes, bytes[^imageBytes.Length..]);

        var outDir = dir.Combine("x");
        Directory.CreateDirectory(outDir);
        ProcessRunner.Shell($"cpio -idm --quiet < '{copy}'", TimeSpan.FromSeconds(30), outDir).EnsureSuccess("cpio -i");
        Assert.Equal("s3cr3t-ticket", File.ReadAllText(Path.Combine(outDir, "ticket")));
        Assert.Equal(UnixFileMode.UserRead, File.GetUnixFileMode(Path.Combine(outDir, "ticket")));
    }

    [Fact]
    public void AppendTicket_EmptyTicketOrMissingImageIsRefused()
    {
        using var dir = new TempDirectory("restorefs-initramfs");
        Assert.Throws<ArgumentException>(() => Initramfs.AppendTicket(dir.Combine("none"), ReadOnlySpan<byte>.Empty, dir.Path));
        var ex = Assert.Throws<FileNotFoundException>(() => Initramfs.AppendTicket(dir.Combine("none"), "t"u8, dir.Path));
        Assert.Contains("none", ex.Message);
    }
}
