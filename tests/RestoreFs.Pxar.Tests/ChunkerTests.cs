using RestoreFs.Datastore;

namespace RestoreFs.Pxar.Tests;

public class ChunkerTests
{
    private static List<int> Cut(byte[] data, int average, int piece)
    {
        var chunker = new ContentChunker(average);
        var sizes = new List<int>();
        var current = 0;
        for (var at = 0; at < data.Length; at += piece)
        {
            var span = data.AsSpan(at, Math.Min(piece, data.Length - at));
            while (span.Length > 0)
            {
                var cut = chunker.Scan(span);
                if (cut < 0)
                {
                    current += span.Length;
                    break;
                }

                sizes.Add(current + cut);
                current = 0;
                span = span[cut..];
            }
        }

        sizes.Add(current);
        return sizes;
    }

    [Fact]
    public void ChunksAverageTheTargetWithinTheBoundsAndIgnoreWriteSizes()
    {
        var data = new byte[48 * 1024 * 1024];
        new Random(7).NextBytes(data);
        var sizes = Cut(data, 1024 * 1024, 1 << 20);
        Assert.Equal(sizes, Cut(data, 1024 * 1024, 4093));
        Assert.All(sizes[..^1], s => Assert.InRange(s, 256 * 1024, 4 * 1024 * 1024));
        var mean = data.Length / (double)sizes.Count;
        Assert.InRange(mean, 0.6 * 1024 * 1024, 1.6 * 1024 * 1024);
    }

    [Fact]
    public void BoundariesResynchroniseAfterAnInsertion()
    {
        var data = new byte[16 * 1024 * 1024];
        new Random(9).NextBytes(data);
        byte[] shifted = [.. data.AsSpan(0, 1000), 42, .. data.AsSpan(1000)];
        var ends = Ends(Cut(data, 256 * 1024, 65536));
        var shiftedEnds = Ends(Cut(shifted, 256 * 1024, 65536)).Select(e => e - 1).ToHashSet();
        // All but the first cut or two fall at the same content positions.
        Assert.True(ends.Count(shiftedEnds.Contains) >= ends.Count - 3, $"{ends.Count(shiftedEnds.Contains)} of {ends.Count}");
    }

    private static List<long> Ends(List<int> sizes)
    {
        long total = 0;
        return sizes.Select(s => total += s).ToList();
    }
}
