using RestoreFs.Datastore;

namespace RestoreFs.Cli.Commands;

/// <summary>Runs a command body; known errors become one line on stderr and a non-zero exit status.</summary>
public static class CliErrors
{
    public static int Run(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (Exception e) when (e is DatastoreException or IOException or UnauthorizedAccessException or ArgumentException or InvalidOperationException)
        {
            Console.Error.WriteLine($"restorefs: {e.Message}");
            return 1;
        }
    }
}
