using System.Buffers.Binary;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace RestoreFs.Pxar;

/// <summary>Options of <see cref="DirectoryArchiver"/>.</summary>
public sealed record DirectoryArchiverOptions(bool CrossMountPoints = false, byte[]? Prelude = null);

/// <summary>Counters of one archiving run.</summary>
public sealed record DirectoryArchiverStats(long Entries, long Files, long Bytes, long Hardlinks);

/// <summary>
/// Archives a directory tree as pxar, seeing it exactly: names as bytes (openat per component, no path length limit),
/// full modes, owners, ns mtimes, symlinks, devices, fifos, sockets, hard links (by device and inode), xattrs, POSIX
/// ACLs (as ACL items) and file capabilities (FCAPS). Does not descend into other file systems unless asked (the
/// mount point itself is kept, empty), as PBS does. Optionally writes the catalog alongside.
/// </summary>
public static class DirectoryArchiver
{
    /// <summary>Writes <paramref name="directory"/> to <paramref name="output"/> (v1) or, with <paramref name="payload"/>, split (v2).</summary>
    public static DirectoryArchiverStats Write(string directory, Stream output, Stream? payload = null, PxarCatalogWriter? catalog = null,
        DirectoryArchiverOptions? options = null)
    {
        options ??= new DirectoryArchiverOptions();
        var rootPath = Encoding.UTF8.GetBytes(Path.GetFullPath(directory));
        var rootNoAtime = true;
        var rootFd = Native.OpenAtNoAtime(-100, rootPath, Native.ORdOnly | Native.ODirectory, ref rootNoAtime);
        try
        {
            var st = Native.StatAt(rootFd, []);
            var encoder = new PxarEncoder(output, Metadata(st, Native.Xattrs(ProcPath(rootFd, [])), rootFd), payload,
                payload is null ? null : options.Prelude);
            var run = new Run(encoder, catalog, options, st.DevMajor, st.DevMinor);
            run.Directory(rootFd, [], rootPath);
            encoder.Finish();
            return new DirectoryArchiverStats(run.Entries, run.Files, run.Bytes, run.Hardlinks);
        }
        finally
        {
            Native.close(rootFd);
        }
    }

    private static byte[] ProcPath(int dirfd, ReadOnlySpan<byte> name) =>
        name.Length == 0 ? Encoding.ASCII.GetBytes($"/proc/self/fd/{dirfd}/.") : [.. Encoding.ASCII.GetBytes($"/proc/self/fd/{dirfd}/"), .. name];

    private sealed class Run(PxarEncoder encoder, PxarCatalogWriter? catalog, DirectoryArchiverOptions options, uint devMajor, uint devMinor)
    {
        private readonly Dictionary<(uint, uint, ulong), PxarLinkTarget> links = new();
        private bool noAtime = true;

        public long Entries { get; private set; }

        public long Files { get; private set; }

        public long Bytes { get; private set; }

        public long Hardlinks { get; private set; }

        public void Directory(int dirfd, byte[] relative, byte[] pathForErrors)
        {
            foreach (var name in Native.ListDirectory(dirfd, pathForErrors))
            {
                Entries++;
                byte[] childRelative = relative.Length == 0 ? name : [.. relative, (byte)'/', .. name];
                byte[] childPath = [.. pathForErrors, (byte)'/', .. name];
                var st = Native.StatAt(dirfd, name);
                var xattrs = Native.Xattrs(ProcPath(dirfd, name));
                switch (st.Mode & 0xF000)
                {
                    case 0x4000:
                    {
                        var fd = Native.OpenAtNoAtime(dirfd, name, Native.ORdOnly | Native.ODirectory | Native.ONoFollow, ref noAtime);
                        try
                        {
                            encoder.BeginDirectory(name, Metadata(st, xattrs, fd));
                            catalog?.BeginDirectory(name);
                            if (options.CrossMountPoints || (st.DevMajor == devMajor && st.DevMinor == devMinor))
                            {
                                Directory(fd, childRelative, childPath);
                            }

                            catalog?.EndDirectory();
                            encoder.EndDirectory();
                        }
                        finally
                        {
                            Native.close(fd);
                        }

                        break;
                    }

                    case 0x8000:
                    {
                        var key = (st.DevMajor, st.DevMinor, st.Ino);
                        if (st.NLink > 1 && links.TryGetValue(key, out var target))
                        {
                            encoder.AddHardlink(name, target);
                            catalog?.AddEntry(PxarCatalogEntryType.Hardlink, name);
                            Hardlinks++;
                            break;
                        }

                        var fd = Native.OpenAtNoAtime(dirfd, name, Native.ORdOnly | Native.ONoFollow | Native.ONonBlock, ref noAtime);
                        using (var stream = new FileStream(new SafeFileHandle(fd, ownsHandle: true), FileAccess.Read, 1))
                        {
                            var first = encoder.AddFile(name, Metadata(st, xattrs, fd), (long)st.Size, stream, childRelative);
                            if (st.NLink > 1)
                            {
                                links[key] = first;
                            }
                        }

                        catalog?.AddFile(name, (long)st.Size, st.MtimeSeconds);
                        Files++;
                        Bytes += (long)st.Size;
                        break;
                    }

                    case 0xA000:
                        encoder.AddSymlink(name, Metadata(st, xattrs), Native.ReadLinkAt(dirfd, name));
                        catalog?.AddEntry(PxarCatalogEntryType.Symlink, name);
                        break;
                    case 0x2000:
                    case 0x6000:
                        encoder.AddDevice(name, Metadata(st, xattrs), st.RDevMajor, st.RDevMinor);
                        catalog?.AddEntry((st.Mode & 0xF000) == 0x2000 ? PxarCatalogEntryType.CharDevice : PxarCatalogEntryType.BlockDevice, name);
                        break;
                    case 0x1000:
                    case 0xC000:
                        encoder.AddSpecial(name, Metadata(st, xattrs));
                        catalog?.AddEntry((st.Mode & 0xF000) == 0x1000 ? PxarCatalogEntryType.Fifo : PxarCatalogEntryType.Socket, name);
                        break;
                    default:
                        throw new IOException($"{Encoding.UTF8.GetString(childPath)} has an unknown file type (mode {Convert.ToString(st.Mode, 8)})");
                }
            }
        }
    }

    /// <param name="fd">An open directory or regular file: its chattr flags and quota project id are kept too (what only
    /// an open file tells; PBS reads them through no other kind of file); -1 for anything else.</param>
    private static PxarMetadata Metadata(Native.Stat st, List<(byte[] Name, byte[] Value)> xattrs, int fd = -1)
    {
        var plain = new List<PxarXattr>();
        PxarAcl? acl = null;
        byte[]? fcaps = null;
        foreach (var (name, value) in xattrs)
        {
            if (name.AsSpan().SequenceEqual("system.posix_acl_access"u8))
            {
                ParseAcl(value, acl ??= new PxarAcl(), isDefault: false);
            }
            else if (name.AsSpan().SequenceEqual("system.posix_acl_default"u8))
            {
                ParseAcl(value, acl ??= new PxarAcl(), isDefault: true);
            }
            else if (name.AsSpan().SequenceEqual("security.capability"u8))
            {
                fcaps = value;
            }
            else
            {
                plain.Add(new PxarXattr(name, value));
            }
        }

        return new PxarMetadata
        {
            Mode = st.Mode,
            Uid = st.Uid,
            Gid = st.Gid,
            MtimeSeconds = st.MtimeSeconds,
            MtimeNanos = st.MtimeNanos,
            Xattrs = plain,
            Acl = acl is { IsEmpty: false } ? acl : null,
            Fcaps = fcaps,
            Flags = fd < 0 ? 0 : InodeFlags.Read(fd),
            QuotaProjectId = fd < 0 ? null : InodeFlags.ReadProjectId(fd),
        };
    }

    /// <summary>Reads the kernel's ACL xattr form (version 2, 8-byte entries) into pxar's ACL items, as PBS stores them.</summary>
    internal static void ParseAcl(ReadOnlySpan<byte> value, PxarAcl acl, bool isDefault)
    {
        if (value.Length < 4 || (value.Length - 4) % 8 != 0 || BinaryPrimitives.ReadUInt32LittleEndian(value) != 2)
        {
            throw new IOException("malformed POSIX ACL xattr");
        }

        ulong userObj = PxarDefaultAcl.NotSet, groupObj = PxarDefaultAcl.NotSet, other = PxarDefaultAcl.NotSet, mask = PxarDefaultAcl.NotSet;
        for (var at = 4; at < value.Length; at += 8)
        {
            var tag = BinaryPrimitives.ReadUInt16LittleEndian(value[at..]);
            ulong perm = BinaryPrimitives.ReadUInt16LittleEndian(value[(at + 2)..]);
            var id = BinaryPrimitives.ReadUInt32LittleEndian(value[(at + 4)..]);
            switch (tag)
            {
                case PxarAcl.TagUserObj: userObj = perm; break;
                case PxarAcl.TagGroupObj: groupObj = perm; break;
                case PxarAcl.TagOther: other = perm; break;
                case PxarAcl.TagMask: mask = perm; break;
                case PxarAcl.TagUser: (isDefault ? acl.DefaultUsers : acl.Users).Add(new PxarAclEntry(id, perm)); break;
                case PxarAcl.TagGroup: (isDefault ? acl.DefaultGroups : acl.Groups).Add(new PxarAclEntry(id, perm)); break;
            }
        }

        if (isDefault)
        {
            acl.Default = new PxarDefaultAcl(userObj, groupObj, other, mask);
        }
        else if (mask != PxarDefaultAcl.NotSet)
        {
            // With a mask, the mode's group bits are the mask; the owning group's own permissions go to ACL_GROUP_OBJ.
            acl.GroupObj = groupObj;
        }
    }
}
