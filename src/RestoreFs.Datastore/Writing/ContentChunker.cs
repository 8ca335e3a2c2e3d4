using System.Buffers.Binary;
using System.Numerics;
using System.Security.Cryptography;

namespace RestoreFs.Datastore;

/// <summary>
/// Content-defined chunk boundaries for dynamic indexes, the way PBS cuts them: a Buzhash rolling hash over a 64-byte
/// window, no cut before <c>avg/4</c> bytes, a cut forced at <c>avg×4</c>, and in between a cut where the hash hits the
/// discriminator. The 256-entry byte table is RestoreFs's own (derived from SHA-256), so boundaries (and thus
/// deduplication against chunks made by PBS itself) differ from PBS's; the index and chunks are valid either way.
/// </summary>
public sealed class ContentChunker
{
    public const int WindowSize = 64;
    public const int DefaultAverage = 4 * 1024 * 1024;

    private static readonly uint[] Table = MakeTable();

    private readonly byte[] window = new byte[WindowSize];
    private readonly uint discriminator;
    private uint hash;
    private long length;

    public ContentChunker(int averageChunkSize = DefaultAverage)
    {
        if (averageChunkSize < 4 * WindowSize || averageChunkSize > 64 * 1024 * 1024)
        {
            throw new ArgumentOutOfRangeException(nameof(averageChunkSize));
        }

        Average = averageChunkSize;
        MinSize = averageChunkSize / 4;
        MaxSize = averageChunkSize * 4;
        // A cut is tested only past the minimum; aiming for (average − minimum) more bytes gives the average overall.
        discriminator = (uint)(averageChunkSize - MinSize);
    }

    public int Average { get; }

    public int MinSize { get; }

    public int MaxSize { get; }

    /// <summary>
    /// Scans <paramref name="data"/> (the bytes following what was scanned before); returns how many of them belong to
    /// the current chunk when it ends inside <paramref name="data"/>, or −1 when the chunk continues past it.
    /// </summary>
    public int Scan(ReadOnlySpan<byte> data)
    {
        for (var i = 0; i < data.Length; i++)
        {
            var slot = (int)(length & (WindowSize - 1));
            var outgoing = window[slot];
            window[slot] = data[i];
            // A 32-bit rotation by the window size (64) is the identity, so the outgoing byte's table value needs none.
            hash = BitOperations.RotateLeft(hash, 1) ^ Table[outgoing] ^ Table[data[i]];
            length++;
            if (length >= MaxSize || (length >= MinSize && hash % discriminator == discriminator - 1))
            {
                Reset();
                return i + 1;
            }
        }

        return -1;
    }

    /// <summary>Starts a new chunk (the window starts empty, as after a cut).</summary>
    public void Reset()
    {
        Array.Clear(window);
        hash = 0;
        length = 0;
    }

    private static uint[] MakeTable()
    {
        var table = new uint[256];
        for (var i = 0; i < 256; i++)
        {
            var digest = SHA256.HashData(System.Text.Encoding.ASCII.GetBytes($"RestoreFs buzhash {i}"));
            table[i] = BinaryPrimitives.ReadUInt32LittleEndian(digest);
        }

        return table;
    }
}
