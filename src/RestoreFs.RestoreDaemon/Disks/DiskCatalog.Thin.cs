using System.Globalization;
using System.Text;

namespace RestoreFs.RestoreDaemon.Disks;

/// <summary>
/// LVM-thin without a thin pool: the kernel refuses a thin-pool target in a read-only table (the pool would write its
/// metadata), so the pool is never activated. Instead the pool's metadata is read from the disks (through the linear
/// segments of its metadata LV, <see cref="ThinMetadata"/>), and each thin LV (snapshots too: just another device in
/// the pool) becomes a read-only device-mapper table of <c>linear</c> pieces onto the physical volumes where its data
/// blocks lie and <c>zero</c> where it has none — what the pool would answer, with nothing that can write.
/// </summary>
public sealed partial class DiskCatalog
{
    /// <summary>At most this many runs make a file-map placement (a more fragmented thin LV reads through the VM only).</summary>
    private const int MaxThinPlacementRuns = 16384;

    private readonly List<string> dmDevices = []; // thin LVs made with dmsetup, removed by Dispose
    private readonly List<string> partitionMaps = []; // partitions the kernel does not show, removed last

    private sealed record ThinResult(string? Error, IReadOnlyList<(long Offset, string Device, long DeviceOffset, long Length)>? Segments);

    /// <summary>Maps a volume group's thin LVs; per LV name an error or where its bytes lie.</summary>
    private Dictionary<string, ThinResult> MapThinVolumes(string vg, List<LvmLogicalVolume> thin, IReadOnlyList<LvmLogicalVolume> all,
        IReadOnlyDictionary<string, IReadOnlyList<(long Offset, string Device, long DeviceOffset, long Length)>> segments)
    {
        var results = new Dictionary<string, ThinResult>(StringComparer.Ordinal);
        if (thin.Count == 0)
        {
            return results;
        }

        // Only linear (built into dm-mod) and zero (an early module: tiny, and no wait for the late ones) are needed.
        var pools = new Dictionary<string, (ThinMetadata? Metadata, string? Error)>(StringComparer.Ordinal);
        var streams = new Dictionary<string, FileStream>(StringComparer.Ordinal); // metadata reads, open while mapping
        try
        {
            MapAll();
            if (results.Values.Any(r => r.Error is null))
            {
                var nodes = Tool.Run("dmsetup", ["mknodes"], TimeSpan.FromSeconds(30));
                if (!nodes.Ok)
                {
                    log($"dmsetup mknodes: {nodes.FirstLine}");
                }
            }
        }
        finally
        {
            foreach (var s in streams.Values)
            {
                s.Dispose();
            }
        }

        var bad = results.Values.Where(r => r.Error is not null).Select(r => r.Error!).ToList();
        log(bad.Count == 0 ? $"volume group {vg}: {thin.Count} thin volume(s) mapped read-only from the pool metadata"
            : $"volume group {vg}: {string.Join("; ", bad)}");
        return results;

        void MapAll()
        {
            foreach (var lv in thin)
            {
                ThinResult result;
                try
                {
                    var pool = all.FirstOrDefault(p => p.VolumeGroup == vg && p.Name == lv.PoolLv && p.SegmentTypes.Split(',').Contains("thin-pool"));
                    if (pool is null)
                    {
                        throw new ThinMetadataException($"its thin pool {vg}/{lv.PoolLv} is not in the LVM report");
                    }

                    if (lv.Origin.Length > 0 && all.FirstOrDefault(o => o.VolumeGroup == vg && o.Name == lv.Origin) is { IsThin: false })
                    {
                        throw new ThinMetadataException($"it has the external origin {vg}/{lv.Origin} (thin LVs over a non-thin origin are not supported)");
                    }

                    if (!pools.TryGetValue(pool.Name, out var md))
                    {
                        md = pools[pool.Name] = OpenPoolMetadata(vg, pool, segments, streams);
                    }

                    if (md.Error is not null)
                    {
                        throw new ThinMetadataException(md.Error);
                    }

                    result = MapThin(vg, lv, pool, md.Metadata!, segments);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    result = new ThinResult($"cannot map thin volume {lv.FullName}: {e.Message}", null);
                }

                results[lv.Name] = result;
            }
        }
    }

    private (ThinMetadata? Metadata, string? Error) OpenPoolMetadata(string vg, LvmLogicalVolume pool,
        IReadOnlyDictionary<string, IReadOnlyList<(long Offset, string Device, long DeviceOffset, long Length)>> segments,
        Dictionary<string, FileStream> streams)
    {
        if (!segments.TryGetValue(vg + "/" + pool.MetadataLv, out var meta) || meta.Count == 0)
        {
            return (null, $"the metadata LV {vg}/{pool.MetadataLv} of pool {pool.FullName} is not linear on the disks here");
        }

        if (!segments.ContainsKey(vg + "/" + pool.DataLv))
        {
            return (null, $"the data LV {vg}/{pool.DataLv} of pool {pool.FullName} is not linear on the disks here");
        }

        try
        {
            var size = meta.Sum(s => s.Length);
            byte[] Read(long block)
            {
                var offset = block * ThinMetadata.BlockSize;
                var seg = meta.FirstOrDefault(s => offset >= s.Offset && offset + ThinMetadata.BlockSize <= s.Offset + s.Length);
                if (seg.Device is null)
                {
                    throw new ThinMetadataException($"pool metadata block {block} is not inside one segment of {vg}/{pool.MetadataLv}");
                }

                if (!streams.TryGetValue(seg.Device, out var stream))
                {
                    stream = streams[seg.Device] = OpenRead(seg.Device);
                }

                var buffer = new byte[ThinMetadata.BlockSize];
                RandomAccess.Read(stream.SafeFileHandle, buffer, seg.DeviceOffset + (offset - seg.Offset));
                return buffer;
            }

            return (ThinMetadata.Open(Read, size), null);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return (null, $"pool {pool.FullName}: {e.Message}");
        }
    }

    private ThinResult MapThin(string vg, LvmLogicalVolume lv, LvmLogicalVolume pool, ThinMetadata md,
        IReadOnlyDictionary<string, IReadOnlyList<(long Offset, string Device, long DeviceOffset, long Length)>> segments)
    {
        var chunk = (long)md.DataBlockSectors * 512;
        if (pool.ChunkSize != 0 && pool.ChunkSize != (ulong)chunk)
        {
            log($"pool {pool.FullName}: LVM says chunks of {pool.ChunkSize} bytes, the pool metadata {chunk}: the metadata wins");
        }

        var size = (long)lv.Size;
        var runs = md.Runs(lv.ThinId, (size + chunk - 1) / chunk)
                   ?? throw new ThinMetadataException($"thin device {lv.ThinId} is not in the metadata of pool {pool.FullName} (pool transaction {md.TransactionId})");
        var pieces = ThinPieces(lv.ThinId, runs, chunk, size, segments[vg + "/" + pool.DataLv]);
        var table = new StringBuilder();
        long at = 0;
        void Line(long start, long length, string target) =>
            table.Append(CultureInfo.InvariantCulture, $"{start / 512} {length / 512} {target}\n");
        foreach (var p in pieces)
        {
            if (p.Offset > at)
            {
                Line(at, p.Offset - at, "zero");
            }

            Line(p.Offset, p.Length, string.Create(CultureInfo.InvariantCulture, $"linear {p.Device} {p.DeviceOffset / 512}"));
            at = p.Offset + p.Length;
        }

        if (at < size)
        {
            Line(at, size - at, "zero");
        }

        CreateDevice(Path.GetFileName(lv.DmPath), table.ToString(), dmDevices);
        return new ThinResult(null, pieces.Count <= MaxThinPlacementRuns ? pieces : null);
    }

    /// <summary>Where the bytes of a thin LV of <paramref name="size"/> bytes lie: each mapped run of
    /// <paramref name="chunk"/>-byte data blocks goes to the PVs through the data LV's segments (in LV order, without
    /// gaps); unmapped blocks read as zeros and have no piece. The runs come from pool metadata on a guest's disk, so a
    /// data block past the data LV is an error that names it, whatever its number.</summary>
    internal static List<(long Offset, string Device, long DeviceOffset, long Length)> ThinPieces(ulong thinId, IReadOnlyList<ThinRun> runs,
        long chunk, long size, IReadOnlyList<(long Offset, string Device, long DeviceOffset, long Length)> data)
    {
        var dataSize = data.Sum(s => s.Length);
        var pieces = new List<(long Offset, string Device, long DeviceOffset, long Length)>();
        foreach (var run in runs)
        {
            var offset = run.Virtual * chunk;
            var length = Math.Min(run.Count * chunk, size - offset);
            // run.Data is up to 40 bits and chunk up to 1 GiB: compare before multiplying.
            if (run.Data > dataSize / chunk || run.Data * chunk > dataSize - length)
            {
                throw new ThinMetadataException($"thin device {thinId}: block {run.Virtual} maps to data block {run.Data}, past the pool's {dataSize / chunk} blocks");
            }

            var dataOffset = run.Data * chunk;
            while (length > 0)
            {
                var seg = data.FirstOrDefault(s => dataOffset >= s.Offset && dataOffset < s.Offset + s.Length);
                if (seg.Device is null)
                {
                    throw new ThinMetadataException($"thin device {thinId}: data offset {dataOffset} is in no segment of the pool's data LV");
                }

                var n = Math.Min(length, seg.Offset + seg.Length - dataOffset);
                pieces.Add((offset, seg.Device, seg.DeviceOffset + (dataOffset - seg.Offset), n));
                offset += n;
                dataOffset += n;
                length -= n;
            }
        }

        return pieces;
    }

    /// <summary>A read-only device-mapper device from a table (dmsetup; without udev its node comes from
    /// <c>dmsetup mknodes</c>, run once for all by <see cref="MapThinVolumes"/>: every process costs under TCG).</summary>
    private void CreateDevice(string name, string table, List<string> made)
    {
        var file = Path.Combine(Path.GetTempPath(), $"restorefs-dm-{Environment.ProcessId}-{name}.table");
        File.WriteAllText(file, table);
        try
        {
            var r = Tool.Run("dmsetup", ["--readonly", "--noudevsync", "--noudevrules", "create", name, file], TimeSpan.FromSeconds(60));
            if (!r.Ok)
            {
                throw new IOException($"dmsetup create {name}: {r.FirstLine}");
            }

            lock (gate)
            {
                made.Add(name);
            }
        }
        finally
        {
            File.Delete(file);
        }
    }

    private void RemoveDevices(List<string> made)
    {
        List<string> names;
        lock (gate)
        {
            names = made.ToList();
            made.Clear();
        }

        foreach (var name in names)
        {
            var r = Tool.Run("dmsetup", ["--noudevsync", "remove", name], TimeSpan.FromSeconds(30));
            log(r.Ok ? $"removed {name}" : $"cannot remove {name}: {r.FirstLine}");
        }
    }
}
