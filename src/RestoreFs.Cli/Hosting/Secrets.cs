using System.Diagnostics;
using System.Globalization;

namespace RestoreFs.Cli.Hosting;

/// <summary>
/// Keeps the key's passphrase out of places others can read: the process environment (also the copy the kernel shows
/// in <c>/proc/PID/environ</c>, which outlives <c>unsetenv</c>) and the environments of child processes.
/// </summary>
public static class Secrets
{
    public const string PassphraseVariable = "PBS_ENCRYPTION_PASSWORD";

    /// <summary>
    /// Removes <paramref name="name"/> from the environment: from .NET's copy and libc's list, and overwrites its bytes in
    /// the initial environment block that <c>/proc/self/environ</c> shows.
    /// </summary>
    public static void ScrubEnvironment(string name)
    {
        Environment.SetEnvironmentVariable(name, null);
        NativeMethods.UnsetEnv(name);
        try
        {
            OverwriteInitialEnvironment(name);
        }
        catch (Exception e) when (e is IOException or FormatException or UnauthorizedAccessException)
        {
            // /proc not mounted: nothing shows the block to others either.
        }
    }

    private static unsafe void OverwriteInitialEnvironment(string name)
    {
        // Fields after the command name; env_start and env_end are fields 50 and 51 of /proc/self/stat.
        var stat = File.ReadAllText("/proc/self/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        if (fields.Length < 49)
        {
            return;
        }

        var start = ulong.Parse(fields[47], CultureInfo.InvariantCulture);
        var end = ulong.Parse(fields[48], CultureInfo.InvariantCulture);
        if (end <= start || end - start > 16 * 1024 * 1024)
        {
            return;
        }

        var block = new Span<byte>((void*)(nuint)start, (int)(end - start));
        var prefix = System.Text.Encoding.UTF8.GetBytes(name + "=");
        var at = 0;
        while (at < block.Length)
        {
            var length = block[at..].IndexOf((byte)0);
            if (length < 0)
            {
                length = block.Length - at;
            }

            var entry = block.Slice(at, length);
            if (entry.StartsWith(prefix))
            {
                entry[prefix.Length..].Clear(); // same length: the block's layout stays valid
            }

            at += length + 1;
        }
    }

    /// <summary>What a child process needs and nothing more: PATH, a neutral locale, and the given variables.</summary>
    public static void MinimalEnvironment(ProcessStartInfo psi, params string[] keep)
    {
        var saved = keep.Select(k => (k, Environment.GetEnvironmentVariable(k))).ToList();
        psi.Environment.Clear();
        psi.Environment["PATH"] = Environment.GetEnvironmentVariable("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin";
        psi.Environment["LANG"] = "C.UTF-8";
        foreach (var (k, v) in saved)
        {
            if (v is not null && k != PassphraseVariable)
            {
                psi.Environment[k] = v;
            }
        }
    }
}
