namespace RestoreFs.Tree.Files;

/// <summary>A path of one snapshot's restore VM (<see cref="Vm"/> names the VM; the path is kept as base64 of its bytes).</summary>
public readonly record struct PathKey(string Vm, string Path)
{
    public static PathKey Of(string vm, byte[] path) => new(vm, Convert.ToBase64String(path));
}

/// <summary>What a cached piece of content is: a block of a file at an offset, or a whole small file.</summary>
public enum ContentKind
{
    Block,
    Whole,
}

/// <summary>A cache key: the file, the kind of piece, and for a block its offset.</summary>
public readonly record struct ContentKey(PathKey File, ContentKind Kind, long Offset)
{
    public static ContentKey BlockAt(string vm, byte[] path, long offset) => new(PathKey.Of(vm, path), ContentKind.Block, offset);

    public static ContentKey WholeFile(string vm, byte[] path) => new(PathKey.Of(vm, path), ContentKind.Whole, 0);
}

/// <summary>
/// File content fetched ahead of reads — small files that came inline with a listing, and read-ahead windows of
/// large files — bounded by bytes, least recently used out first.
/// </summary>
public sealed class ContentCache(long capacity)
{
    private readonly object gate = new();
    private readonly Dictionary<ContentKey, LinkedListNode<(ContentKey Key, byte[] Data)>> map = [];
    private readonly LinkedList<(ContentKey Key, byte[] Data)> order = new();
    private long bytes;

    public long Bytes
    {
        get
        {
            lock (gate)
            {
                return bytes;
            }
        }
    }

    public void Put(ContentKey key, byte[] data)
    {
        if (data.Length > capacity / 4)
        {
            return;
        }

        lock (gate)
        {
            if (map.Remove(key, out var old))
            {
                order.Remove(old);
                bytes -= old.Value.Data.Length;
            }

            map[key] = order.AddFirst((key, data));
            bytes += data.Length;
            while (bytes > capacity && order.Last is { } last)
            {
                order.RemoveLast();
                map.Remove(last.Value.Key);
                bytes -= last.Value.Data.Length;
            }
        }
    }

    public byte[]? Get(ContentKey key)
    {
        lock (gate)
        {
            if (!map.TryGetValue(key, out var node))
            {
                return null;
            }

            order.Remove(node);
            order.AddFirst(node);
            return node.Value.Data;
        }
    }

    /// <summary>Drops everything of one VM (it stopped, or its snapshot went idle).</summary>
    public void RemoveVm(string vm)
    {
        lock (gate)
        {
            for (var node = order.First; node is not null;)
            {
                var next = node.Next;
                if (node.Value.Key.File.Vm == vm)
                {
                    order.Remove(node);
                    map.Remove(node.Value.Key);
                    bytes -= node.Value.Data.Length;
                }

                node = next;
            }
        }
    }
}
