using System.CommandLine;
using RestoreFs.Cli.Commands;
using RestoreFs.Cli.Logging;

namespace RestoreFs.Cli;

public static class Program
{
    public static int Main(string[] args)
    {
        var root = new RootCommand("RestoreFs: browse and restore VM disk images from Proxmox Backup Server datastores.");
        root.Options.Add(GlobalOptions.Verbose);
        foreach (var command in CommandTable.All())
        {
            root.Subcommands.Add(command);
        }

        var parsed = root.Parse(args);
        LogSetup.Configure(parsed.GetValue(GlobalOptions.Verbose));
        try
        {
            return parsed.Invoke();
        }
        finally
        {
            Serilog.Log.CloseAndFlush();
        }
    }
}
