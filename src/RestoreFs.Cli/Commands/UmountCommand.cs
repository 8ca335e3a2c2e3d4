using System.CommandLine;
using RestoreFs.Cli.Hosting;

namespace RestoreFs.Cli.Commands;

/// <summary><c>restorefs umount MOUNTPOINT</c>: ends a mount, its attached devices and its restore VMs.</summary>
public static class UmountCommand
{
    public static Command Create()
    {
        var mountPoint = new Argument<string>("MOUNTPOINT") { Description = "Where the datastore is mounted." };
        var timeout = new Option<int>("--timeout") { Description = "Seconds to wait for the mount to end.", DefaultValueFactory = _ => 30 };
        var command = new Command("umount", "Unmount a RestoreFs mount and release everything it attached.") { mountPoint, timeout };
        command.SetAction(parse => Run(parse.GetValue(mountPoint)!, TimeSpan.FromSeconds(parse.GetValue(timeout))));
        return command;
    }

    public static int Run(string mountPoint, TimeSpan timeout)
    {
        var full = Path.GetFullPath(mountPoint);
        var pidFile = RuntimePaths.MountPidFile(full);
        if (File.Exists(pidFile) && int.TryParse(File.ReadAllText(pidFile).Trim(), out var pid) && ProcessAlive(pid))
        {
            // The serving process detaches devices and stops VMs before it unmounts; let it do the work.
            NativeMethods.Kill(pid, NativeMethods.SigTerm);
            var deadline = DateTime.UtcNow + timeout;
            while (DateTime.UtcNow < deadline && (ProcessAlive(pid) || MountService.IsMounted(full)))
            {
                Thread.Sleep(100);
            }

            if (!ProcessAlive(pid) && !MountService.IsMounted(full))
            {
                return 0;
            }

            Console.Error.WriteLine($"restorefs: the process serving {full} (pid {pid}) did not finish within {timeout.TotalSeconds:0} s; detaching the mount");
        }

        if (!MountService.IsMounted(full))
        {
            Console.Error.WriteLine($"restorefs: {full} is not a RestoreFs mount");
            return 1;
        }

        return LazyUnmount(full) ? 0 : 1;
    }

    private static bool LazyUnmount(string path)
    {
        if (NativeMethods.Umount2(path, NativeMethods.MntDetach) == 0)
        {
            return true;
        }

        var result = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("fusermount3", ["-u", "-z", path])
        {
            UseShellExecute = false,
        });
        result?.WaitForExit();
        if (result?.ExitCode == 0)
        {
            return true;
        }

        Console.Error.WriteLine($"restorefs: could not unmount {path}");
        return false;
    }

    private static bool ProcessAlive(int pid) => Directory.Exists($"/proc/{pid}") &&
        !File.ReadAllText($"/proc/{pid}/stat").Split(' ').Skip(2).Take(1).Contains("Z");
}
