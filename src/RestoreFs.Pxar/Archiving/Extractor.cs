using System.Text;
using Microsoft.Win32.SafeHandles;

namespace RestoreFs.Pxar;

/// <summary>Options of <see cref="Extractor"/>: owners (and device nodes) need root; without it they are skipped.</summary>
public sealed record ExtractorOptions(bool RestoreOwners = true, bool RestoreDevices = true, bool RestoreXattrs = true);

/// <summary>
/// Extracts an archive (or a subtree) into an existing empty directory with all metadata: names as bytes, modes,
/// owners, ns mtimes, symlinks, devices, fifos, sockets, hard links, xattrs, ACLs, file capabilities. Works through
/// directory fds (no path length limit except for hard-link targets, which are linked by path).
/// </summary>
public static class Extractor
{
    public static void Extract(PxarArchive archive, PxarEntry directory, string target, ExtractorOptions? options = null)
    {
        options ??= new ExtractorOptions();
        if (!directory.IsDirectory)
        {
            throw new ArgumentException("extract a directory", nameof(directory));
        }

        var rootPath = Encoding.UTF8.GetBytes(Path.GetFullPath(target));
        var fd = Native.OpenAt(NativeWrite.AtFdCwd, rootPath, Native.ORdOnly | Native.ODirectory);
        try
        {
            var links = new Dictionary<ulong, byte[]>();
            ExtractChildren(archive, directory, fd, rootPath, options, links);
            Finish(directory, fd, [], Encoding.ASCII.GetBytes($"/proc/self/fd/{fd}/."), options);
        }
        finally
        {
            Native.close(fd);
        }
    }

    private static void ExtractChildren(PxarArchive archive, PxarEntry dir, int dirfd, byte[] path, ExtractorOptions options, Dictionary<ulong, byte[]> links)
    {
        foreach (var e in archive.List(dir))
        {
            byte[] childPath = [.. path, (byte)'/', .. e.Name];
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
                        ExtractChildren(archive, e, fd, childPath, options, links);
                        Finish(e, fd, [], Encoding.ASCII.GetBytes($"/proc/self/fd/{fd}/."), options);
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
                    using (var output = new FileStream(new SafeFileHandle(fd, ownsHandle: true), FileAccess.Write, 1))
                    using (var input = archive.OpenRead(e))
                    {
                        input.CopyTo(output, 1024 * 1024);
                    }

                    links[e.Inode] = childPath;
                    break;
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

    /// <summary>Owner, xattrs/ACLs/fcaps (after chown, which clears capabilities), mode, then mtime.</summary>
    private static void Finish(PxarEntry e, int dirfd, byte[] name, byte[] procPath, ExtractorOptions options)
    {
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
