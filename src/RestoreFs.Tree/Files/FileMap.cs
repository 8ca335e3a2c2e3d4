using RestoreFs.RestoreApi;

namespace RestoreFs.Tree.Files;

/// <summary>
/// A file of <c>files/</c> whose bytes are read from the backup image itself: the restore VM mapped it onto its disk
/// (extents checked by <see cref="GuestAnswers.CheckExtents"/> before a map is made). Bytes no extent covers are
/// zeros (holes), which is also what SEEK_HOLE reports.
/// </summary>
public sealed record FileMap(string Archive, FileExtent[] Extents, long Size)
{
    /// <summary>Reads a mapped file straight from the image: extents from the image reader, zeros between them.</summary>
    public async ValueTask<int> ReadAsync(SnapshotState snapshot, long offset, Memory<byte> buffer, CancellationToken ct)
    {
        if (offset >= Size)
        {
            return 0;
        }

        var n = (int)Math.Min(buffer.Length, Size - offset);
        var target = buffer[..n];
        target.Span.Clear();
        var reader = snapshot.OpenImage(Archive);
        var extents = Extents;
        var lo = 0;
        var hi = extents.Length;
        while (lo < hi)
        {
            // the first extent that ends after offset
            var mid = (lo + hi) / 2;
            if (extents[mid].Logical + extents[mid].Length <= offset)
            {
                lo = mid + 1;
            }
            else
            {
                hi = mid;
            }
        }

        var end = offset + n;
        for (var i = lo; i < extents.Length && extents[i].Logical < end; i++)
        {
            var x = extents[i];
            var from = Math.Max(offset, x.Logical);
            var to = Math.Min(end, x.Logical + x.Length);
            var part = target.Slice((int)(from - offset), (int)(to - from));
            try
            {
                while (part.Length > 0)
                {
                    var got = await reader.ReadAsync(x.Disk + (from - x.Logical), part, ct).ConfigureAwait(false);
                    if (got <= 0)
                    {
                        throw new IOException($"{Archive} ended inside a mapped file extent at {x.Disk + (from - x.Logical)}");
                    }

                    part = part[got..];
                    from += got;
                }
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                throw snapshot.Translate(e, Archive);
            }
        }

        return n;
    }

    /// <summary>The next data (or hole) at or after <paramref name="offset"/> in a file whose extents are the data;
    /// -1 for no more data. A hole always exists at the end of the file.</summary>
    public long Seek(long offset, bool data)
    {
        foreach (var x in Extents)
        {
            if (x.Logical + x.Length <= offset)
            {
                continue;
            }

            if (data)
            {
                return Math.Max(offset, x.Logical);
            }

            if (x.Logical > offset)
            {
                return offset; // offset lies in the hole before this extent
            }

            offset = x.Logical + x.Length; // inside data: the hole starts after it (or after the next adjacent extent)
        }

        return data ? -1 : Math.Min(offset, Size);
    }

}
