using System.Runtime.CompilerServices;
using System.Text;
using RestoreFs.RestoreApi;
using RestoreFs.RestoreDaemon.Native;

namespace RestoreFs.RestoreDaemon.Handlers;

/// <summary>
/// Files below a mounted volume, reached component by component with <c>openat(O_NOFOLLOW)</c>: a symlink is never
/// followed (the host shows it as a symlink), so no path can leave the volume, whatever its symlinks say.
/// </summary>
/// <summary>How a mounted volume's files map onto its disk (see <see cref="FileExtents"/>).</summary>
internal sealed record ExtentMapping(IReadOnlyList<RestoreFs.RestoreDaemon.Disks.DiskSpan> Placement, long VolumeSize);

internal static class VolumeFiles
{
    /// <summary>The target's parent directory (open) and its last name; an empty name means the volume root.</summary>
    public static (Fd Parent, byte[] Name) Resolve(string mountPoint, IReadOnlyList<byte[]> rest)
    {
        var root = LibC.OpenPath(mountPoint, LibC.O_RDONLY | LibC.O_DIRECTORY);
        if (root < 0)
        {
            throw new IOException($"cannot open the volume at {mountPoint}: {LibC.StrError(-root)}");
        }

        var current = new Fd(root);
        for (var i = 0; i < rest.Count - 1; i++)
        {
            var next = LibC.OpenAt(current.Value, rest[i], LibC.O_RDONLY | LibC.O_DIRECTORY | LibC.O_NOFOLLOW);
            current.Dispose();
            if (next < 0)
            {
                throw new BadRequestException($"{Show(rest.Take(i + 1))}: {Reason(-next)}");
            }

            current = new Fd(next);
        }

        return (current, rest.Count == 0 ? [] : rest[^1]);
    }

    public static string Show(IEnumerable<byte[]> parts) => string.Join('/', parts.Select(p => Encoding.UTF8.GetString(p)));

    public static string Reason(int errno) => errno switch
    {
        LibC.ELOOP or LibC.ENOTDIR => "not a directory (symlinks are not followed)",
        LibC.ENOENT => "no such file or directory",
        _ => LibC.StrError(errno),
    };

    /// <summary><paramref name="prefix"/>/<paramref name="name"/>.</summary>
    private static byte[] Join(byte[] prefix, byte[] name) => [.. prefix, (byte)'/', .. name];

    public static ArchiveEntry Entry(byte[] prefix, byte[] name, in StatInfo st, byte[]? target)
    {
        var path = Join(prefix, name);
        var type = st.TypeChar;
        return WithStat(new ArchiveEntry(path, name, type, type != 'd', st.Kind is LibC.S_IFREG or LibC.S_IFLNK or LibC.S_IFDIR ? st.Size : 0UL, st.MTime,
            st.Mode, st.Uid, st.Gid, target, null), st);
    }

    /// <summary>The entry with everything statx said: exact mode, owner, times with nanoseconds, inode identity, link
    /// count, allocated blocks, device numbers.</summary>
    public static ArchiveEntry WithStat(ArchiveEntry e, in StatInfo st) => e with
    {
        MTime = st.MTime,
        MTimeNs = st.MTimeNsec,
        Mode = st.Mode,
        Uid = st.Uid,
        Gid = st.Gid,
        ATime = new Timestamp(st.ATime, st.ATimeNsec),
        CTime = new Timestamp(st.CTime, st.CTimeNsec),
        BTime = st.HasBTime ? new Timestamp(st.BTime, st.BTimeNsec) : null,
        Dev = new DeviceNumber(st.DevMajor, st.DevMinor),
        Ino = st.Inode,
        NLink = st.Links,
        Blocks = st.Blocks,
        RDev = st.Kind is LibC.S_IFBLK or LibC.S_IFCHR ? new DeviceNumber(st.RdevMajor, st.RdevMinor) : null,
    };

    /// <summary>Opens the directory the path names (the caller disposes it), or returns the single entry of a non-directory.</summary>
    public static (Fd? Directory, ArchiveEntry? Single) OpenForList(string mountPoint, IReadOnlyList<byte[]> rest, byte[] prefix, bool xattrs = false)
    {
        var (parent, name) = Resolve(mountPoint, rest);
        using (parent)
        {
            if (name.Length == 0)
            {
                return (new Fd(LibC.OpenAt(parent.Value, "."u8, LibC.O_RDONLY | LibC.O_DIRECTORY)), null);
            }

            var r = LibC.Stat(parent.Value, name, out var st);
            if (r < 0)
            {
                throw new BadRequestException($"{Show(rest)}: {Reason(-r)}");
            }

            if (st.Kind != LibC.S_IFDIR)
            {
                var parentPrefix = prefix.AsSpan(0, Math.Max(0, prefix.Length - name.Length - 1)).ToArray();
                var single = Entry(parentPrefix, name, st, st.Kind == LibC.S_IFLNK ? LibC.ReadLink(parent.Value, name) : null);
                if (xattrs)
                {
                    single = single with { Xattrs = InlineXattrs(parent.Value, name, new StrongBox<long>(InlineXattrBudget)) };
                }

                return (null, single);
            }

            var fd = LibC.OpenAt(parent.Value, name, LibC.O_RDONLY | LibC.O_DIRECTORY | LibC.O_NOFOLLOW);
            if (fd < 0)
            {
                throw new BadRequestException($"{Show(rest)}: {Reason(-fd)}");
            }

            return (new Fd(fd), null);
        }
    }

    /// <summary>At most this many attribute value bytes of one entry are sent inline in a listing (<c>xattrs=1</c>).</summary>
    public const int InlineXattrMax = 16 * 1024;

    /// <summary>At most this many attribute value bytes are inlined in one listing answer.</summary>
    public const long InlineXattrBudget = 8L << 20;

    /// <param name="inlineMax">Regular files up to this size come with their content…</param>
    /// <param name="inlineBudget">…until this many bytes were inlined in the listing. Contents are read several at a
    /// time: on a virtual disk each small read waits for the host, and waits overlap.</param>
    /// <param name="map">When set, regular files come with their extents on the disk where the file system gives an
    /// exact map (and then without inline content).</param>
    /// <param name="xattrs">Entries come with their extended attributes when they are small (see <see cref="InlineXattrMax"/>).</param>
    /// <param name="start">0, or the <c>next</c> of the previous page: where in the directory to begin.</param>
    /// <param name="limit">After this many names, the listing ends with a <see cref="EntryTypes.More"/> element when the
    /// directory goes on.</param>
    public static IEnumerable<ArchiveEntry> ListDirectory(Fd directory, byte[] prefix, int inlineMax = 0, long inlineBudget = 0, ExtentMapping? map = null,
        bool xattrs = false, long start = 0, int limit = int.MaxValue)
    {
        if (start != 0 && LibC.LSeek(directory.Value, start, LibC.SEEK_SET) < 0)
        {
            throw new BadRequestException($"start={start} is not a position in this directory: {LibC.StrError(LibC.Errno)}");
        }

        var xattrBudget = new StrongBox<long>(xattrs ? InlineXattrBudget : 0);
        var batch = new List<(ArchiveEntry Entry, bool Inline)>(64);
        // Names are unique in an answer: a damaged directory may repeat one, which is then left out.
        var seen = new HashSet<byte[]>(ByteNames.Comparer);
        var consumed = 0;
        long position = start;
        using var names = LibC.ReadDirectoryEntries(directory.Value).GetEnumerator();
        while (names.MoveNext())
        {
            if (consumed == limit)
            {
                foreach (var e in Complete(directory.Value, batch, map, xattrBudget))
                {
                    yield return e;
                }

                batch.Clear();
                yield return new ArchiveEntry(prefix, [], EntryTypes.More, true, null, null, 0, 0, 0, null, null) { Next = position };
                yield break;
            }

            var (name, next) = names.Current;
            consumed++;
            position = next;
            if (!seen.Add(name))
            {
                continue;
            }

            var r = LibC.Stat(directory.Value, name, out var st);
            if (r == -LibC.ENOENT)
            {
                continue; // vanished: a read-only mount should not change, but never fail the listing for it
            }

            if (r < 0)
            {
                // Unreadable (a damaged inode, an I/O error on the disk): listed with the reason, so that the host
                // fails just this entry instead of showing a directory without it.
                batch.Add((new ArchiveEntry(Join(prefix, name), name, EntryTypes.Unreadable, true, null, null, 0, 0, 0, null,
                    $"cannot read its inode: {LibC.StrError(-r)}"), false));
                continue;
            }

            var entry = Entry(prefix, name, st, st.Kind == LibC.S_IFLNK ? LibC.ReadLink(directory.Value, name) : null);
            if (xattrs)
            {
                entry = entry with { Xattrs = Pending };
            }

            var inline = st.Kind == LibC.S_IFREG && (long)st.Size <= inlineMax && (long)st.Size <= inlineBudget;
            if (inline)
            {
                inlineBudget -= (long)st.Size;
            }

            batch.Add((entry, inline));
            if (batch.Count == 64)
            {
                foreach (var e in Complete(directory.Value, batch, map, xattrBudget))
                {
                    yield return e;
                }

                batch.Clear();
            }
        }

        foreach (var e in Complete(directory.Value, batch, map, xattrBudget))
        {
            yield return e;
        }
    }

    /// <summary>Marks an entry whose attributes are still to be read in <see cref="Complete"/>.</summary>
    private static readonly Xattr[] Pending = [];

    private static ArchiveEntry[] Complete(int dirfd, List<(ArchiveEntry Entry, bool Inline)> batch, ExtentMapping? map, StrongBox<long> xattrBudget)
    {
        var result = new ArchiveEntry[batch.Count];
        Parallel.For(0, batch.Count, new ParallelOptions { MaxDegreeOfParallelism = 8 }, i =>
        {
            var (entry, inline) = batch[i];
            if (ReferenceEquals(entry.Xattrs, Pending))
            {
                entry = entry with { Xattrs = InlineXattrs(dirfd, entry.Name, xattrBudget) };
            }

            if (map is not null && entry.Type == 'f' && MapFile(dirfd, entry.Name, (long)(entry.Size ?? 0), map) is { } extents)
            {
                result[i] = entry with { Extents = extents };
                return;
            }

            result[i] = inline && ReadSmall(dirfd, entry.Name, (int)(entry.Size ?? 0)) is { } content ? entry with { Content = content } : entry;
        });
        return result;
    }

    /// <summary>The attributes when they are small and the answer's budget allows; otherwise null (the host asks
    /// <c>xattrs</c>, which also reports errors).</summary>
    private static IReadOnlyList<Xattr>? InlineXattrs(int dirfd, byte[] name, StrongBox<long> budget)
    {
        if (Interlocked.Read(ref budget.Value) <= 0)
        {
            return null;
        }

        List<Xattr>? list;
        try
        {
            list = XattrReader.Read(dirfd, name, InlineXattrMax);
        }
        catch (IOException)
        {
            return null;
        }

        if (list is null)
        {
            return null;
        }

        var bytes = list.Sum(x => (long)x.Name.Length + (x.Value?.Length ?? 0));
        return Interlocked.Add(ref budget.Value, -bytes) >= 0 ? list : null;
    }

    private static IReadOnlyList<FileExtent>? MapFile(int dirfd, byte[] name, long size, ExtentMapping map)
    {
        var fd = LibC.OpenAt(dirfd, name, LibC.O_RDONLY | LibC.O_NOFOLLOW | LibC.O_NONBLOCK);
        if (fd < 0)
        {
            return null;
        }

        using var file = new Fd(fd);
        return FileExtents.Map(fd, size, map.Placement, map.VolumeSize);
    }

    private static byte[]? ReadSmall(int dirfd, byte[] name, int size)
    {
        var fd = LibC.OpenAt(dirfd, name, LibC.O_RDONLY | LibC.O_NOFOLLOW | LibC.O_NONBLOCK);
        if (fd < 0)
        {
            return null;
        }

        using var file = new Fd(fd);
        var buffer = new byte[size];
        try
        {
            return LibC.PReadAll(fd, buffer, 0) == size ? buffer : null;
        }
        catch (IOException)
        {
            return null; // the read request will report it
        }
    }

    /// <summary>Opens a regular file for reading.</summary>
    public static Fd OpenFile(string mountPoint, IReadOnlyList<byte[]> rest, out StatInfo st)
    {
        var (parent, name) = Resolve(mountPoint, rest);
        using (parent)
        {
            if (name.Length == 0)
            {
                throw new BadRequestException("the volume root is a directory, not a file");
            }

            var fd = LibC.OpenAt(parent.Value, name, LibC.O_RDONLY | LibC.O_NOFOLLOW | LibC.O_NONBLOCK);
            if (fd < 0)
            {
                throw new BadRequestException($"{Show(rest)}: {Reason(-fd)}");
            }

            var file = new Fd(fd);
            LibC.Stat(fd, [], out st);
            if (st.Kind != LibC.S_IFREG)
            {
                file.Dispose();
                throw new BadRequestException($"{Show(rest)} is not a regular file");
            }

            return file;
        }
    }
}

/// <summary>File names as bytes, compared by content.</summary>
internal sealed class ByteNames : IEqualityComparer<byte[]>
{
    public static readonly ByteNames Comparer = new();

    public bool Equals(byte[]? x, byte[]? y) => x.AsSpan().SequenceEqual(y);

    public int GetHashCode(byte[] obj)
    {
        var h = new HashCode();
        h.AddBytes(obj);
        return h.ToHashCode();
    }
}
