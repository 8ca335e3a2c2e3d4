using System.CommandLine;

namespace RestoreFs.Cli.Commands;

/// <summary>Options that every command accepts.</summary>
public static class GlobalOptions
{
    public static readonly Option<bool> Verbose = new("--verbose", "-v")
    {
        Description = "Log debug details to stderr.",
        Recursive = true,
    };
}
