using System.CommandLine;

namespace RestoreFs.Cli.Commands;

/// <summary>Every top-level command of the CLI, one file each in this folder.</summary>
public static class CommandTable
{
    public static IEnumerable<Command> All()
    {
        yield break;
    }
}
