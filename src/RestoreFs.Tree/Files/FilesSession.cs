using System.Collections.Concurrent;
using System.Text;
using RestoreFs.RestoreApi;

namespace RestoreFs.Tree.Files;

/// <summary>
/// What <c>files/</c> holds for one snapshot's restore VM while it is in use: file maps (files read straight from the
/// image), volume placements, and a tree walker's bookkeeping (listed subdirectories, listings fetched ahead, the last
/// block read of each file). All of it is dropped when the VM stops (<see cref="VmFiles.Release"/>). Paths are keyed
/// as Latin-1 strings of their bytes (one char per byte: lossless, no encoding cost).
/// </summary>
internal sealed class FilesSession(string vm)
{
    private readonly ConcurrentDictionary<string, FileMap> maps = new(StringComparer.Ordinal);
    private readonly ConcurrentQueue<string> mapOrder = new();
    private long mapUnits;
    private long lastUse = Environment.TickCount64;

    public string Vm { get; } = vm;

    /// <summary>The snapshot as last used (its image readers' caches are dropped with the session).</summary>
    public SnapshotState? Snapshot { get; set; }

    public ConcurrentDictionary<string, FileExtent[]> Placements { get; } = new(StringComparer.Ordinal);

    public ConcurrentDictionary<string, List<byte[]>> Subdirectories { get; } = new(StringComparer.Ordinal);

    public ConcurrentDictionary<string, (string Parent, int Index)> Parents { get; } = new(StringComparer.Ordinal);

    public ConcurrentDictionary<string, Task<IReadOnlyList<RemoteEntry>>> Prefetched { get; } = new(StringComparer.Ordinal);

    public ConcurrentDictionary<string, long> LastBlock { get; } = new(StringComparer.Ordinal);

    public static string Key(byte[] path) => Encoding.Latin1.GetString(path);

    public long LastUse => Interlocked.Read(ref lastUse);

    public void Touch() => Interlocked.Exchange(ref lastUse, Environment.TickCount64);

    /// <summary>Memory units the maps take (one per map plus one per extent).</summary>
    public long MapUnits => Interlocked.Read(ref mapUnits);

    public int MapCount => maps.Count;

    public static long UnitsOf(FileMap map) => 1 + map.Extents.Length;

    public bool TryGetMap(byte[] path, out FileMap map) => maps.TryGetValue(Key(path), out map!);

    public bool HasMap(byte[] path) => maps.ContainsKey(Key(path));

    /// <summary>Adds a map; returns the units it added (0 when one was there).</summary>
    public long AddMap(byte[] path, FileMap map)
    {
        var key = Key(path);
        if (maps.TryGetValue(key, out var old))
        {
            maps[key] = map;
            var delta = UnitsOf(map) - UnitsOf(old);
            Interlocked.Add(ref mapUnits, delta);
            return delta;
        }

        if (!maps.TryAdd(key, map))
        {
            return 0;
        }

        mapOrder.Enqueue(key);
        Interlocked.Add(ref mapUnits, UnitsOf(map));
        return UnitsOf(map);
    }

    /// <summary>Drops the oldest map; returns its units (0 when there is none left).</summary>
    public long DropOldestMap()
    {
        while (mapOrder.TryDequeue(out var key))
        {
            if (maps.TryRemove(key, out var map))
            {
                Interlocked.Add(ref mapUnits, -UnitsOf(map));
                return UnitsOf(map);
            }
        }

        return 0;
    }

    /// <summary>Drops every map; returns the units freed.</summary>
    public long DropMaps()
    {
        long freed = 0;
        while (DropOldestMap() is var units and > 0)
        {
            freed += units;
        }

        return freed;
    }
}
