using System.Runtime.CompilerServices;

namespace RestoreFs.Fuse.Nodes;

/// <summary>
/// Node ids and lookup counts. Ids come from a counter and are never reused within a mount; the same node object maps
/// to the same id while the kernel holds it (count &gt; 0). The root is id 1 and is never forgotten.
/// </summary>
internal sealed class NodeTable
{
    private readonly object gate = new();
    private readonly Dictionary<ulong, (FuseNode Node, long Lookups)> byId = new();
    private readonly Dictionary<FuseNode, ulong> byNode = new(ReferenceEqualityComparer.Instance);
    private ulong nextId = 1;

    public NodeTable(FuseNode root)
    {
        byId[1] = (root, 1);
        byNode[root] = 1;
    }

    public int Count
    {
        get
        {
            lock (gate)
            {
                return byId.Count;
            }
        }
    }

    public FuseNode? Get(ulong id)
    {
        lock (gate)
        {
            return byId.TryGetValue(id, out var e) ? e.Node : null;
        }
    }

    /// <summary>Counts one lookup of <paramref name="node"/> and returns its id.</summary>
    public ulong Lookup(FuseNode node)
    {
        lock (gate)
        {
            if (byNode.TryGetValue(node, out var id))
            {
                var e = byId[id];
                byId[id] = (e.Node, e.Lookups + 1);
                return id;
            }

            id = ++nextId;
            byId[id] = (node, 1);
            byNode[node] = id;
            return id;
        }
    }

    public void Forget(ulong id, ulong count)
    {
        if (id == 1)
        {
            return;
        }

        lock (gate)
        {
            if (!byId.TryGetValue(id, out var e))
            {
                return;
            }

            var left = e.Lookups - (long)count;
            if (left <= 0)
            {
                byId.Remove(id);
                byNode.Remove(e.Node);
            }
            else
            {
                byId[id] = (e.Node, left);
            }
        }
    }

    /// <summary>The id of a node the kernel already knows (for "." entries), without counting a lookup.</summary>
    public ulong? IdOf(FuseNode node)
    {
        lock (gate)
        {
            return byNode.TryGetValue(node, out var id) ? id : null;
        }
    }
}

/// <summary>Open file and directory handles by fh.</summary>
internal sealed class HandleTable<T>
    where T : class
{
    private readonly object gate = new();
    private readonly Dictionary<ulong, T> handles = new();
    private ulong next;

    public ulong Add(T handle)
    {
        lock (gate)
        {
            var fh = ++next;
            handles[fh] = handle;
            return fh;
        }
    }

    public T? Get(ulong fh)
    {
        lock (gate)
        {
            return handles.TryGetValue(fh, out var h) ? h : null;
        }
    }

    public T? Remove(ulong fh)
    {
        lock (gate)
        {
            return handles.Remove(fh, out var h) ? h : null;
        }
    }

    public List<T> RemoveAll()
    {
        lock (gate)
        {
            var all = handles.Values.ToList();
            handles.Clear();
            return all;
        }
    }
}

/// <summary>An open directory: the listing taken at OPENDIR (cookies stay valid for the life of the handle).</summary>
internal sealed record DirectoryHandle(FuseNode Directory, ulong NodeId, IReadOnlyList<FuseDirectoryEntry> Entries);
