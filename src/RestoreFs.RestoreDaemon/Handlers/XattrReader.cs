using System.Globalization;
using System.Text;
using RestoreFs.RestoreApi;
using RestoreFs.RestoreDaemon.Native;

namespace RestoreFs.RestoreDaemon.Handlers;

/// <summary>
/// Extended attributes of an entry reached through an open directory, without following a final symlink:
/// <c>llistxattr</c>/<c>lgetxattr</c> on <c>/proc/self/fd/&lt;dirfd&gt;/&lt;name&gt;</c>. The directory fd was reached
/// with <c>openat(O_NOFOLLOW)</c> per component and the kernel follows only its magic link, so the path cannot leave
/// the volume; the name is one component (never '/', '.' or '..'). This works for every file type, symlinks included,
/// on every kernel (flistxattr on an O_PATH fd does not).
/// </summary>
internal static class XattrReader
{
    /// <summary>XATTR_NAME_MAX.</summary>
    public const int MaxName = 255;

    /// <summary>XATTR_SIZE_MAX: larger values are sent as an error entry.</summary>
    public const int MaxValue = 64 * 1024;

    /// <summary>At most this many value bytes per entry; attributes past it are sent as error entries.</summary>
    public const int MaxTotal = 1 << 20;

    /// <summary>XATTR_LIST_MAX: the name list of one entry is at most this long.</summary>
    private const int MaxList = 64 * 1024;

    /// <summary>The path the xattr calls use for <paramref name="name"/> in <paramref name="dirfd"/> (an empty name:
    /// the directory itself).</summary>
    public static byte[] PathOf(int dirfd, ReadOnlySpan<byte> name)
    {
        if (name.IndexOf((byte)'/') >= 0 || name.SequenceEqual("."u8) || name.SequenceEqual(".."u8) || name.IndexOf((byte)0) >= 0)
        {
            throw new BadRequestException($"'{Encoding.UTF8.GetString(name)}' is not a single file name");
        }

        var dir = Encoding.ASCII.GetBytes("/proc/self/fd/" + dirfd.ToString(CultureInfo.InvariantCulture) + "/");
        return name.IsEmpty ? [.. dir, (byte)'.'] : [.. dir, .. name];
    }

    /// <summary>
    /// All attributes of the entry: exact values, or error entries for a value over <see cref="MaxValue"/>, past
    /// <see cref="MaxTotal"/> in all, or that cannot be read. With <paramref name="giveUpOver"/> &gt; 0, returns null
    /// as soon as the values would exceed that many bytes or any attribute is an error (the caller asks again in full).
    /// Throws <see cref="IOException"/> when the names cannot be listed.
    /// </summary>
    public static List<Xattr>? Read(int dirfd, ReadOnlySpan<byte> name, int giveUpOver = 0) =>
        Read(new Target(PathOf(dirfd, name), -1), giveUpOver);

    /// <summary>As <see cref="Read(int, ReadOnlySpan{byte}, int)"/>, through a file already open (no second path walk).</summary>
    public static List<Xattr>? ReadOpen(int fd, int giveUpOver = 0) => Read(new Target(null, fd), giveUpOver);

    /// <summary>Where the calls go: a path (l*xattr, not following a final symlink) or an open file (f*xattr).</summary>
    private readonly record struct Target(byte[]? Path, int Fd)
    {
        public int List(Span<byte> buffer) => Path is null ? LibC.FListXattr(Fd, buffer) : LibC.LListXattr(Path, buffer);

        public int Get(ReadOnlySpan<byte> name, Span<byte> buffer) => Path is null ? LibC.FGetXattr(Fd, name, buffer) : LibC.LGetXattr(Path, name, buffer);
    }

    private static List<Xattr>? Read(Target path, int giveUpOver)
    {
        var names = ListNames(path);
        var result = new List<Xattr>(names.Count);
        long total = 0;
        foreach (var n in names)
        {
            Xattr x;
            if (n.Length > MaxName)
            {
                x = new Xattr(n, null, $"the name is longer than {MaxName} bytes");
            }
            else
            {
                var (value, error) = ReadValue(path, n, total);
                if (value is null && error is null)
                {
                    continue; // removed meanwhile
                }

                x = new Xattr(n, value, error);
                total += value?.Length ?? 0;
            }

            if (giveUpOver > 0 && (x.Error is not null || total > giveUpOver))
            {
                return null;
            }

            result.Add(x);
        }

        return result;
    }

    private static List<byte[]> ListNames(Target path)
    {
        for (var attempt = 0; attempt < 4; attempt++)
        {
            var size = path.List([]);
            if (size is -LibC.EOPNOTSUPP)
            {
                return []; // the file system has no extended attributes
            }

            if (size < 0)
            {
                throw new IOException($"cannot list its extended attributes: {LibC.StrError(-size)}");
            }

            if (size == 0)
            {
                return [];
            }

            var buffer = new byte[Math.Min(size, MaxList)];
            var n = path.List(buffer);
            if (n == -LibC.ERANGE)
            {
                continue; // grew meanwhile
            }

            if (n < 0)
            {
                throw new IOException($"cannot list its extended attributes: {LibC.StrError(-n)}");
            }

            var names = new List<byte[]>();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var range in buffer.AsSpan(0, n).Split((byte)0))
            {
                var one = buffer.AsSpan(0, n)[range];
                if (one.Length > 0 && seen.Add(Convert.ToBase64String(one)))
                {
                    names.Add(one.ToArray());
                }
            }

            return names;
        }

        throw new IOException("cannot list its extended attributes: the list keeps changing");
    }

    /// <summary>(value, null), (null, error), or (null, null) when the attribute is gone.</summary>
    private static (byte[]? Value, string? Error) ReadValue(Target path, byte[] name, long totalSoFar)
    {
        for (var attempt = 0; attempt < 4; attempt++)
        {
            var size = path.Get(name, []);
            if (size == -LibC.ENODATA)
            {
                return (null, null);
            }

            if (size == -LibC.E2BIG || size > MaxValue)
            {
                return (null, $"the value is larger than {MaxValue} bytes");
            }

            if (size < 0)
            {
                return (null, $"cannot read it: {LibC.StrError(-size)}");
            }

            if (totalSoFar + size > MaxTotal)
            {
                return (null, $"not sent: the attributes of this entry exceed {MaxTotal} bytes");
            }

            var buffer = new byte[size];
            var n = size == 0 ? 0 : path.Get(name, buffer);
            if (n == -LibC.ERANGE)
            {
                continue;
            }

            if (n == -LibC.ENODATA)
            {
                return (null, null);
            }

            if (n < 0)
            {
                return (null, $"cannot read it: {LibC.StrError(-n)}");
            }

            return (n == size ? buffer : buffer[..n], null);
        }

        return (null, "cannot read it: the value keeps changing");
    }
}
