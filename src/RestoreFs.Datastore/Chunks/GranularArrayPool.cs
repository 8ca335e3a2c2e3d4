using System.Buffers;

namespace RestoreFs.Datastore;

/// <summary>
/// A pool of large arrays sized to what is asked rounded up to 64 KiB, so a chunk file of 4 MiB and a few bytes does
/// not take the 8 MiB array of a power-of-two pool; the smallest free array that fits is handed out, and at most
/// <c>keep</c> arrays are kept (the larger ones when it is full).
/// </summary>
public sealed class GranularArrayPool(int keep) : ArrayPool<byte>
{
    private const int Granule = 64 * 1024;
    private readonly Lock gate = new();
    private readonly List<byte[]> free = [];

    /// <summary>Arrays kept for reuse now.</summary>
    public int FreeCount
    {
        get
        {
            lock (gate)
            {
                return free.Count;
            }
        }
    }

    public override byte[] Rent(int minimumLength)
    {
        lock (gate)
        {
            var best = -1;
            for (var i = 0; i < free.Count; i++)
            {
                if (free[i].Length >= minimumLength && (best < 0 || free[i].Length < free[best].Length))
                {
                    best = i;
                }
            }

            if (best >= 0)
            {
                var found = free[best];
                free.RemoveAt(best);
                return found;
            }
        }

        return GC.AllocateUninitializedArray<byte>((int)Math.Min(Array.MaxLength, ((long)Math.Max(1, minimumLength) + Granule - 1) / Granule * Granule));
    }

    public override void Return(byte[] array, bool clearArray = false)
    {
        if (clearArray)
        {
            Array.Clear(array);
        }

        lock (gate)
        {
            if (free.Count < keep)
            {
                free.Add(array);
                return;
            }

            // Full: keep the larger arrays (a large request finds one; a small one is served by any).
            var smallest = 0;
            for (var i = 1; i < free.Count; i++)
            {
                if (free[i].Length < free[smallest].Length)
                {
                    smallest = i;
                }
            }

            if (free.Count > 0 && free[smallest].Length < array.Length)
            {
                free[smallest] = array;
            }
        }
    }

    /// <summary>Drops every kept array (after a large release, so the collector can give the memory back).</summary>
    public void Clear()
    {
        lock (gate)
        {
            free.Clear();
        }
    }
}
