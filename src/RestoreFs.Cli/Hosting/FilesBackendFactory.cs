using RestoreFs.Tree;

namespace RestoreFs.Cli.Hosting;

/// <summary>Connects <c>files/</c> to the restore VM.</summary>
public static class FilesBackendFactory
{
    public static IFilesBackend? Create(TreeContext context) => null;
}
