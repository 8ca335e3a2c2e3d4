using System.Diagnostics;

namespace RestoreFs.Cli.Hosting;

/// <summary>
/// Background mode: the command re-runs itself with <c>--foreground</c> in a new session and returns once the child
/// reports readiness on its stdout (exit 0), or with the child's exit status when it fails first (its error
/// messages reach the terminal directly). After readiness the child sends its output to a log file.
/// </summary>
public static class Daemon
{
    private const string ChildVariable = "RESTOREFS_DAEMON_CHILD";
    private const string ReadyLine = "RESTOREFS-READY";

    private const string PassphraseOnStdinVariable = "RESTOREFS_PASSPHRASE_ON_STDIN";
    private static readonly Lazy<string?> Piped = new(ReadPipedPassphrase);

    public static bool IsChild => Environment.GetEnvironmentVariable(ChildVariable) == "1";

    /// <summary>In the child: the passphrase the parent wrote to our standard input, or null.</summary>
    public static string? PassphraseFromParent => IsChild ? Piped.Value : null;

    private static string? ReadPipedPassphrase()
    {
        if (Environment.GetEnvironmentVariable(PassphraseOnStdinVariable) != "1")
        {
            return null;
        }

        Environment.SetEnvironmentVariable(PassphraseOnStdinVariable, null);
        return Console.In.ReadLine();
    }

    /// <summary>Starts the child and waits for it; returns the exit code for the parent.</summary>
    public static int RunParent(IEnumerable<string> childArgs, TimeSpan timeout, string? passphrase = null)
    {
        var psi = new ProcessStartInfo(Environment.ProcessPath ?? "restorefs")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var a in childArgs)
        {
            psi.ArgumentList.Add(a);
        }

        psi.Environment[ChildVariable] = "1";
        psi.Environment.Remove(Secrets.PassphraseVariable);
        if (passphrase is not null)
        {
            psi.Environment[PassphraseOnStdinVariable] = "1";
        }

        using var child = Process.Start(psi) ?? throw new InvalidOperationException("could not start the background process");
        if (passphrase is not null)
        {
            child.StandardInput.WriteLine(passphrase);
        }

        child.StandardInput.Close();

        // The child's messages reach our stderr through a pipe of ours: the child never holds the caller's stderr,
        // so whoever reads our output sees it end when we exit.
        _ = Task.Run(() =>
        {
            string? line;
            while ((line = child.StandardError.ReadLine()) is not null)
            {
                Console.Error.WriteLine(line);
            }
        });
        var readTask = Task.Run(() =>
        {
            string? line;
            while ((line = child.StandardOutput.ReadLine()) is not null)
            {
                if (line == ReadyLine)
                {
                    return true;
                }

                Console.Out.WriteLine(line);
            }

            return false;
        });
        if (!readTask.Wait(timeout))
        {
            Console.Error.WriteLine($"restorefs: the background process (pid {child.Id}) did not become ready within {timeout.TotalSeconds:0} s");
            return 1;
        }

        if (readTask.Result)
        {
            return 0;
        }

        child.WaitForExit();
        Thread.Sleep(100); // let the last error lines through
        return child.ExitCode == 0 ? 1 : child.ExitCode;
    }

    /// <summary>In the child: leave the terminal's session so that its hang-up does not end the mount.</summary>
    public static void DetachSession()
    {
        if (IsChild)
        {
            NativeMethods.SetSid();
        }
    }

    /// <summary>In the child: tell the parent we are ready, then send stdout/stderr to <paramref name="logFile"/>.</summary>
    public static void SignalReady(string logFile)
    {
        if (!IsChild)
        {
            return;
        }

        Console.Out.WriteLine(ReadyLine);
        Console.Out.Flush();
        Directory.CreateDirectory(Path.GetDirectoryName(logFile)!);
        var log = NativeMethods.Open(logFile, NativeMethods.OWrOnly | NativeMethods.OCreat | NativeMethods.OAppend | NativeMethods.OCloExec, 0x180);
        var devNull = NativeMethods.Open("/dev/null", NativeMethods.ORdWr | NativeMethods.OCloExec, 0);
        if (devNull >= 0)
        {
            NativeMethods.Dup2(devNull, 0);
        }

        if (log >= 0)
        {
            NativeMethods.Dup2(log, 1);
            NativeMethods.Dup2(log, 2);
            NativeMethods.Close(log);
        }
        else if (devNull >= 0)
        {
            NativeMethods.Dup2(devNull, 1);
            NativeMethods.Dup2(devNull, 2);
        }

        if (devNull >= 0)
        {
            NativeMethods.Close(devNull);
        }

        // .NET writes through duplicates of fds 1 and 2 made at start-up: point Console at the new ones.
        Console.SetOut(new StreamWriter(new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(1, ownsHandle: false), FileAccess.Write)) { AutoFlush = true });
        Console.SetError(new StreamWriter(new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(2, ownsHandle: false), FileAccess.Write)) { AutoFlush = true });
    }
}
