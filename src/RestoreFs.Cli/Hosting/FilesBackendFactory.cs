using Microsoft.Extensions.Logging;
using RestoreFs.RestoreVm;
using RestoreFs.Tree;
using RestoreFs.Tree.Files;

namespace RestoreFs.Cli.Hosting;

/// <summary>Connects <c>files/</c> to restore VMs when the restore image and QEMU are there; otherwise files/ stays hidden.</summary>
public static class FilesBackendFactory
{
    public static IFilesBackend? Create(TreeContext context)
    {
        var image = ImageDirectory();
        if (image is null)
        {
            context.Log.LogWarning("files/ is not offered: no restore image found (build it with make restore-image, or set RESTOREFS_IMAGE_DIR)");
            return null;
        }

        var qemu = FindOnPath("qemu-system-x86_64");
        if (qemu is null)
        {
            context.Log.LogWarning("files/ is not offered: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
            return null;
        }

        context.Log.LogInformation("files/ is served by restore VMs (image {Image})", image);
        if (int.TryParse(Environment.GetEnvironmentVariable("RESTOREFS_FILES_SWEEP"), out var sweep) && sweep > 0)
        {
            VmFiles.SweepInterval = TimeSpan.FromSeconds(sweep); // how soon a stopped VM's state is released (tests)
        }

        if (int.TryParse(Environment.GetEnvironmentVariable("RESTOREFS_FILES_IDLE"), out var idle) && idle > 0)
        {
            VmFiles.DefaultIdleRelease = TimeSpan.FromSeconds(idle); // how long an unused snapshot's files/ state is kept
        }

        var options = Options(image, qemu) with
        {
            Overlays = Replay ? new VmDiskOverlays(context.Exports, context.Logs.CreateLogger<VmDiskOverlays>()) : null,
            GuestKeys = GuestKeys,
        };
        if (!Replay)
        {
            context.Log.LogInformation("--no-replay: restore VMs mount file systems without journal replay, disks read-only");
        }

        return new VmFiles(context, new RestoreVms(context, new RestoreVmManager(options, context.Logs)));
    }

    /// <summary>Journal replay into per-session throwaway overlays (false: <c>--no-replay</c>).</summary>
    public static bool Replay { get; set; } = true;

    /// <summary>LUKS passphrases for the VM (<c>--guest-passphrase-file</c>, in the guest's form), or null.</summary>
    public static byte[]? GuestKeys { get; set; }

    /// <summary>--max-vms of the mount (0: sized to memory).</summary>
    public static int MaxVms { get; set; }

    public static RestoreVmOptions Options(string image, string qemu = "qemu-system-x86_64") => new()
    {
        MaxVms = MaxVms,
        RuntimeDirectory = RuntimePaths.Directory,
        ImageDirectory = image,
        Qemu = qemu,
        IdleTimeoutSeconds = int.TryParse(Environment.GetEnvironmentVariable("RESTOREFS_VM_IDLE"), out var idle) && idle > 0 ? idle : 600,
        // RESTOREFS_VM_DEBUG=1: the guest kernel logs everything to the VM's console.log (boot diagnostics).
        Debug = Environment.GetEnvironmentVariable("RESTOREFS_VM_DEBUG") == "1",
    };

    /// <summary>RESTOREFS_IMAGE_DIR, else restore-image next to the executable or one level up (the build tree).</summary>
    public static string? ImageDirectory()
    {
        var candidates = new List<string>();
        if (Environment.GetEnvironmentVariable("RESTOREFS_IMAGE_DIR") is { Length: > 0 } env)
        {
            candidates.Add(env);
        }

        var exe = AppContext.BaseDirectory;
        candidates.Add(Path.Combine(exe, "restore-image"));
        candidates.Add(Path.Combine(exe, "..", "restore-image"));
        return candidates.Select(Path.GetFullPath).FirstOrDefault(d => File.Exists(Path.Combine(d, "initramfs.img")) && File.Exists(Path.Combine(d, "vmlinux")));
    }

    private static string? FindOnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':').Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);
}
