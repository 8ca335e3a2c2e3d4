using System.Collections.Concurrent;

namespace RestoreFs.Tree.Files;

/// <summary>
/// The nodes of <c>files/</c> per restore VM: the directories whose listings are loaded, and the table of hard-linked
/// inodes. When a VM stops, <see cref="Release"/> unloads them, so a browsed snapshot costs no memory afterwards (the
/// next listing asks the VM again). Nodes the kernel still holds stay valid: they list again when asked.
/// </summary>
public sealed class FilesNodeRegistry
{
    private readonly ConcurrentDictionary<string, VmNodes> byVm = new(StringComparer.Ordinal);

    private sealed class VmNodes
    {
        public ConcurrentDictionary<RemoteDirectory, byte> Loaded { get; } = new(ReferenceEqualityComparer.Instance);

        public LinkTable Links { get; } = new();
    }

    /// <summary>The hard-link table of a VM's volumes.</summary>
    public LinkTable Links(string vm) => byVm.GetOrAdd(vm, _ => new VmNodes()).Links;

    /// <summary>Notes a directory that holds a loaded listing.</summary>
    public void Loaded(string vm, RemoteDirectory directory) => byVm.GetOrAdd(vm, _ => new VmNodes()).Loaded[directory] = 0;

    /// <summary>Directories with a loaded listing, all VMs.</summary>
    public int LoadedDirectories => byVm.Values.Sum(v => v.Loaded.Count);

    /// <summary>Unloads every listing of the VM's nodes and forgets its hard links; returns the directories unloaded.</summary>
    public int Release(string vm)
    {
        if (!byVm.TryRemove(vm, out var nodes))
        {
            return 0;
        }

        foreach (var directory in nodes.Loaded.Keys)
        {
            directory.Unload();
        }

        return nodes.Loaded.Count;
    }
}
