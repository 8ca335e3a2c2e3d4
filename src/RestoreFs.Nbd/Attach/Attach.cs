using System.Net.Sockets;
using System.Diagnostics;
using Microsoft.Extensions.Logging;

namespace RestoreFs.Nbd;

/// <summary>What to attach: the image as a file (for the loop fallback) and as an NBD export (for kernel NBD).</summary>
public sealed record AttachRequest(string ImagePath, string? NbdSocketPath, string? ExportName, long Size);

/// <summary>A partition of an attached disk exposed as its own read-only block device.</summary>
public sealed record AttachedPartition(int Number, string DevicePath, long Offset, long Size);

/// <summary>Attaches an image as a kernel block device.</summary>
public interface IBlockDeviceAttacher
{
    Task<AttachedDevice> AttachAsync(AttachRequest request, CancellationToken ct);
}

/// <summary>An attached block device; disposing detaches it (and its partition devices).</summary>
public sealed class AttachedDevice : IAsyncDisposable
{
    private readonly Func<ValueTask> detach;
    private int disposed;

    public AttachedDevice(string devicePath, string kind, IReadOnlyList<AttachedPartition> partitions, Func<ValueTask> detach)
    {
        DevicePath = devicePath;
        Kind = kind;
        Partitions = partitions;
        this.detach = detach;
    }

    public string DevicePath { get; }

    /// <summary>"nbd" or "loop".</summary>
    public string Kind { get; }

    /// <summary>Partition devices made by RestoreFs where the kernel does not make them itself.</summary>
    public IReadOnlyList<AttachedPartition> Partitions { get; }

    public ValueTask DisposeAsync() => Interlocked.Exchange(ref disposed, 1) == 0 ? detach() : ValueTask.CompletedTask;
}

/// <summary>
/// Chooses how to attach: kernel NBD (netlink, else the ioctls; see <see cref="KernelNbdAttacher"/>) where the kernel has
/// the "nbd" netlink family or <c>/dev/nbd*</c>, with a read-only loop device as fallback; else a loop device.
/// </summary>
public static class BlockDeviceAttacher
{
    public static IBlockDeviceAttacher CreateDefault(ILoggerFactory logs)
    {
        var log = logs.CreateLogger("RestoreFs.Nbd.Attach");
        var (available, description) = KernelNbdAttacher.Probe();
        if (available)
        {
            log.LogDebug("kernel NBD is available ({Found}): attaching through kernel NBD, a read-only loop device as fallback", description);
            return new FallbackAttacher(new KernelNbdAttacher(logs.CreateLogger<KernelNbdAttacher>()), new LoopAttacher(logs.CreateLogger<LoopAttacher>()), log);
        }

        log.LogDebug("no /dev/nbd* (the kernel has no NBD module loaded): attaching with a read-only loop device");
        return new LoopAttacher(logs.CreateLogger<LoopAttacher>());
    }

    private sealed class FallbackAttacher(IBlockDeviceAttacher first, IBlockDeviceAttacher second, ILogger log) : IBlockDeviceAttacher
    {
        public async Task<AttachedDevice> AttachAsync(AttachRequest request, CancellationToken ct)
        {
            try
            {
                return await first.AttachAsync(request, ct).ConfigureAwait(false);
            }
            catch (Exception e) when (e is NbdException or SocketException)
            {
                log.LogWarning("{First} failed ({Reason}); trying {Second}", first.GetType().Name, e.Message, second.GetType().Name);
                return await second.AttachAsync(request, ct).ConfigureAwait(false);
            }
        }
    }

    internal static async Task<string> RunAsync(string tool, IEnumerable<string> args, CancellationToken ct)
    {
        var psi = new ProcessStartInfo(tool, args) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        // Children get an explicit, minimal environment: nothing of ours (keys, passphrases) reaches them.
        var path = Environment.GetEnvironmentVariable("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin";
        psi.Environment.Clear();
        psi.Environment["PATH"] = path;
        psi.Environment["LANG"] = "C.UTF-8";
        using var process = Process.Start(psi) ?? throw new NbdException($"cannot start {tool}");
        var stdout = process.StandardOutput.ReadToEndAsync(ct);
        var stderr = process.StandardError.ReadToEndAsync(ct);
        await process.WaitForExitAsync(ct).ConfigureAwait(false);
        if (process.ExitCode != 0)
        {
            throw new NbdException($"{tool} {string.Join(' ', psi.ArgumentList)} failed: {(await stderr.ConfigureAwait(false)).Trim()}");
        }

        return (await stdout.ConfigureAwait(false)).Trim();
    }
}
