using System.Diagnostics;
using System.Text;
using System.Text.Json;
using RestoreFs.RestoreApi;
using RestoreFs.RestoreDaemon.Disks;

namespace RestoreFs.RestoreDaemon.Handlers;

/// <summary>
/// <c>list?path=B64[&amp;inline=N][&amp;extents=1][&amp;xattrs=1][&amp;start=N][&amp;limit=N]</c>: the virtual levels (disks,
/// buckets, partitions, volume groups, volumes) as one answer; a directory inside a volume streamed, entry by entry.
/// </summary>
internal sealed class ListHandler(VolumeResolver volumes, KernelIoErrors? ioErrors, Action<string> log)
{
    private readonly IVolumeCatalog catalog = volumes.Catalog;
    private long entriesListed;

    /// <summary>At most this much file content is inlined in one listing.</summary>
    public const long InlineBudget = 32L << 20;

    /// <summary>Entries per <c>list</c> answer when the client sets no <c>limit</c>; a longer directory ends the answer with
    /// a <see cref="EntryTypes.More"/> element.</summary>
    public const int DefaultListLimit = 100_000;

    /// <summary>The largest <c>limit</c> a client may ask for.</summary>
    public const int MaxListLimit = 1 << 20;

    /// <summary>Directory entries written into answers so far.</summary>
    public long EntriesListed => Interlocked.Read(ref entriesListed);

    private sealed record ListParameters(int InlineMax, bool Extents, bool Xattrs, long Start, int Limit);

    public Task HandleAsync(Stream stream, Http.Request request, CancellationToken ct) =>
        ListAsync(stream, RequestArgs.PathOf(request), new ListParameters(
            request.Query.ContainsKey("inline") ? (int)RequestArgs.Number(request, "inline", 0, 1 << 20) : 0,
            request.Query.ContainsKey("extents") && RequestArgs.Number(request, "extents", 0, 1) == 1,
            request.Query.ContainsKey("xattrs") && RequestArgs.Number(request, "xattrs", 0, 1) == 1,
            request.Query.ContainsKey("start") ? RequestArgs.Number(request, "start", long.MinValue, long.MaxValue) : 0,
            request.Query.ContainsKey("limit") ? (int)RequestArgs.Number(request, "limit", 1, MaxListLimit) : DefaultListLimit), ct);

    private async Task ListAsync(Stream stream, byte[] raw, ListParameters p, CancellationToken ct)
    {
        var disks = await catalog.GetDisksAsync(ct).ConfigureAwait(false);
        var path = ApiPath.Parse(raw, disks);
        if (path.Volume is null)
        {
            var entries = await VirtualLevelAsync(path, disks, ct).ConfigureAwait(false);
            await Answers.JsonAsync(stream, w =>
            {
                w.WriteStartArray();
                foreach (var e in entries)
                {
                    ApiJson.WriteEntry(w, e);
                }

                w.WriteEndArray();
            }, ct).ConfigureAwait(false);
            return;
        }

        var mountPoint = await volumes.MountAsync(path.Volume, ct).ConfigureAwait(false);
        var map = p.Extents ? Mapping(path.Volume) : null;
        var (directory, single) = VolumeFiles.OpenForList(mountPoint, path.Rest, path.Prefix, p.Xattrs);
        if (single is not null)
        {
            await Answers.JsonAsync(stream, w =>
            {
                w.WriteStartArray();
                ApiJson.WriteEntry(w, single);
                w.WriteEndArray();
            }, ct).ConfigureAwait(false);
            return;
        }

        var mark = ioErrors?.Mark() ?? 0;
        using (directory)
        {
            await stream.WriteAsync(Http.FormatResponseHead(200, "OK", "application/json;charset=UTF-8", null), ct).ConfigureAwait(false);
            var body = new ChunkedWriteStream(stream);
            var buffered = new BufferedStream(body, 64 * 1024);
            await using (var w = new Utf8JsonWriter(buffered))
            {
                w.WriteStartObject();
                w.WritePropertyName("data");
                w.WriteStartArray();
                var n = 0;
                ArchiveEntry? more = null;
                var profile = new ListProfile();
                foreach (var entry in VolumeFiles.ListDirectory(directory!, path.Prefix, p.InlineMax, InlineBudget, map, p.Xattrs, p.Start, p.Limit, profile))
                {
                    if (entry.Type == EntryTypes.More)
                    {
                        more = entry;
                        break;
                    }

                    var tw = Stopwatch.GetTimestamp();
                    ApiJson.WriteEntry(w, entry);
                    Interlocked.Increment(ref entriesListed);
                    if (++n % 256 == 0 || w.BytesPending > 1 << 20)
                    {
                        await w.FlushAsync(ct).ConfigureAwait(false);
                        await buffered.FlushAsync(ct).ConfigureAwait(false);
                    }

                    profile.Add(ref profile.Write, tw);
                }

                if (ioErrors?.OnVolume(mark, path.Volume, path.Disk!.Device) is { } damage)
                {
                    // The entries so far may be all the file system could read: say so (the host fails the listing).
                    log($"list {path.Volume.Id}: {damage}");
                    ApiJson.WriteEntry(w, new ArchiveEntry(path.Prefix, [], EntryTypes.Failed, true, null, null, 0, 0, 0, null,
                        $"{Encoding.UTF8.GetString(path.Prefix)} cannot be listed completely: {damage}"));
                }

                if (more is not null)
                {
                    ApiJson.WriteEntry(w, more);
                }

                if (profile.Entries >= 256)
                {
                    log($"list {Encoding.UTF8.GetString(path.Prefix)}: {profile}"); // where a large listing's time went
                }

                w.WriteEndArray();
                w.WriteEndObject();
            }

            await buffered.FlushAsync(ct).ConfigureAwait(false);
            await body.CompleteAsync(ct).ConfigureAwait(false);
        }
    }

    /// <summary>Files of this volume can be mapped onto its disk when its place on the disk is known and its file
    /// system's FIEMAP gives device offsets.</summary>
    private ExtentMapping? Mapping(VolumeInfo volume)
    {
        var mounted = catalog.Mounts.FirstOrDefault(m => m.Volume.Id == volume.Id);
        return volume.Placement is { Count: > 0 } placement && FileExtents.Maps(mounted?.FsType) && mounted?.NoFileMaps?.Invoke() != true
            ? new ExtentMapping(placement, (long)volume.Size)
            : null;
    }

    /// <summary>Disks, bucket types, partitions, volume groups and logical volumes; volumes are mounted here so that
    /// one that cannot be mounted is listed with its error.</summary>
    private async Task<List<ArchiveEntry>> VirtualLevelAsync(ApiPath path, IReadOnlyList<DiskInfo> disks, CancellationToken ct)
    {
        var prefix = path.Prefix;
        ArchiveEntry Virtual(string name, char type, ulong? size, string? error = null)
        {
            var bytes = Encoding.UTF8.GetBytes(name);
            byte[] full = prefix.Length == 0 ? bytes : [.. prefix, (byte)'/', .. bytes];
            return new ArchiveEntry(full, bytes, type, false, size, null, type == 'd' ? 0x41EDu : 0x416Du, 0, 0, null, error);
        }

        if (path.Disk is null)
        {
            return disks.Select(d => Virtual(d.Name + ".img.fidx", 'v', d.Size, d.Error)).ToList();
        }

        var volumes = path.Disk.Volumes;
        if (path.Bucket is null)
        {
            // raw is itself the volume: it carries the volume's place on the disk, as volume entries below do, and the
            // attributes of its file system's root when it mounts.
            var buckets = new List<ArchiveEntry>();
            foreach (var b in volumes.Select(v => v.Bucket).Distinct().Order(StringComparer.Ordinal))
            {
                var entry = Virtual(b, 'v', null);
                if (b == "raw")
                {
                    var raw = volumes.First(v => v.Bucket == "raw");
                    entry = entry with { Extents = PlacementOf(raw) };
                    try
                    {
                        entry = RootStat(entry, await catalog.MountAsync(raw, ct).ConfigureAwait(false));
                    }
                    catch (VolumeException)
                    {
                        // listed as before; asking inside it names the reason
                    }
                }

                buckets.Add(entry);
            }

            return buckets;
        }

        var inBucket = volumes.Where(v => v.Bucket == path.Bucket && v.Components.Take(path.Levels.Count).SequenceEqual(path.Levels)).ToList();
        if (path.Bucket is "lvm" or "zfs" && path.Levels.Count == 0)
        {
            return inBucket.Select(v => v.Components[0]).Distinct().Select(vg => Virtual(vg, 'v', null)).ToList();
        }

        var result = new List<ArchiveEntry>();
        foreach (var volume in inBucket)
        {
            string? error = null;
            string? mountPoint = null;
            try
            {
                mountPoint = await catalog.MountAsync(volume, ct).ConfigureAwait(false);
            }
            catch (VolumeException e)
            {
                error = e.Message;
            }

            var entry = Virtual(volume.Components[^1], 'd', volume.Size, error) with { Extents = PlacementOf(volume) };
            result.Add(mountPoint is null ? entry : RootStat(entry, mountPoint));
        }

        return result;
    }

    /// <summary>A volume entry with the attributes of its file system's root (statx of the mounted root): mode, owner,
    /// times, inode, device. Its <c>size</c> stays the volume's size.</summary>
    private static ArchiveEntry RootStat(ArchiveEntry entry, string mountPoint)
    {
        var fd = Native.LibC.OpenPath(mountPoint, Native.LibC.O_RDONLY | Native.LibC.O_DIRECTORY);
        if (fd < 0)
        {
            return entry;
        }

        using var root = new Native.Fd(fd);
        return Native.LibC.Stat(fd, [], out var st) == 0 ? VolumeFiles.WithStat(entry, st) with { Size = entry.Size } : entry;
    }

    /// <summary>A volume's place on its disk, as extents of the volume (logical = offset in the volume): the host
    /// tells which failed disk reads concern a listing of that volume.</summary>
    private static IReadOnlyList<FileExtent>? PlacementOf(VolumeInfo volume) =>
        volume.Placement?.Select(p => new FileExtent(p.VolumeOffset, p.DiskOffset, p.Length)).ToList();
}
