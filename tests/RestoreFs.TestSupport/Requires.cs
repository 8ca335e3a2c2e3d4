namespace RestoreFs.TestSupport;

/// <summary>Preconditions of tests that need root or a tool; they fail with a message saying what to install.</summary>
public static class Requires
{
    public static bool IsRoot => Environment.UserName == "root" || GetEuid() == 0;

    public static void Root()
    {
        if (!IsRoot)
        {
            throw new InvalidOperationException("this test needs root (CI runs as root)");
        }
    }

    public static string Tool(string name)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':'))
        {
            var candidate = System.IO.Path.Combine(dir, name);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        foreach (var dir in new[] { "/usr/sbin", "/sbin" })
        {
            var candidate = System.IO.Path.Combine(dir, name);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        throw new InvalidOperationException($"this test needs '{name}' on PATH; run scripts/install-deps.sh");
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "geteuid")]
    private static extern uint GetEuid();
}
