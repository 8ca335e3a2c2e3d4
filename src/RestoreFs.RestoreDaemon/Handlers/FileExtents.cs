using System.Buffers.Binary;
using RestoreFs.RestoreApi;
using RestoreFs.RestoreDaemon.Disks;
using RestoreFs.RestoreDaemon.Native;

namespace RestoreFs.RestoreDaemon.Handlers;

/// <summary>
/// Where a regular file's bytes lie on its disk, from the kernel's FIEMAP of the mounted file system, so that the
/// host can read them from the backed-up image itself instead of through the VM's virtual disk. Only where the
/// answer is exact: file systems whose FIEMAP gives device byte offsets (ext2/3/4, xfs, vfat: not btrfs, whose
/// addresses are logical, nor FUSE file systems), extents that hold the file's bytes as they are on the device (not
/// inline, encoded, encrypted, delayed or of unknown place); unwritten extents read as zeros and are left out like
/// holes. Anything else gives no map, and the host reads the file through the VM.
/// </summary>
internal static class FileExtents
{
    /// <summary>File systems mounted with these drivers map files to device byte offsets.</summary>
    public static bool Maps(string? mountedFsType) => mountedFsType is "ext2" or "ext3" or "ext4" or "xfs" or "vfat" or "msdos";

    /// <summary>More extents than this: not worth a map (the host reads such a file through the VM).</summary>
    public const int MaxExtents = 4096;

    private const nuint FS_IOC_FIEMAP = 0xC020660B;
    private const int HeaderSize = 32, ExtentSize = 56, Batch = 64;
    private const uint Last = 0x1, Unknown = 0x2, Delalloc = 0x4, Encoded = 0x8, Encrypted = 0x80, NotAligned = 0x100,
        Inline = 0x200, Tail = 0x400, Unwritten = 0x800;

    /// <summary>The file's data extents mapped to disk offsets, or null when no exact map can be given.</summary>
    public static unsafe IReadOnlyList<FileExtent>? Map(int fd, long size, IReadOnlyList<DiskSpan> placement, long volumeSize)
    {
        var result = new List<FileExtent>();
        if (size == 0)
        {
            return result;
        }

        var buffer = new byte[HeaderSize + Batch * ExtentSize];
        long start = 0;
        while (start < size)
        {
            Array.Clear(buffer);
            BinaryPrimitives.WriteUInt64LittleEndian(buffer, (ulong)start);
            BinaryPrimitives.WriteUInt64LittleEndian(buffer.AsSpan(8), ulong.MaxValue - (ulong)start);
            BinaryPrimitives.WriteUInt32LittleEndian(buffer.AsSpan(24), Batch);
            int r;
            fixed (byte* b = buffer)
            {
                r = LibC.Ioctl(fd, FS_IOC_FIEMAP, b);
            }

            if (r < 0)
            {
                return null; // EOPNOTSUPP and friends
            }

            // struct fiemap: u64 start, u64 length, u32 flags, u32 mapped_extents, u32 extent_count, u32 reserved
            var mapped = BinaryPrimitives.ReadUInt32LittleEndian(buffer.AsSpan(20));
            if (mapped == 0)
            {
                break; // the rest is a hole
            }

            var sawLast = false;
            if (mapped > Batch)
            {
                return null;
            }

            for (var i = 0; i < mapped; i++)
            {
                var e = buffer.AsSpan(HeaderSize + i * ExtentSize, ExtentSize);
                var logical = (long)BinaryPrimitives.ReadUInt64LittleEndian(e);
                var physical = (long)BinaryPrimitives.ReadUInt64LittleEndian(e[8..]);
                var length = (long)BinaryPrimitives.ReadUInt64LittleEndian(e[16..]);
                var flags = BinaryPrimitives.ReadUInt32LittleEndian(e[40..]);
                if ((flags & (Unknown | Delalloc | Encoded | Encrypted | NotAligned | Inline | Tail)) != 0 || logical < 0 || physical < 0 || length <= 0)
                {
                    return null;
                }

                start = Math.Max(start, logical + length);
                sawLast |= (flags & Last) != 0;
                if ((flags & Unwritten) != 0 || logical >= size)
                {
                    continue; // reads as zeros / beyond the end of the file
                }

                length = Math.Min(length, size - logical);
                if (physical + length > volumeSize || !AddOnDisk(result, logical, physical, length, placement))
                {
                    return null;
                }

                if (result.Count > MaxExtents)
                {
                    return null;
                }
            }

            if (sawLast)
            {
                break;
            }
        }

        // A non-empty file without a single data extent would read as zeros: only trust that from the VM's own read.
        return result.Count == 0 ? null : result;
    }

    /// <summary>Adds volume bytes [physical, physical+length) as file bytes from <paramref name="logical"/>, split
    /// where the volume's placement on the disk is split.</summary>
    private static bool AddOnDisk(List<FileExtent> result, long logical, long physical, long length, IReadOnlyList<DiskSpan> placement)
    {
        while (length > 0)
        {
            var span = placement.FirstOrDefault(s => physical >= s.VolumeOffset && physical < s.VolumeOffset + s.Length);
            if (span.Length == 0)
            {
                return false;
            }

            var n = Math.Min(length, span.VolumeOffset + span.Length - physical);
            var disk = span.DiskOffset + (physical - span.VolumeOffset);
            if (result.Count > 0 && result[^1] is var prev && prev.Logical + prev.Length == logical && prev.Disk + prev.Length == disk)
            {
                result[^1] = prev with { Length = prev.Length + n };
            }
            else
            {
                result.Add(new FileExtent(logical, disk, n));
            }

            logical += n;
            physical += n;
            length -= n;
        }

        return true;
    }
}
