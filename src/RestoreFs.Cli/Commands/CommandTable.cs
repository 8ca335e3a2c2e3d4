using System.CommandLine;

namespace RestoreFs.Cli.Commands;

/// <summary>Every top-level command of the CLI, one file each in this folder.</summary>
public static class CommandTable
{
    public static IEnumerable<Command> All()
    {
        yield return MountCommand.Create();
        yield return UmountCommand.Create();
        yield return SnapshotsCommand.Create();
        yield return RestoreCommand.Create();
        yield return BackupCommand.Create();
        yield return KeyCommand.Create();
        yield return VmCommand.Create();
        foreach (var command in MapCommand.Create())
        {
            yield return command;
        }
    }
}
