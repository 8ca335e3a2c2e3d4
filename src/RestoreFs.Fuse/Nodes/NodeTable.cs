namespace RestoreFs.Fuse.Nodes;

/// <summary>
/// Node ids and lookup counts. Ids come from a counter and are never reused within a mount; the same node object maps
/// to the same id while the kernel holds it (count &gt; 0). The root is id 1 and is never forgotten.
/// </summary>
internal sealed class NodeTable
{
    private readonly object gate = new();
    private readonly Dictionary<ulong, FuseNode> byId = new();
    private ulong nextId = 1;

    public NodeTable(FuseNode root)
    {
        root.TableId = 1;
        root.TableLookups = 1;
        byId[1] = root;
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
            return byId.GetValueOrDefault(id);
        }
    }

    /// <summary>Counts one lookup of <paramref name="node"/> and returns its id.</summary>
    public ulong Lookup(FuseNode node)
    {
        lock (gate)
        {
            if (Known(node))
            {
                node.TableLookups++;
                return node.TableId;
            }

            var id = ++nextId;
            node.TableId = id;
            node.TableLookups = 1;
            byId[id] = node;
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
            if (!byId.TryGetValue(id, out var node))
            {
                return;
            }

            node.TableLookups -= (long)count;
            if (node.TableLookups <= 0)
            {
                byId.Remove(id);
                node.TableId = 0;
                node.TableLookups = 0;
            }
        }
    }

    /// <summary>The id of a node the kernel already knows (for "." entries), without counting a lookup.</summary>
    public ulong? IdOf(FuseNode node)
    {
        lock (gate)
        {
            return Known(node) ? node.TableId : null;
        }
    }

    /// <summary>Under the lock: whether the node's id is this table's (not one left from an earlier mount of the same tree).</summary>
    private bool Known(FuseNode node) =>
        node.TableId != 0 && byId.TryGetValue(node.TableId, out var held) && ReferenceEquals(held, node);
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

/// <summary>
/// An open directory: the listing taken once for the handle (cookies stay valid for its life). <see cref="Entries"/> is
/// null until the first READDIR where the listing was deferred: a directory whose listing never changes is opened with
/// the kernel's readdir cache kept, so a directory listed before is listed again from that cache with no READDIR at all,
/// and making its listing at OPENDIR would be work for nothing (`cp -a` of a tree after a `find` of it opens every
/// directory again).
/// </summary>
internal sealed class DirectoryHandle(FuseNode directory, ulong nodeId, IReadOnlyList<FuseDirectoryEntry>? entries)
{
    public FuseNode Directory => directory;

    public ulong NodeId => nodeId;

    public IReadOnlyList<FuseDirectoryEntry>? Entries { get; set; } = entries;
}
