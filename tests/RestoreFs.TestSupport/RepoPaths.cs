namespace RestoreFs.TestSupport;

/// <summary>Locates the repository and the built CLI (<c>make build</c> leaves it at build/restorefs).</summary>
public static class RepoPaths
{
    public static string Root { get; } = FindRoot();

    public static string Cli
    {
        get
        {
            var cli = Path.Combine(Root, "build", "restorefs");
            if (!File.Exists(cli))
            {
                throw new InvalidOperationException($"{cli} is missing: run `make build` first (make test does)");
            }

            return cli;
        }
    }

    public static string Script(string name) => Path.Combine(Root, "scripts", name);

    private static string FindRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "RestoreFs.sln")))
        {
            dir = dir.Parent;
        }

        return dir?.FullName ?? throw new InvalidOperationException("cannot find RestoreFs.sln above the test assembly");
    }
}
