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

/// <summary>Where a listing's time went, per kind of work (summed over the threads that did it), for the daemon's log.</summary>
internal sealed class ListProfile
{
    private long names, stat, open, xattrs, maps, inline, write, entries;

    public void Add(ref long field, long started) => Interlocked.Add(ref field, System.Diagnostics.Stopwatch.GetTimestamp() - started);

    public ref long Stat => ref stat;

    public ref long Names => ref names;

    public ref long Open => ref open;

    public ref long Write => ref write;

    public ref long Xattrs => ref xattrs;

    public ref long Maps => ref maps;

    public ref long Inline => ref inline;

    public void Entry() => Interlocked.Increment(ref entries);

    public long Entries => Interlocked.Read(ref entries);

    private static string Ms(long ticks) => $"{ticks * 1000.0 / System.Diagnostics.Stopwatch.Frequency:0}";

    public override string ToString() =>
        $"{Interlocked.Read(ref entries)} entries; names {Ms(names)} ms, stat {Ms(stat)} ms, open {Ms(open)} ms, xattrs {Ms(xattrs)} ms, maps {Ms(maps)} ms, inline contents {Ms(inline)} ms, answer {Ms(write)} ms";
}

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
                    single = single with { Xattrs = InlineXattrs(parent.Value, name, null, new StrongBox<long>(InlineXattrBudget)) };
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
        bool xattrs = false, long start = 0, int limit = int.MaxValue, ListProfile? profile = null)
    {
        profile ??= new ListProfile();
        if (start != 0 && LibC.LSeek(directory.Value, start, LibC.SEEK_SET) < 0)
        {
            throw new BadRequestException($"start={start} is not a position in this directory: {LibC.StrError(LibC.Errno)}");
        }

        var work = new ListWork(directory.Value, prefix, inlineMax, new StrongBox<long>(inlineBudget), map, xattrs,
            new StrongBox<long>(xattrs ? InlineXattrBudget : 0), profile);
        var batch = new List<byte[]>(64);
        // Names are unique in an answer: a damaged directory may repeat one, which is then left out.
        var seen = new HashSet<byte[]>(ByteNames.Comparer);
        var consumed = 0;
        long position = start;
        using var names = LibC.ReadDirectoryEntries(directory.Value).GetEnumerator();
        while (true)
        {
            var tn = System.Diagnostics.Stopwatch.GetTimestamp();
            if (!names.MoveNext())
            {
                break;
            }

            profile.Add(ref profile.Names, tn);
            if (consumed == limit)
            {
                foreach (var e in Complete(work, batch))
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

            batch.Add(name);
            if (batch.Count == 64)
            {
                foreach (var e in Complete(work, batch))
                {
                    yield return e;
                }

                batch.Clear();
            }
        }

        foreach (var e in Complete(work, batch))
        {
            yield return e;
        }
    }

    /// <summary>What every entry of one listing is asked for, and the answer's budgets.</summary>
    private sealed record ListWork(int Dirfd, byte[] Prefix, int InlineMax, StrongBox<long> InlineBudget, ExtentMapping? Map, bool Xattrs,
        StrongBox<long> XattrBudget, ListProfile Profile);

    /// <summary>
    /// The entries of a batch of names, several at a time: in a VM each inode, directory block or file map the guest
    /// kernel reads waits for the host, and the waits overlap. Vanished names are left out; an unreadable inode is
    /// listed with the reason, so that the host fails just this entry instead of showing a directory without it.
    /// </summary>
    private static IEnumerable<ArchiveEntry> Complete(ListWork work, List<byte[]> batch)
    {
        var result = new ArchiveEntry?[batch.Count];
        var profile = work.Profile;
        Parallel.For(0, batch.Count, new ParallelOptions { MaxDegreeOfParallelism = 2 * Environment.ProcessorCount }, i =>
        {
            var name = batch[i];
            var t0 = System.Diagnostics.Stopwatch.GetTimestamp();
            var r = LibC.Stat(work.Dirfd, name, out var st);
            profile.Add(ref profile.Stat, t0);
            profile.Entry();
            if (r == -LibC.ENOENT)
            {
                return; // vanished: a read-only mount should not change, but never fail the listing for it
            }

            if (r < 0)
            {
                result[i] = new ArchiveEntry(Join(work.Prefix, name), name, EntryTypes.Unreadable, true, null, null, 0, 0, 0, null,
                    $"cannot read its inode: {LibC.StrError(-r)}");
                return;
            }

            var entry = Entry(work.Prefix, name, st, st.Kind == LibC.S_IFLNK ? LibC.ReadLink(work.Dirfd, name) : null);
            var regular = st.Kind == LibC.S_IFREG;
            var inline = regular && (long)st.Size <= work.InlineMax && Interlocked.Add(ref work.InlineBudget.Value, -(long)st.Size) >= 0;
            var wantMap = work.Map is not null && regular;
            // A regular file is opened once for all of it: attributes, map, small content (a path walk is much of the
            // cost in an emulated guest; the /proc/self/fd path of the attribute calls would be another one).
            t0 = System.Diagnostics.Stopwatch.GetTimestamp();
            using var file = regular && (work.Xattrs || wantMap || inline) ? OpenFile(work.Dirfd, name) : null;
            profile.Add(ref profile.Open, t0);
            if (work.Xattrs)
            {
                t0 = System.Diagnostics.Stopwatch.GetTimestamp();
                entry = entry with { Xattrs = InlineXattrs(work.Dirfd, name, file, work.XattrBudget) };
                profile.Add(ref profile.Xattrs, t0);
            }

            if (wantMap && file is not null)
            {
                t0 = System.Diagnostics.Stopwatch.GetTimestamp();
                var extents = FileExtents.Map(file.Value, (long)(entry.Size ?? 0), work.Map!.Placement, work.Map.VolumeSize);
                profile.Add(ref profile.Maps, t0);
                if (extents is not null)
                {
                    result[i] = entry with { Extents = extents };
                    return;
                }
            }

            t0 = System.Diagnostics.Stopwatch.GetTimestamp();
            result[i] = inline && file is not null && ReadSmall(file.Value, (int)(entry.Size ?? 0)) is { } content ? entry with { Content = content } : entry;
            profile.Add(ref profile.Inline, t0);
        });
        foreach (var e in result)
        {
            if (e is not null)
            {
                yield return e;
            }
        }
    }

    /// <summary>The attributes when they are small and the answer's budget allows; otherwise null (the host asks
    /// <c>xattrs</c>, which also reports errors).</summary>
    private static IReadOnlyList<Xattr>? InlineXattrs(int dirfd, byte[] name, Fd? file, StrongBox<long> budget)
    {
        if (Interlocked.Read(ref budget.Value) <= 0)
        {
            return null;
        }

        List<Xattr>? list;
        try
        {
            list = file is null ? XattrReader.Read(dirfd, name, InlineXattrMax) : XattrReader.ReadOpen(file.Value, InlineXattrMax);
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

/// <summary>The regular file <paramref name="name"/> of the directory, open for reading (never following a symlink,
    /// never blocking on a special file); null when it cannot be opened.</summary>
    private static Fd? OpenFile(int dirfd, byte[] name)
    {
        var fd = LibC.OpenAt(dirfd, name, LibC.O_RDONLY | LibC.O_NOFOLLOW | LibC.O_NONBLOCK);
        return fd < 0 ? null : new Fd(fd);
    }

    private static byte[]? ReadSmall(int fd, int size)
    {
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
