namespace RestoreFs.Cli.Hosting;

/// <summary>
/// File content fetched ahead of reads — small files that came inline with a listing, and read-ahead windows of
/// large files — bounded by bytes, least recently used out first.
/// </summary>
public sealed class ContentCache(long capacity)
{
    private readonly object gate = new();
    private readonly Dictionary<string, LinkedListNode<(string Key, byte[] Data)>> map = new(StringComparer.Ordinal);
    private readonly LinkedList<(string Key, byte[] Data)> order = new();
    private long bytes;

    public static string KeyOf(string vm, byte[] path, long offset) => $"{vm}\n{Convert.ToBase64String(path)}\n{offset}";

    public void Put(string key, byte[] data)
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

    public byte[]? Get(string key)
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
}
