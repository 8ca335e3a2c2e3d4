using Microsoft.Extensions.Logging.Abstractions;
using RestoreFs.Nbd;
using RestoreFs.TestSupport;

namespace RestoreFs.Nbd.Tests;

/// <summary>
/// The throwaway copy-on-write overlay a restore VM writes into (journal replay): qemu-io writes through our NBD server,
/// reads see the writes, the base is never written, a read-only export still refuses writes, and the bound holds.
/// </summary>
public sealed class OverlayTests : IAsyncLifetime
{
    private readonly TempDirectory dir = new("restorefs-overlay");
    private readonly byte[] data = new byte[8 << 20];
    private byte[] pristine = [];
    private NbdServer? server;
    private OverlayBlockSource? fileOverlay;
    private OverlayBlockSource? ramOverlay;

    private string Socket => dir.Combine("nbd.sock");

    public async Task InitializeAsync()
    {
        new Random(5).NextBytes(data);
        Array.Clear(data, 2 << 20, 2 << 20);
        pristine = (byte[])data.Clone();
        server = new NbdServer(new NbdServerOptions { UnixSocketPath = Socket }, NullLoggerFactory.Instance);
        server.AddExport("base", new MemorySource(data));
        fileOverlay = new OverlayBlockSource(new MemorySource(data), dir.Combine("overlay.tmp"), 1 << 20);
        ramOverlay = new OverlayBlockSource(new MemorySource(data), null, 64 * 1024);
        server.AddExport("file", fileOverlay);
        server.AddExport("ram", ramOverlay);
        await server.StartAsync(CancellationToken.None);
    }

    public async Task DisposeAsync()
    {
        if (server is not null)
        {
            await server.DisposeAsync();
        }

        fileOverlay?.Dispose();
        ramOverlay?.Dispose();
        dir.Dispose();
    }

    private ProcessResult QemuIo(string export, params string[] commands)
    {
        var args = new List<string> { "-f", "raw" };
        foreach (var c in commands)
        {
            args.AddRange(["-c", c]);
        }

        args.Add($"nbd+unix:///{export}?socket={Socket}");
        return ProcessRunner.Run(Requires.Tool("qemu-io"), args, TimeSpan.FromSeconds(60));
    }

    [Theory]
    [InlineData("file")]
    [InlineData("ram")]
    public void Writes_land_in_the_overlay_and_reads_see_them_while_the_base_stays_unchanged(string export)
    {
        // Unaligned write across a block boundary, a write into the zero range, then read back with a pattern check.
        QemuIo(export, "write -P 0xab 4000 200", "write -P 0x5c 2097152 4096", "flush").EnsureSuccess("qemu-io write");
        QemuIo(export, "read -P 0xab 4000 200", "read -P 0x5c 2097152 4096").EnsureSuccess("qemu-io read back");
        var overlay = export == "file" ? fileOverlay! : ramOverlay!;
        Assert.Equal(3 * OverlayBlockSource.BlockSize, overlay.WrittenBytes);
        Assert.True(overlay.Touches(4095, 1));
        Assert.False(overlay.Touches(8192, 4096 * 10));

        // Bytes around the write inside the same blocks are the base's.
        var copy = dir.Combine(export + ".raw");
        ProcessRunner.Run(Requires.Tool("qemu-img"), ["convert", "-f", "raw", "-O", "raw", $"nbd+unix:///{export}?socket={Socket}", copy],
            TimeSpan.FromSeconds(60)).EnsureSuccess("qemu-img convert");
        var expected = (byte[])pristine.Clone();
        expected.AsSpan(4000, 200).Fill(0xab);
        expected.AsSpan(2 << 20, 4096).Fill(0x5c);
        Assert.True(expected.AsSpan().SequenceEqual(File.ReadAllBytes(copy)), "the overlay's view differs from base + writes");
        Assert.True(pristine.AsSpan().SequenceEqual(data), "the base was written");
    }

    [Fact]
    public void A_read_only_export_refuses_writes_and_a_full_overlay_answers_ENOSPC()
    {
        var refused = QemuIo("base", "write -P 1 0 4096");
        Assert.True(refused.ExitCode != 0 && (refused.StdOut + refused.StdErr).Contains("Permission denied", StringComparison.Ordinal), refused.StdOut + refused.StdErr);
        Assert.True(pristine.AsSpan().SequenceEqual(data));

        // 64 KiB bound: 16 blocks fit, the 17th does not.
        QemuIo("ram", "write -P 7 1048576 65536").EnsureSuccess("filling the overlay");
        var full = QemuIo("ram", "write -P 7 4194304 4096");
        Assert.Contains("No space left", full.StdOut + full.StdErr, StringComparison.Ordinal);
        Assert.Equal(65536, ramOverlay!.WrittenBytes);
    }
}
