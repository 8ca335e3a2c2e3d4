using System.Buffers.Binary;
using System.Globalization;
using System.Text;

namespace RestoreFs.RestoreDaemon.Disks;

/// <summary>
/// What one member of a Linux software RAID (md) says about its array, read from its superblock: version 1.1 (at the
/// start), 1.2 (at 4 KiB), 1.0 (8–12 KiB before the end) or 0.90 (in the last 64 KiB-aligned 64 KiB). Only what the
/// catalog needs to group members, load the right personality and name the array; mdadm does the assembling.
/// </summary>
/// <param name="Version">"0.90", "1.0", "1.1" or "1.2".</param>
/// <param name="Uuid">The array's UUID (the same on every member), lower-case hex without dashes.</param>
/// <param name="Name">The array's name (1.x: after the home host's "host:" prefix); empty for 0.90.</param>
/// <param name="Level">-1 linear, 0, 1, 4, 5, 6, 10; other values as stored (multipath, faulty…).</param>
/// <param name="RaidDisks">How many active members the array has when it is whole.</param>
/// <param name="Role">This member's slot in the array; -1 a spare, -2 faulty.</param>
/// <param name="PreferredMinor">0.90's md minor (the array was /dev/md<i>N</i>); -1 for 1.x.</param>
public sealed record MdSuperblock(string Version, string Uuid, string Name, int Level, int RaidDisks, int Role, ulong Events, int PreferredMinor)
{
    public const uint Magic = 0xA92B4EFC;

    /// <summary>The kernel module that runs arrays of this level (the md "personality"); null for levels we do not load.</summary>
    public string? Personality => Level switch
    {
        -1 => "linear",
        0 => "raid0",
        1 => "raid1",
        4 or 5 or 6 => "raid456",
        10 => "raid10",
        _ => null,
    };

    /// <summary>The level as mdadm names it.</summary>
    public string LevelName => Level switch
    {
        -1 => "linear",
        -4 => "multipath",
        -5 => "faulty",
        _ => "raid" + Level.ToString(CultureInfo.InvariantCulture),
    };

    /// <summary>A name for the array's directory in files/: its own name when it has one, else md<i>N</i> (0.90), else
    /// its UUID's first eight digits; only characters safe in a path component.</summary>
    public string DisplayName
    {
        get
        {
            var raw = Name.Length > 0 ? Name : PreferredMinor >= 0 ? "md" + PreferredMinor.ToString(CultureInfo.InvariantCulture) : "md-" + Uuid[..8];
            var b = new StringBuilder(raw.Length);
            foreach (var c in raw)
            {
                b.Append(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '_');
            }

            return b.ToString() is "." or ".." ? "md-" + Uuid[..8] : b.ToString();
        }
    }

    /// <summary>Byte offsets (from the volume's start) where a superblock at the end would be: 1.0, then 0.90.</summary>
    public static (long V10, long V090) EndOffsets(long length)
    {
        var sectors = length / 512;
        var v10 = ((sectors - 16) & ~7L) * 512;
        var v090 = ((sectors & ~127L) - 128) * 512;
        return (v10, v090);
    }

    /// <summary>The superblock of the volume [offset, offset+length) of a device, or null when it has none.</summary>
    public static MdSuperblock? Read(Stream device, long offset, long length)
    {
        var buffer = new byte[4096];
        if (length >= 8192)
        {
            foreach (var (at, version) in new[] { (0L, "1.1"), (4096L, "1.2") })
            {
                if (ReadAt(device, offset + at, buffer) && Parse1(buffer, version, at / 512) is { } sb)
                {
                    return sb;
                }
            }
        }

        return ReadEnd(device, offset, length);
    }

    /// <summary>A superblock of version 1.0 or 0.90 (at the end of the volume), or null.</summary>
    public static MdSuperblock? ReadEnd(Stream device, long offset, long length)
    {
        if (length < 128 * 1024)
        {
            return null;
        }

        var buffer = new byte[4096];
        var (v10, v090) = EndOffsets(length);
        if (ReadAt(device, offset + v10, buffer) && Parse1(buffer, "1.0", v10 / 512) is { } end)
        {
            return end;
        }

        return ReadAt(device, offset + v090, buffer) ? Parse090(buffer) : null;
    }

    private static bool ReadAt(Stream device, long at, byte[] buffer)
    {
        device.Position = at;
        return device.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false) == buffer.Length;
    }

    /// <summary>A version-1 superblock (struct mdp_superblock_1) that says it lies where it was found.</summary>
    internal static MdSuperblock? Parse1(ReadOnlySpan<byte> b, string version, long sector)
    {
        if (b.Length < 256 || BinaryPrimitives.ReadUInt32LittleEndian(b) != Magic || BinaryPrimitives.ReadUInt32LittleEndian(b[4..]) != 1
            || BinaryPrimitives.ReadUInt64LittleEndian(b[144..]) != (ulong)sector)
        {
            return null;
        }

        var maxDev = BinaryPrimitives.ReadUInt32LittleEndian(b[220..]);
        if (maxDev > 1920 || 256 + maxDev * 2 > b.Length)
        {
            return null;
        }

        var devNumber = BinaryPrimitives.ReadUInt32LittleEndian(b[160..]);
        var role = devNumber < maxDev ? BinaryPrimitives.ReadUInt16LittleEndian(b[(256 + (int)devNumber * 2)..]) : 0xFFFF;
        var name = Encoding.UTF8.GetString(b.Slice(32, 32)).TrimEnd('\0');
        var colon = name.IndexOf(':', StringComparison.Ordinal);
        return new MdSuperblock(version, Convert.ToHexStringLower(b.Slice(16, 16)), colon >= 0 ? name[(colon + 1)..] : name,
            BinaryPrimitives.ReadInt32LittleEndian(b[72..]), (int)BinaryPrimitives.ReadUInt32LittleEndian(b[92..]),
            role switch { 0xFFFF => -1, 0xFFFE => -2, _ => role }, BinaryPrimitives.ReadUInt64LittleEndian(b[200..]), -1);
    }

    private static uint Word(ReadOnlySpan<byte> b, int i) => BinaryPrimitives.ReadUInt32LittleEndian(b[(i * 4)..]);

    /// <summary>A version-0.90 superblock (mdp_super_t, little-endian as x86 writes it).</summary>
    internal static MdSuperblock? Parse090(ReadOnlySpan<byte> b)
    {
        if (b.Length < 4096)
        {
            return null;
        }

        if (Word(b, 0) != Magic || Word(b, 1) != 0 || Word(b, 2) != 90)
        {
            return null;
        }

        var uuid = new byte[16];
        foreach (var (i, word) in new[] { (0, 5), (1, 13), (2, 14), (3, 15) })
        {
            BinaryPrimitives.WriteUInt32BigEndian(uuid.AsSpan(i * 4), Word(b, word));
        }

        // this_disk (mdp_disk_t at word 992): number, major, minor, raid_disk, state (bit 0 faulty).
        var faulty = (Word(b, 996) & 1) != 0;
        var raidDisk = (int)Word(b, 995);
        var raidDisks = (int)Word(b, 10);
        var events = ((ulong)Word(b, 40) << 32) | Word(b, 39);
        return new MdSuperblock("0.90", Convert.ToHexStringLower(uuid), "", (int)Word(b, 7), raidDisks,
            faulty ? -2 : raidDisk < raidDisks ? raidDisk : -1, events, (int)Word(b, 11));
    }
}
