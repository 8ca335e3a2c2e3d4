using System.Text;
using RestoreFs.RestoreApi;

namespace RestoreFs.Tree.Files;

/// <summary>An answer of the restore VM that breaks the API's rules: the guest is not trusted, so the request fails
/// (EIO to the caller, logged once) instead of showing what the answer claims.</summary>
public sealed class MalformedAnswerException(string message) : IOException(message);

/// <summary>
/// Host-side checks of what the guest answers (issue 11): the guest runs file system code over untrusted disk data,
/// so a listing, a file map, an xattr set or a seek answer is checked before <c>files/</c> shows or uses it.
/// </summary>
public static class GuestAnswers
{
    /// <summary>Entries of one directory at most (the daemon pages 100,000 at a time; this is far past any real one).</summary>
    public const int MaxEntries = 4_000_000;

    /// <summary>The kernel's FUSE name limit.</summary>
    public const int MaxName = 1024;

    public const int MaxTarget = 4096;

    public const int MaxXattrName = 255;

    public const int MaxXattrValue = 64 * 1024;

    public const int MaxXattrCount = 65_536;

    private static readonly string Types = "dflhbcpsv?";

    /// <summary>Throws <see cref="MalformedAnswerException"/> unless every entry is well formed and the names are
    /// valid and unique.</summary>
    public static void CheckListing(byte[] path, IReadOnlyList<RemoteEntry> entries)
    {
        if (entries.Count > MaxEntries)
        {
            throw Bad(path, $"{entries.Count} entries (at most {MaxEntries})");
        }

        var seen = new HashSet<string>(entries.Count, StringComparer.Ordinal);
        foreach (var e in entries)
        {
            CheckName(path, e.Name);
            if (!seen.Add(Convert.ToBase64String(e.Name)))
            {
                throw Bad(path, $"the name {Show(e.Name)} is listed twice");
            }

            if (!Types.Contains(e.Type))
            {
                throw Bad(path, $"{Show(e.Name)} has the unknown type '{e.Type}'");
            }

            if (e.MTimeNs > 999_999_999 || e.ATime is { Nanoseconds: > 999_999_999 } || e.CTime is { Nanoseconds: > 999_999_999 })
            {
                throw Bad(path, $"{Show(e.Name)} has a time with more than 999999999 nanoseconds");
            }

            if (e.Type == 'l' && (e.Target is null || e.Target.Length > MaxTarget || e.Target.AsSpan().Contains((byte)0)))
            {
                throw Bad(path, $"the symlink {Show(e.Name)} has no valid target");
            }

            if (e.HasStat && e.Type != 'v' && (e.Mode & 0xF000) != 0 && (e.Mode & 0xF000) != TypeBits(e.Type))
            {
                throw Bad(path, $"{Show(e.Name)} is listed as type '{e.Type}' with mode {Convert.ToString(e.Mode, 8)}");
            }

            if (e.Xattrs is { } xattrs)
            {
                CheckXattrs(Remote.Child(path, e.Name), xattrs);
            }
        }
    }

    public static void CheckName(byte[] path, byte[] name)
    {
        if (name.Length == 0 || name.Length > MaxName || name is [(byte)'.'] || name is [(byte)'.', (byte)'.']
            || name.AsSpan().IndexOfAny((byte)'/', (byte)0) >= 0)
        {
            throw Bad(path, $"the entry name {Show(name)} is not a valid file name");
        }
    }

    /// <summary>Names non-empty, without NUL, at most 255 bytes, unique; values at most 64 KiB.</summary>
    public static void CheckXattrs(byte[] path, IReadOnlyList<RemoteXattr> xattrs)
    {
        if (xattrs.Count > MaxXattrCount)
        {
            throw Bad(path, $"{xattrs.Count} extended attributes");
        }

        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var x in xattrs)
        {
            if (x.Name.Length == 0 || x.Name.Length > MaxXattrName || x.Name.AsSpan().Contains((byte)0))
            {
                throw Bad(path, $"the extended attribute name {Show(x.Name)} is not valid");
            }

            if (!seen.Add(Convert.ToBase64String(x.Name)))
            {
                throw Bad(path, $"the extended attribute {Show(x.Name)} is listed twice");
            }

            if (x.Value is { Length: > MaxXattrValue })
            {
                throw Bad(path, $"the extended attribute {Show(x.Name)} has {x.Value.Length} bytes (at most {MaxXattrValue})");
            }

            if (x.Value is null && x.Error is null)
            {
                throw Bad(path, $"the extended attribute {Show(x.Name)} has neither a value nor an error");
            }
        }
    }

    /// <summary>
    /// A file map is used only when its extents are sorted, do not overlap, have positive lengths, lie inside the file
    /// (in total at most its size) and inside the volume's byte range of the image (<paramref name="volumeStart"/>,
    /// <paramref name="volumeEnd"/>), all without overflow. Returns why not, or null when it is good.
    /// </summary>
    public static string? CheckExtents(IReadOnlyList<FileExtent> extents, long size, long volumeStart, long volumeEnd)
    {
        try
        {
            long end = 0;
            long total = 0;
            foreach (var x in extents)
            {
                if (x.Length <= 0 || x.Logical < 0 || x.Disk < 0)
                {
                    return $"an extent [{x.Logical}, {x.Disk}, {x.Length}] has a negative place or no length";
                }

                var logicalEnd = checked(x.Logical + x.Length);
                var diskEnd = checked(x.Disk + x.Length);
                if (x.Logical < end)
                {
                    return $"the extent at file offset {x.Logical} overlaps or is out of order";
                }

                if (logicalEnd > size)
                {
                    return $"the extent at file offset {x.Logical} goes past the file's {size} bytes";
                }

                if (x.Disk < volumeStart || diskEnd > volumeEnd)
                {
                    return $"the extent at file offset {x.Logical} lies outside the volume (disk bytes {x.Disk}..{diskEnd}, volume {volumeStart}..{volumeEnd})";
                }

                total = checked(total + x.Length);
                end = logicalEnd;
            }

            return total > size ? $"the extents hold {total} bytes, more than the file's {size}" : null;
        }
        catch (OverflowException)
        {
            return "an extent overflows 64-bit offsets";
        }
    }

    /// <summary>The answer to a seek from <paramref name="offset"/> in a file of <paramref name="size"/> bytes must lie in
    /// [offset, size] (or be -1: no more data).</summary>
    public static void CheckSeek(byte[] path, long offset, long size, bool data, long answer)
    {
        if (answer == -1 && data)
        {
            return;
        }

        if (answer < offset || answer > size || (data && answer == size))
        {
            throw Bad(path, $"seek {(data ? "data" : "hole")} from {offset} answered {answer} in a file of {size} bytes");
        }
    }

    public static uint TypeBits(char type) => type switch
    {
        'd' or 'v' => 0x4000,
        'l' => 0xA000,
        'b' => 0x6000,
        'c' => 0x2000,
        'p' => 0x1000,
        's' => 0xC000,
        _ => 0x8000,
    };

    public static string Show(byte[] name) => "\"" + Encoding.UTF8.GetString(name.AsSpan(0, Math.Min(name.Length, 200))).Replace("\0", "\\0") + "\"";

    private static MalformedAnswerException Bad(byte[] path, string what) =>
        new($"the restore VM's answer for {Encoding.UTF8.GetString(path)} is malformed: {what}");
}
