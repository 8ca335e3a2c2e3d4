using System.Buffers.Binary;

namespace RestoreFs.Pxar;

public enum PxarEntryKind
{
    Directory,
    File,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

/// <summary>The stat of an entry as stored: full st_mode, PBS attribute flags, owner, modification time (seconds may be negative).</summary>
public readonly record struct PxarStat(ulong Mode, ulong Flags, uint Uid, uint Gid, long MtimeSeconds, uint MtimeNanos)
{
    public const ulong TypeMask = 0xF000; // 0o170000

    public uint FileType => (uint)(Mode & TypeMask);

    public uint Permissions => (uint)(Mode & 0xFFF); // 0o7777

    /// <summary>The mtime to 100 ns, clamped to what <see cref="DateTimeOffset"/> can hold.</summary>
    public DateTimeOffset MTime => MtimeSeconds < -62135596800L ? DateTimeOffset.MinValue
        : MtimeSeconds > 253402300798L ? DateTimeOffset.MaxValue
        : DateTimeOffset.UnixEpoch.AddSeconds(MtimeSeconds).AddTicks(MtimeNanos / 100);

    /// <summary>Nanoseconds since the epoch (may be negative).</summary>
    public Int128 MtimeTotalNanos => (Int128)MtimeSeconds * 1_000_000_000 + MtimeNanos;
}

/// <summary>One extended attribute (name and value as bytes).</summary>
public sealed record PxarXattr(byte[] Name, byte[] Value)
{
    public static PxarXattr Of(string name, byte[] value) => new(System.Text.Encoding.UTF8.GetBytes(name), value);
}

/// <summary>One named ACL entry: a uid or gid and its r=4 w=2 x=1 permissions.</summary>
public readonly record struct PxarAclEntry(uint Id, ulong Permissions);

/// <summary>The ACL_DEFAULT item: the default ACL's base entries; <see cref="NotSet"/> marks an absent one.</summary>
public readonly record struct PxarDefaultAcl(ulong UserObj, ulong GroupObj, ulong Other, ulong Mask)
{
    public const ulong NotSet = ulong.MaxValue;
}

/// <summary>POSIX ACLs as pxar stores them, and their Linux xattr form.</summary>
public sealed class PxarAcl
{
    /// <summary>No ACLs: shared by every entry without any, never changed.</summary>
    internal static readonly PxarAcl None = new();

    public List<PxarAclEntry> Users { get; } = [];

    public List<PxarAclEntry> Groups { get; } = [];

    /// <summary>The owning group's permissions when the access ACL has a mask (the mode's group bits then hold the mask).</summary>
    public ulong? GroupObj { get; set; }

    public PxarDefaultAcl? Default { get; set; }

    public List<PxarAclEntry> DefaultUsers { get; } = [];

    public List<PxarAclEntry> DefaultGroups { get; } = [];

    public bool HasAccessAcl => Users.Count > 0 || Groups.Count > 0 || GroupObj is not null;

    public bool HasDefaultAcl => Default is not null;

    public bool IsEmpty => !HasAccessAcl && !HasDefaultAcl && DefaultUsers.Count == 0 && DefaultGroups.Count == 0;

    public const string AccessXattrName = "system.posix_acl_access";
    public const string DefaultXattrName = "system.posix_acl_default";

    // Linux posix_acl_xattr tags.
    public const ushort TagUserObj = 0x01;
    public const ushort TagUser = 0x02;
    public const ushort TagGroupObj = 0x04;
    public const ushort TagGroup = 0x08;
    public const ushort TagMask = 0x10;
    public const ushort TagOther = 0x20;
    private const uint UndefinedId = uint.MaxValue;

    /// <summary>The <c>system.posix_acl_access</c> value the kernel uses (version 2, 8-byte entries), built with the entry's mode; null without an access ACL.</summary>
    public byte[]? AccessXattr(ulong mode)
    {
        if (!HasAccessAcl)
        {
            return null;
        }

        var entries = new List<(ushort Tag, ushort Perm, uint Id)> { (TagUserObj, (ushort)((mode >> 6) & 7), UndefinedId) };
        entries.AddRange(Users.OrderBy(u => u.Id).Select(u => (TagUser, (ushort)(u.Permissions & 7), u.Id)));
        var groupBits = (ushort)((mode >> 3) & 7);
        entries.Add((TagGroupObj, GroupObj is { } g ? (ushort)(g & 7) : groupBits, UndefinedId));
        entries.AddRange(Groups.OrderBy(u => u.Id).Select(u => (TagGroup, (ushort)(u.Permissions & 7), u.Id)));
        if (GroupObj is not null || Users.Count > 0 || Groups.Count > 0)
        {
            entries.Add((TagMask, groupBits, UndefinedId));
        }

        entries.Add((TagOther, (ushort)(mode & 7), UndefinedId));
        return Encode(entries);
    }

    /// <summary>The <c>system.posix_acl_default</c> value; null without a default ACL.</summary>
    public byte[]? DefaultXattr()
    {
        if (Default is not { } d)
        {
            return null;
        }

        var entries = new List<(ushort Tag, ushort Perm, uint Id)>();
        if (d.UserObj != PxarDefaultAcl.NotSet)
        {
            entries.Add((TagUserObj, (ushort)(d.UserObj & 7), UndefinedId));
        }

        entries.AddRange(DefaultUsers.OrderBy(u => u.Id).Select(u => (TagUser, (ushort)(u.Permissions & 7), u.Id)));
        if (d.GroupObj != PxarDefaultAcl.NotSet)
        {
            entries.Add((TagGroupObj, (ushort)(d.GroupObj & 7), UndefinedId));
        }

        entries.AddRange(DefaultGroups.OrderBy(u => u.Id).Select(u => (TagGroup, (ushort)(u.Permissions & 7), u.Id)));
        if (d.Mask != PxarDefaultAcl.NotSet)
        {
            entries.Add((TagMask, (ushort)(d.Mask & 7), UndefinedId));
        }

        if (d.Other != PxarDefaultAcl.NotSet)
        {
            entries.Add((TagOther, (ushort)(d.Other & 7), UndefinedId));
        }

        return Encode(entries);
    }

    private static byte[] Encode(List<(ushort Tag, ushort Perm, uint Id)> entries)
    {
        var bytes = new byte[4 + 8 * entries.Count];
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, 2);
        for (var i = 0; i < entries.Count; i++)
        {
            var span = bytes.AsSpan(4 + 8 * i);
            BinaryPrimitives.WriteUInt16LittleEndian(span, entries[i].Tag);
            BinaryPrimitives.WriteUInt16LittleEndian(span[2..], entries[i].Perm);
            BinaryPrimitives.WriteUInt32LittleEndian(span[4..], entries[i].Id);
        }

        return bytes;
    }
}

/// <summary>
/// Where a regular file's bytes lie: <paramref name="Size"/> bytes from <paramref name="Offset"/> of the archive, or of its
/// payload stream (<paramref name="InPayloadStream"/>, split archives; <paramref name="PayloadRefOffset"/>: the
/// PAYLOAD_REF item's offset in the metadata stream, for errors). Enough to read the file without keeping its entry.
/// </summary>
public readonly record struct PxarContent(long Size, long Offset, bool InPayloadStream, long PayloadRefOffset);

/// <summary>
/// One decoded entry. A hard link is resolved: <see cref="Name"/> is the link's name, everything else (stat, contents,
/// <see cref="Inode"/>) is the target's, so every name of one file has the same inode.
/// </summary>
public sealed class PxarEntry
{
    internal PxarEntry(byte[] name, long filenameOffset)
    {
        Name = name;
        FilenameOffset = filenameOffset;
    }

    /// <summary>The name as bytes; empty for the archive root.</summary>
    public byte[] Name { get; internal set; }

    /// <summary>Offset of this name's FILENAME item in the (metadata) stream; −1 for the root.</summary>
    public long FilenameOffset { get; internal set; }

    /// <summary>Offset of the ENTRY item (of the hard link's target for a hard link).</summary>
    public long EntryOffset { get; internal set; }

    /// <summary>A stable identity: the offset of the (resolved) ENTRY item; equal for all names of a hard-linked file.</summary>
    public ulong Inode => (ulong)EntryOffset;

    public PxarStat Stat { get; internal set; }

    public PxarEntryKind Kind { get; internal set; }

    public uint Mode => (uint)Stat.Mode;

    public bool IsDirectory => Kind == PxarEntryKind.Directory;

    public byte[]? SymlinkTarget { get; internal set; }

    public ulong DeviceMajor { get => rare?.DeviceMajor ?? 0; internal set => Rare.DeviceMajor = value; }

    public ulong DeviceMinor { get => rare?.DeviceMinor ?? 0; internal set => Rare.DeviceMinor = value; }

    /// <summary>The Linux dev_t of a device node (major/minor split as glibc's makedev).</summary>
    public ulong RDev => ((DeviceMajor & 0xfffff000UL) << 32) | ((DeviceMajor & 0xfffUL) << 8) | ((DeviceMinor & 0xffffff00UL) << 12) | (DeviceMinor & 0xffUL);

    /// <summary>The XATTR items (without ACLs and file capabilities, which pxar keeps separately).</summary>
    public IReadOnlyList<PxarXattr> Xattrs { get; internal set; } = [];

    /// <summary>The entry's POSIX ACLs; one shared empty instance for the entries without (nearly all: a tree of
    /// 145,000 entries held 29 MiB of empty ACL objects and their lists while the mount had them as nodes).</summary>
    public PxarAcl Acl => acl ?? PxarAcl.None;

    /// <summary>The ACLs the parser fills in (made on the first ACL item).</summary>
    internal PxarAcl MutableAcl => acl ??= new();

    private PxarAcl? acl;

    /// <summary>Fields few entries have (device numbers, file capabilities, a quota project, hard-link targets), kept
    /// apart so that the others do not carry them: the mount holds one entry per name the kernel knows.</summary>
    private RareFields? rare;

    private RareFields Rare => rare ??= new();

    private sealed class RareFields
    {
        public ulong DeviceMajor;
        public ulong DeviceMinor;
        public byte[]? Fcaps;
        public ulong? QuotaProjectId;
        public byte[]? HardlinkPath;
        public long? HardlinkTargetOffset;
    }

    /// <summary>The raw <c>security.capability</c> value, if any.</summary>
    public byte[]? Fcaps { get => rare?.Fcaps; internal set => Rare.Fcaps = value; }

    public ulong? QuotaProjectId { get => rare?.QuotaProjectId; internal set => Rare.QuotaProjectId = value; }

    /// <summary>Size of a regular file's contents; 0 otherwise.</summary>
    public long Size { get; internal set; }

    /// <summary>Where a regular file's bytes start: in the payload stream (v2) or the archive itself (v1).</summary>
    public long ContentOffset { get; internal set; }

    public bool ContentInPayloadStream { get; internal set; }

    /// <summary>Where a regular file's bytes lie.</summary>
    public PxarContent Content => new(Size, ContentOffset, ContentInPayloadStream, PayloadRefOffset);

    /// <summary>True when <see cref="AllXattrs"/> has anything: XATTR items, file capabilities or an ACL.</summary>
    public bool HasXattrs => Xattrs.Count > 0 || Fcaps is not null || acl is not null;

    /// <summary>Offset of the PAYLOAD_REF item (split archives; for errors).</summary>
    internal long PayloadRefOffset { get; set; }

    /// <summary>Whether the PAYLOAD header a PAYLOAD_REF points at was found as expected (checked on the first read).</summary>
    internal bool PayloadHeaderChecked { get; set; }

    /// <summary>True when this name was stored as a HARDLINK item (the stat is its target's).</summary>
    public bool IsHardlink { get; internal set; }

    /// <summary>The target path a HARDLINK item stores (informational).</summary>
    public byte[]? HardlinkPath { get => rare?.HardlinkPath; internal set => Rare.HardlinkPath = value; }

    /// <summary>FILENAME offset of the hard link's target (the first name of the file), or null.</summary>
    public long? HardlinkTargetOffset { get => rare?.HardlinkTargetOffset; internal set => Rare.HardlinkTargetOffset = value; }

    // Directory extent: [FilenameOffset (or 0), DirectoryEnd); ContentStart = first child FILENAME or the GOODBYE.
    internal long DirectoryEnd { get; set; }

    internal long ContentStart { get; set; }

    internal bool IsRoot { get; set; }

    /// <summary>
    /// Every extended attribute as a FUSE layer serves them: the XATTR items, <c>security.capability</c> from FCAPS, and
    /// <c>system.posix_acl_access</c>/<c>system.posix_acl_default</c> in the kernel's binary form.
    /// </summary>
    public IReadOnlyList<PxarXattr> AllXattrs()
    {
        var all = new List<PxarXattr>(Xattrs);
        if (Fcaps is not null)
        {
            all.Add(PxarXattr.Of("security.capability", Fcaps));
        }

        if (Acl.AccessXattr(Stat.Mode) is { } access)
        {
            all.Add(PxarXattr.Of(PxarAcl.AccessXattrName, access));
        }

        if (Acl.DefaultXattr() is { } dflt)
        {
            all.Add(PxarXattr.Of(PxarAcl.DefaultXattrName, dflt));
        }

        return all;
    }

    /// <summary>One extended attribute by name (as <see cref="AllXattrs"/> serves them), or null.</summary>
    public byte[]? GetXattr(ReadOnlySpan<byte> name)
    {
        foreach (var x in AllXattrs())
        {
            if (name.SequenceEqual(x.Name))
            {
                return x.Value;
            }
        }

        return null;
    }

    public override string ToString() => $"{System.Text.Encoding.UTF8.GetString(Name)} ({Kind}, mode {Convert.ToString(Mode, 8)}, @{EntryOffset})";
}
