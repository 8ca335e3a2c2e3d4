using System.Diagnostics;
using System.Text;

namespace RestoreFs.TestSupport;

public sealed record ProcessResult(int ExitCode, string StdOut, string StdErr)
{
    public ProcessResult EnsureSuccess(string what)
    {
        if (ExitCode != 0)
        {
            throw new InvalidOperationException($"{what} failed with exit code {ExitCode}: {StdErr.Trim()} {StdOut.Trim()}");
        }

        return this;
    }
}

/// <summary>Runs external programs (mkfs, qemu-img, rsync …) with a timeout; output captured.</summary>
public static class ProcessRunner
{
    public static ProcessResult Run(string fileName, IEnumerable<string> args, TimeSpan? timeout = null,
        string? workingDirectory = null, IDictionary<string, string>? environment = null, byte[]? stdin = null)
        => RunAsync(fileName, args, timeout, workingDirectory, environment, stdin).GetAwaiter().GetResult();

    public static async Task<ProcessResult> RunAsync(string fileName, IEnumerable<string> args, TimeSpan? timeout = null,
        string? workingDirectory = null, IDictionary<string, string>? environment = null, byte[]? stdin = null)
    {
        var psi = new ProcessStartInfo(fileName)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = stdin is not null,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? string.Empty,
        };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        if (environment is not null)
        {
            foreach (var (k, v) in environment)
            {
                psi.Environment[k] = v;
            }
        }

        using var process = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {fileName}");
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        var outTask = Task.Run(async () => stdout.Append(await process.StandardOutput.ReadToEndAsync()));
        var errTask = Task.Run(async () => stderr.Append(await process.StandardError.ReadToEndAsync()));
        if (stdin is not null)
        {
            await process.StandardInput.BaseStream.WriteAsync(stdin);
            process.StandardInput.Close();
        }

        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromMinutes(2));
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            try
            {
                process.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException)
            {
            }

            throw new TimeoutException($"{fileName} {string.Join(' ', args)} did not finish within {timeout ?? TimeSpan.FromMinutes(2)}");
        }

        await Task.WhenAll(outTask, errTask);
        return new ProcessResult(process.ExitCode, stdout.ToString(), stderr.ToString());
    }

    /// <summary>Runs a shell command line with bash -c.</summary>
    public static ProcessResult Shell(string commandLine, TimeSpan? timeout = null, string? workingDirectory = null)
        => Run("bash", ["-c", commandLine], timeout, workingDirectory);
}
