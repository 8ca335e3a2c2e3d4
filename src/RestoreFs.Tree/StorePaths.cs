using RestoreFs.Datastore;

namespace RestoreFs.Tree;

/// <summary>Where the datastore keeps namespaces, groups and snapshots (PBS layout, spec section 1).</summary>
public static class StorePaths
{
    public static string Namespace(string storePath, BackupNamespace ns)
    {
        var path = storePath;
        if (ns.Path.Length == 0)
        {
            return path;
        }

        foreach (var part in ns.Path.Split('/'))
        {
            path = Path.Combine(path, "ns", part);
        }

        return path;
    }

    public static string Group(string storePath, BackupGroup group) =>
        Path.Combine(Namespace(storePath, group.Namespace), group.Type, group.Id);

    public static bool IsFinishedSnapshot(string groupPath, string timeName) =>
        File.Exists(Path.Combine(groupPath, timeName, "index.json.blob"));
}
