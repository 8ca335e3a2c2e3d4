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
        return new ArchiveEntry(path, name, type, type != 'd', st.Kind is LibC.S_IFREG or LibC.S_IFLNK or LibC.S_IFDIR ? st.Size : 0UL, st.MTime,
            st.Mode, st.Uid, st.Gid, target, null);
    }

    /// <summary>Opens the directory the path names (the caller disposes it), or returns the single entry of a non-directory.</summary>
    public static (Fd? Directory, ArchiveEntry? Single) OpenForList(string mountPoint, IReadOnlyList<byte[]> rest, byte[] prefix)
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
                return (null, Entry(parentPrefix, name, st, st.Kind == LibC.S_IFLNK ? LibC.ReadLink(parent.Value, name) : null));
            }

            var fd = LibC.OpenAt(parent.Value, name, LibC.O_RDONLY | LibC.O_DIRECTORY | LibC.O_NOFOLLOW);
            if (fd < 0)
            {
                throw new BadRequestException($"{Show(rest)}: {Reason(-fd)}");
            }

            return (new Fd(fd), null);
        }
    }

    /// <param name="inlineMax">Regular files up to this size come with their content…</param>
    /// <param name="inlineBudget">…until this many bytes were inlined in the listing. Contents are read several at a
    /// time: on a virtual disk each small read waits for the host, and waits overlap.</param>
    /// <param name="map">When set, regular files come with their extents on the disk where the file system gives an
    /// exact map (and then without inline content).</param>
    public static IEnumerable<ArchiveEntry> ListDirectory(Fd directory, byte[] prefix, int inlineMax = 0, long inlineBudget = 0, ExtentMapping? map = null)
    {
        var batch = new List<(ArchiveEntry Entry, bool Inline)>(64);
        foreach (var name in LibC.ReadDirectory(directory.Value))
        {
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
            var inline = st.Kind == LibC.S_IFREG && (long)st.Size <= inlineMax && (long)st.Size <= inlineBudget;
            if (inline)
            {
                inlineBudget -= (long)st.Size;
            }

            batch.Add((entry, inline));
            if (batch.Count == 64)
            {
                foreach (var e in Complete(directory.Value, batch, map))
                {
                    yield return e;
                }

                batch.Clear();
            }
        }

        foreach (var e in Complete(directory.Value, batch, map))
        {
            yield return e;
        }
    }

    private static ArchiveEntry[] Complete(int dirfd, List<(ArchiveEntry Entry, bool Inline)> batch, ExtentMapping? map)
    {
        var result = new ArchiveEntry[batch.Count];
        Parallel.For(0, batch.Count, new ParallelOptions { MaxDegreeOfParallelism = 8 }, i =>
        {
            var (entry, inline) = batch[i];
            if (map is not null && entry.Type == 'f' && MapFile(dirfd, entry.Name, (long)(entry.Size ?? 0), map) is { } extents)
            {
                result[i] = entry with { Extents = extents };
                return;
            }

            result[i] = inline && ReadSmall(dirfd, entry.Name, (int)(entry.Size ?? 0)) is { } content ? entry with { Content = content } : entry;
        });
        return result;
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
