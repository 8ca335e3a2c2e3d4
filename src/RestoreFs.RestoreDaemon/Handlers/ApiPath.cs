using System.Text;
using RestoreFs.RestoreDaemon.Disks;

namespace RestoreFs.RestoreDaemon.Handlers;

/// <summary>A request failed because of what was asked (HTTP 400), with a message for the user.</summary>
public sealed class BadRequestException(string message) : Exception(message);

/// <summary>
/// The path scheme of <c>list</c>/<c>read</c>/<c>extract</c>, as bytes: <c>&lt;disk&gt;[.img[.fidx]]/part/&lt;n&gt;/…</c>,
/// <c>…/lvm/&lt;vg&gt;/&lt;lv&gt;/…</c>, <c>…/zfs/&lt;pool&gt;/&lt;dataset&gt;/…</c>, <c>…/raw/…</c>. Levels above a file system are "virtual".
/// </summary>
public sealed record ApiPath(byte[] Requested, DiskInfo? Disk, string? Bucket, IReadOnlyList<string> Levels, VolumeInfo? Volume, IReadOnlyList<byte[]> Rest)
{
    public const int SerialLimit = 20;

    /// <summary>The request path as the client sent it, without a trailing slash: the prefix of every child's filepath.</summary>
    public byte[] Prefix => Requested;

    public static byte[] Normalise(byte[] raw)
    {
        var span = raw.AsSpan();
        while (span.Length > 0 && span[^1] == '/')
        {
            span = span[..^1];
        }

        return span.ToArray();
    }

    public static ApiPath Parse(byte[] raw, IReadOnlyList<DiskInfo> disks)
    {
        var requested = Normalise(raw);
        var parts = new List<byte[]>();
        foreach (var range in requested.AsSpan().Split((byte)'/'))
        {
            var part = requested.AsSpan()[range];
            if (part.Length == 0 || part.SequenceEqual("."u8))
            {
                continue;
            }

            if (part.SequenceEqual(".."u8))
            {
                throw new BadRequestException("'..' is not allowed in a path");
            }

            if (part.Contains((byte)0))
            {
                throw new BadRequestException("a path may not contain NUL bytes");
            }

            parts.Add(part.ToArray());
        }

        if (parts.Count == 0)
        {
            return new ApiPath(requested, null, null, [], null, []);
        }

        var disk = FindDisk(Encoding.UTF8.GetString(parts[0]), disks)
            ?? throw new BadRequestException($"no disk named '{Encoding.UTF8.GetString(parts[0])}' in this VM");
        if (disk.Error is { } error && disk.Volumes.Count == 0)
        {
            // A disk that could not be scanned (unreadable for now, or still being scanned) is not an empty one: the
            // client would keep an empty listing. The answer names why, and a later request may find its volumes.
            throw new BadRequestException(error.Contains(disk.Name, StringComparison.Ordinal) ? error : $"disk {disk.Name}: {error}");
        }

        if (parts.Count == 1)
        {
            return new ApiPath(requested, disk, null, [], null, []);
        }

        var bucket = Encoding.UTF8.GetString(parts[1]);
        var depth = bucket switch
        {
            "raw" => 0,
            "part" or "md" => 1,
            "lvm" => 2,
            "zfs" => 2,
            _ => throw new BadRequestException($"'{bucket}' is not a volume type (part, md, lvm, zfs, raw)"),
        };
        var levels = parts.Skip(2).Take(depth).Select(p => Encoding.UTF8.GetString(p)).ToList();
        if (levels.Count < depth)
        {
            return new ApiPath(requested, disk, bucket, levels, null, []);
        }

        var volume = disk.Volumes.FirstOrDefault(v => v.Bucket == bucket && v.Components.SequenceEqual(levels))
            ?? throw new BadRequestException($"{disk.Name} has no volume {bucket}{(levels.Count > 0 ? "/" + string.Join('/', levels) : "")}");
        return new ApiPath(requested, disk, bucket, levels, volume, parts.Skip(2 + depth).ToList());
    }

    /// <summary>Disks match by serial, with or without <c>.img</c>/<c>.img.fidx</c>, also cut to virtio's 20 bytes.</summary>
    public static DiskInfo? FindDisk(string name, IReadOnlyList<DiskInfo> disks)
    {
        foreach (var suffix in new[] { ".img.fidx", ".img" })
        {
            if (name.EndsWith(suffix, StringComparison.Ordinal))
            {
                name = name[..^suffix.Length];
                break;
            }
        }

        var exact = disks.FirstOrDefault(d => d.Name == name);
        if (exact is not null)
        {
            return exact;
        }

        var bytes = Encoding.UTF8.GetBytes(name);
        return bytes.Length > SerialLimit ? disks.FirstOrDefault(d => d.Name == Encoding.UTF8.GetString(bytes, 0, SerialLimit)) : null;
    }
}
