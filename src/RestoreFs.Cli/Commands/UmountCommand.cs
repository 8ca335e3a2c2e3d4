using System.CommandLine;
using Microsoft.Extensions.Logging;
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
        var content = PidFile.Inspect(pidFile, out var live);
        if (content is not null && live)
        {
            // The serving process (its lock held, its start time matching) detaches devices and stops VMs before it
            // unmounts; let it do the work.
            var pid = content.Pid;
            NativeMethods.Kill(pid, NativeMethods.SigTerm);
            var deadline = DateTime.UtcNow + timeout;
            while (DateTime.UtcNow < deadline && (PidFile.StartTimeOf(pid) == content.StartTime || MountService.IsMounted(full)))
            {
                Thread.Sleep(100);
            }

            if (PidFile.StartTimeOf(pid) != content.StartTime && !MountService.IsMounted(full))
            {
                return 0;
            }

            Console.Error.WriteLine($"restorefs: the process serving {full} (pid {pid}) did not finish within {timeout.TotalSeconds:0} s; detaching the mount");
        }
        else if (content is not null)
        {
            // Its server is gone (killed): whatever now has that pid is not ours to signal. Clean up what it left.
            Console.Error.WriteLine($"restorefs: the process that served {full} (pid {content.Pid}) is gone; cleaning up after it");
            StaleMount.Cleanup(full, content, Logging.LogSetup.Factory.CreateLogger("restorefs"));
            return 0;
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

}
