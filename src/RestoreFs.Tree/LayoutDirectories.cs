using RestoreFs.Datastore;
using RestoreFs.Fuse;

namespace RestoreFs.Tree;

/// <summary>The mount root: <c>snapshots/</c>, and the hidden, unlisted <c>.dev/</c> that <c>.img.dev</c> links lead into.</summary>
public sealed class RootDirectory : TreeDirectory
{
    public const string SnapshotsName = "snapshots";
    public const string DevName = ".dev";

    private readonly NamespaceDirectory snapshots;
    private readonly DevDirectory dev;

    public RootDirectory(TreeContext context)
        : base(context, immutable: false, ino: 1)
    {
        snapshots = new NamespaceDirectory(context, new BackupNamespace(string.Empty));
        dev = new DevDirectory(context, snapshots);
    }

    protected override IReadOnlyList<string> ListNames() => [SnapshotsName];

    protected override FuseNode? CreateChild(string name) => name switch
    {
        SnapshotsName => snapshots,
        DevName => dev,
        _ => null,
    };

    protected override bool StillExists(string name) => true;
}

/// <summary>A namespace: its backup types (<c>vm</c>, <c>ct</c>, <c>host</c>) and <c>ns/</c> when it has children.</summary>
public sealed class NamespaceDirectory : TreeDirectory
{
    public const string ChildNamespacesName = "ns";

    public NamespaceDirectory(TreeContext context, BackupNamespace ns)
        : base(context, immutable: false)
    {
        Namespace = ns;
    }

    public BackupNamespace Namespace { get; }

    protected override IReadOnlyList<string> ListNames()
    {
        var names = Context.Store.ListGroups(Namespace).Select(g => g.Type).Distinct(StringComparer.Ordinal)
            .OrderBy(t => t, StringComparer.Ordinal).ToList();
        if (ChildNamespaces().Any())
        {
            names.Add(ChildNamespacesName);
        }

        return names;
    }

    internal IEnumerable<BackupNamespace> ChildNamespaces()
    {
        var prefix = Namespace.Path.Length == 0 ? string.Empty : Namespace.Path + "/";
        return Context.Store.ListNamespaces().Where(n =>
            n.Path.Length > prefix.Length && n.Path.StartsWith(prefix, StringComparison.Ordinal) &&
            n.Path.IndexOf('/', prefix.Length) < 0);
    }

    protected override FuseNode? CreateChild(string name)
    {
        if (name == ChildNamespacesName)
        {
            return ChildNamespaces().Any() ? new NamespaceListDirectory(Context, this) : null;
        }

        return IsBackupType(name) && Context.Store.ListGroups(Namespace).Any(g => g.Type == name)
            ? new TypeDirectory(Context, Namespace, name)
            : null;
    }

    private static bool IsBackupType(string name) => name is "vm" or "ct" or "host";
}

/// <summary><c>ns/</c>: the child namespaces of a namespace.</summary>
public sealed class NamespaceListDirectory : TreeDirectory
{
    private readonly NamespaceDirectory parent;

    public NamespaceListDirectory(TreeContext context, NamespaceDirectory parent)
        : base(context, immutable: false)
    {
        this.parent = parent;
    }

    protected override IReadOnlyList<string> ListNames() =>
        parent.ChildNamespaces().Select(n => n.Path[(n.Path.LastIndexOf('/') + 1)..])
            .OrderBy(n => n, StringComparer.Ordinal).ToList();

    protected override FuseNode? CreateChild(string name)
    {
        var child = parent.ChildNamespaces().FirstOrDefault(n => n.Path.EndsWith(name, StringComparison.Ordinal) &&
            n.Path[(n.Path.LastIndexOf('/') + 1)..] == name);
        return child is null ? null : new NamespaceDirectory(Context, child);
    }
}

/// <summary><c>vm/</c>, <c>ct/</c>, <c>host/</c>: the backup groups (ids) of one type.</summary>
public sealed class TypeDirectory : TreeDirectory
{
    private readonly BackupNamespace ns;
    private readonly string type;

    public TypeDirectory(TreeContext context, BackupNamespace ns, string type)
        : base(context, immutable: false)
    {
        this.ns = ns;
        this.type = type;
    }

    private IEnumerable<BackupGroup> Groups() => Context.Store.ListGroups(ns).Where(g => g.Type == type);

    protected override IReadOnlyList<string> ListNames() =>
        Groups().Select(g => g.Id).OrderBy(i => i, StringComparer.Ordinal).ToList();

    protected override bool StillExists(string name) =>
        Context.Store.GroupExists(new BackupGroup(ns, type, name));

    protected override FuseNode? CreateChild(string name)
    {
        var group = new BackupGroup(ns, type, name);
        return StillExists(name) ? new GroupDirectory(Context, group) : null;
    }
}

/// <summary>A backup group: one directory per finished snapshot, named by its time.</summary>
public sealed class GroupDirectory : TreeDirectory
{
    private readonly BackupGroup group;

    public GroupDirectory(TreeContext context, BackupGroup group)
        : base(context, immutable: false)
    {
        this.group = group;
    }

    protected override DateTimeOffset MTime =>
        Context.Store.GroupModified(group) ?? Context.MountTime;

    protected override IReadOnlyList<string> ListNames() =>
        Context.Store.ListSnapshots(group).Select(s => s.TimeName).ToList();

    protected override bool StillExists(string name) => Context.Store.IsFinishedSnapshot(group, name);

    protected override FuseNode? CreateChild(string name)
    {
        if (!StillExists(name))
        {
            return null;
        }

        try
        {
            var snapshot = Context.Store.GetSnapshot(group.Namespace, $"{group.Type}/{group.Id}/{name}");
            return new SnapshotDirectory(Context, new SnapshotState(Context, snapshot));
        }
        catch (SnapshotNotFoundException)
        {
            return null;
        }
    }
}
