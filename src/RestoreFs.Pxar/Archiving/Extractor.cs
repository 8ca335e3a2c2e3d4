using System.Text;
using Microsoft.Win32.SafeHandles;

namespace RestoreFs.Pxar;

/// <summary>Options of <see cref="Extractor"/>: owners (and device nodes) need root; without it they are skipped.</summary>
public sealed record ExtractorOptions(bool RestoreOwners = true, bool RestoreDevices = true, bool RestoreXattrs = true);

/// <summary>An entry <see cref="Extractor"/> could not restore: its path below the target, as bytes, and why.</summary>
public sealed record ExtractFailure(byte[] Path, string Reason)
{
    public override string ToString() => $"{Encoding.UTF8.GetString(Path)}: {Reason}";
}

/// <summary>
/// Extracts an archive (or a subtree) into an existing empty directory with all metadata: names as bytes, modes,
/// owners, ns mtimes, symlinks, devices, fifos, sockets, hard links, xattrs, ACLs, file capabilities, chattr flags and
/// quota project ids (best effort: where the file system or the caller's rights allow); all-zero blocks of files are
/// left as holes. Works through directory fds
/// (no path length limit except for hard-link targets and immutable or append-only entries, which are reached by path).
/// <para>Damage in the archive fails only what it touches: a file whose contents cannot be read (a damaged chunk) is
/// removed again rather than left short, a directory that cannot be listed stays empty, and the extraction goes on
/// with the rest; every such entry is returned with its reason.</para>
/// </summary>
public static class Extractor
{
    public static IReadOnlyList<ExtractFailure> Extract(PxarArchive archive, PxarEntry directory, string target, ExtractorOptions? options = null)
    {
        if (!directory.IsDirectory)
        {
            throw new ArgumentException("extract a directory", nameof(directory));
        }

        return Extraction(target, options, (fd, rootPath, run) =>
        {
            ExtractChildren(archive, directory, fd, rootPath, [], run);
            Finish(directory, fd, [], Encoding.ASCII.GetBytes($"/proc/self/fd/{fd}/."), run.Options, fd);
            if ((directory.Stat.Flags & InodeFlags.Freezing) != 0)
            {
                run.Frozen.Add((rootPath, directory.Stat.Flags, true));
            }
        });
    }

    /// <summary>Extracts one entry of the archive (a file, a symlink, a device, or a directory with its contents) as
    /// <c>targetDirectory/NAME</c>, with all its metadata; <paramref name="targetDirectory"/> must exist.</summary>
    public static IReadOnlyList<ExtractFailure> ExtractEntry(PxarArchive archive, PxarEntry entry, string targetDirectory, ExtractorOptions? options = null) =>
        Extraction(targetDirectory, options, (fd, rootPath, run) => ExtractEntries(archive, [entry], fd, rootPath, [], run));

    /// <summary>What one extraction carries along: its options, the first name of each hard-linked file, what failed,
    /// and the entries to make immutable or append-only at the very end.</summary>
    private sealed class Run(ExtractorOptions options)
    {
        public ExtractorOptions Options { get; } = options;

        public Dictionary<ulong, byte[]> Links { get; } = [];

        public List<ExtractFailure> Failures { get; } = [];

        public List<(byte[] Path, ulong Flags, bool Directory)> Frozen { get; } = [];
    }

    private static IReadOnlyList<ExtractFailure> Extraction(string target, ExtractorOptions? options, Action<int, byte[], Run> body)
    {
        var run = new Run(options ?? new ExtractorOptions());
        var rootPath = Encoding.UTF8.GetBytes(Path.GetFullPath(target));
        var fd = Native.OpenAt(NativeWrite.AtFdCwd, rootPath, Native.ORdOnly | Native.ODirectory);
        try
        {
            body(fd, rootPath, run);

            // Immutable and append-only last of all: nothing could be linked to, created in or changed in them after.
            foreach (var (path, flags, isDirectory) in run.Frozen)
            {
                try
                {
                    var entryFd = Native.OpenAt(NativeWrite.AtFdCwd, path, Native.ORdOnly | Native.ONoFollow | Native.ONonBlock
                        | (isDirectory ? Native.ODirectory : 0));
                    InodeFlags.Apply(entryFd, flags, InodeFlags.Freezing);
                    Native.close(entryFd);
                }
                catch (IOException)
                {
                    // best effort, as the other flags (a path over PATH_MAX, a file the caller cannot open)
                }
            }

            return run.Failures;
        }
        finally
        {
            Native.close(fd);
        }
    }

    private static void ExtractChildren(PxarArchive archive, PxarEntry dir, int dirfd, byte[] path, byte[] relative, Run run)
    {
        IReadOnlyList<PxarEntry> children;
        try
        {
            children = archive.List(dir);
        }
        catch (Exception e) when (IsArchiveDamage(e))
        {
            run.Failures.Add(new ExtractFailure(relative.Length == 0 ? "."u8.ToArray() : relative, $"directory not listed: {e.Message}"));
            return;
        }

        ExtractEntries(archive, children, dirfd, path, relative, run);
    }

    private static void ExtractEntries(PxarArchive archive, IReadOnlyList<PxarEntry> children, int dirfd, byte[] path, byte[] relative, Run run)
    {
        var (options, links, failures, frozen) = (run.Options, run.Links, run.Failures, run.Frozen);
        foreach (var e in children)
        {
            byte[] childPath = [.. path, (byte)'/', .. e.Name];
            byte[] childRelative = relative.Length == 0 ? e.Name : [.. relative, (byte)'/', .. e.Name];
            byte[] procPath = [.. Encoding.ASCII.GetBytes($"/proc/self/fd/{dirfd}/"), .. e.Name];
            if (e.Kind == PxarEntryKind.File && links.TryGetValue(e.Inode, out var first))
            {
                NativeWrite.LinkAt(first, dirfd, e.Name);
                continue;
            }

            switch (e.Kind)
            {
                case PxarEntryKind.Directory:
                {
                    NativeWrite.MkdirAt(dirfd, e.Name, 0x1c0); // 0700 while filling it
                    var fd = Native.OpenAt(dirfd, e.Name, Native.ORdOnly | Native.ODirectory | Native.ONoFollow);
                    try
                    {
                        ExtractChildren(archive, e, fd, childPath, childRelative, run);
                        Finish(e, fd, [], Encoding.ASCII.GetBytes($"/proc/self/fd/{fd}/."), options, fd);
                        if ((e.Stat.Flags & InodeFlags.Freezing) != 0)
                        {
                            frozen.Add((childPath, e.Stat.Flags, true));
                        }
                    }
                    finally
                    {
                        Native.close(fd);
                    }

                    continue;
                }

                case PxarEntryKind.File:
                {
                    var fd = Native.OpenAt(dirfd, e.Name, NativeWrite.OWrOnly | NativeWrite.OCreat | NativeWrite.OExcl | Native.ONoFollow);
                    try
                    {
                        string? unreadable;
                        using (var output = new FileStream(new SafeFileHandle(fd, ownsHandle: false), FileAccess.Write, 1))
                        {
                            unreadable = CopyContents(archive, e, output);
                        }

                        if (unreadable is not null)
                        {
                            // No short file that looks restored: the name is given back with the reason.
                            NativeWrite.UnlinkAt(dirfd, e.Name);
                            failures.Add(new ExtractFailure(childRelative, unreadable));
                            continue;
                        }

                        links[e.Inode] = childPath;
                        Finish(e, dirfd, e.Name, procPath, options, fd);
                        if ((e.Stat.Flags & InodeFlags.Freezing) != 0)
                        {
                            frozen.Add((childPath, e.Stat.Flags, false));
                        }
                    }
                    finally
                    {
                        Native.close(fd);
                    }

                    continue;
                }

                case PxarEntryKind.Symlink:
                    NativeWrite.SymlinkAt(e.SymlinkTarget, dirfd, e.Name);
                    break;
                case PxarEntryKind.CharDevice or PxarEntryKind.BlockDevice:
                    if (!options.RestoreDevices)
                    {
                        continue;
                    }

                    NativeWrite.MknodAt(dirfd, e.Name, e.Mode & 0xF000 | 0x180, e.RDev);
                    break;
                default:
                    NativeWrite.MknodAt(dirfd, e.Name, e.Mode & 0xF000 | 0x180, 0);
                    break;
            }

            Finish(e, dirfd, e.Name, procPath, options);
        }
    }

    /// <summary>An error reading the archive (a damaged or missing chunk, a malformed item); errors writing the target
    /// are not caught where this is used: they end the extraction.</summary>
    private static bool IsArchiveDamage(Exception e) => e is not OperationCanceledException;

    /// <summary>Copies a file's contents; null when done, else why the archive could not be read (a write error throws).</summary>
    private static string? CopyContents(PxarArchive archive, PxarEntry file, FileStream output)
    {
        Stream input;
        try
        {
            input = archive.OpenRead(file);
        }
        catch (Exception e) when (IsArchiveDamage(e))
        {
            return e.Message;
        }

        // Rented, as Stream.CopyTo did: a fresh 1 MiB array per file would be a large-object allocation per file.
        using var owned = input;
        var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(1024 * 1024);
        long position = 0;
        try
        {
            while (true)
            {
                int n;
                try
                {
                    n = input.Read(buffer);
                }
                catch (Exception e) when (IsArchiveDamage(e))
                {
                    return e.Message;
                }

                if (n == 0)
                {
                    if (output.Length != position)
                    {
                        output.SetLength(position); // the file ends in a hole
                    }

                    return null;
                }

                WriteSparse(output, buffer.AsSpan(0, n), position);
                position += n;
            }
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private const int HoleBlock = 4096;

    /// <summary>
    /// Writes <paramref name="data"/> at <paramref name="position"/> of a new file, leaving out its all-zero 4 KiB blocks
    /// (as PBS's extractor does): they stay holes, so a sparse file (a VM image, a database file, lastlog) takes back no
    /// more room than it had. The file is new, so what is not written reads as zeros.
    /// </summary>
    private static void WriteSparse(FileStream output, ReadOnlySpan<byte> data, long position)
    {
        var runStart = -1;
        for (var at = 0; at < data.Length;)
        {
            var end = (int)Math.Min(data.Length, at + (HoleBlock - (position + at) % HoleBlock));
            var zero = !data[at..end].ContainsAnyExcept((byte)0);
            if (!zero && runStart < 0)
            {
                runStart = at;
            }
            else if (zero && runStart >= 0)
            {
                output.Position = position + runStart;
                output.Write(data[runStart..at]);
                runStart = -1;
            }

            at = end;
        }

        if (runStart >= 0)
        {
            output.Position = position + runStart;
            output.Write(data[runStart..]);
        }
    }

    /// <summary>Chattr flags (but immutable and append-only, set at the very end) and quota project id where an fd of
    /// the entry is given (directories and regular files), owner, xattrs/ACLs/fcaps (after chown, which clears
    /// capabilities), mode, then mtime.</summary>
    private static void Finish(PxarEntry e, int dirfd, byte[] name, byte[] procPath, ExtractorOptions options, int inodeFd = -1)
    {
        if (inodeFd >= 0)
        {
            if (e.QuotaProjectId is { } projectId)
            {
                InodeFlags.ApplyProjectId(inodeFd, projectId);
            }

            InodeFlags.Apply(inodeFd, e.Stat.Flags & ~InodeFlags.Freezing, ~InodeFlags.Freezing);
        }

        if (options.RestoreOwners)
        {
            NativeWrite.ChownAt(dirfd, name, e.Stat.Uid, e.Stat.Gid);
        }

        if (options.RestoreXattrs && e.Kind != PxarEntryKind.Symlink)
        {
            foreach (var x in e.AllXattrs())
            {
                NativeWrite.SetXattr(procPath, x.Name, x.Value);
            }
        }

        if (e.Kind != PxarEntryKind.Symlink)
        {
            // Through the fd path for the directory itself (an empty name).
            if (name.Length == 0)
            {
                NativeWrite.ChmodAt(NativeWrite.AtFdCwd, procPath, e.Mode & 0xFFF);
            }
            else
            {
                NativeWrite.ChmodAt(dirfd, name, e.Mode & 0xFFF);
            }
        }

        if (name.Length == 0)
        {
            NativeWrite.SetMtimeAt(NativeWrite.AtFdCwd, procPath, e.Stat.MtimeSeconds, e.Stat.MtimeNanos);
        }
        else
        {
            NativeWrite.SetMtimeAt(dirfd, name, e.Stat.MtimeSeconds, e.Stat.MtimeNanos);
        }
    }
}
