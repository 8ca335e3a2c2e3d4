using System.Globalization;
using System.Text;
using System.Text.Json;

namespace RestoreFs.RestoreDaemon.Disks;

/// <param name="Device">The PV's block device (a partition, a loop device or a whole disk).</param>
/// <param name="VolumeGroup">Empty for a PV in no volume group.</param>
internal sealed record LvmPhysicalVolume(string Device, string VolumeGroup);

/// <param name="Attributes">lvs' lv_attr, e.g. <c>-wi-a-----</c>.</param>
/// <param name="DmPath">/dev/mapper/VG-LV.</param>
/// <param name="SegmentTypes">linear, striped, thin, …</param>
internal sealed record LvmLogicalVolume(string VolumeGroup, string Name, ulong Size, string Attributes, string DmPath, string SegmentTypes)
{
    public string FullName => VolumeGroup + "/" + Name;

    /// <summary>An internal volume (lvs -a shows it in brackets: <c>[pool_tmeta]</c>); <see cref="Name"/> is without them.</summary>
    public bool Hidden { get; init; }

    /// <summary>Thin LV: its pool, its device id in the pool and its origin (thin snapshot or external origin), else empty.</summary>
    public string PoolLv { get; init; } = "";

    public ulong ThinId { get; init; }

    public string Origin { get; init; } = "";

    /// <summary>Thin pool: its data and metadata LVs (without brackets) and its chunk size in bytes.</summary>
    public string DataLv { get; init; } = "";

    public string MetadataLv { get; init; } = "";

    public ulong ChunkSize { get; init; }

    public bool IsThin => SegmentTypes == "thin";

    /// <summary>Thin pools, VDO pools and the internal volumes of RAID, mirrors, caches and pools hold no file system of their own.</summary>
    public bool HoldsFileSystem => !Hidden && (Attributes.Length == 0 || Attributes[0] is not ('t' or 'T' or 'd' or 'D' or 'e' or 'i' or 'I' or 'l' or 'L' or 'C'));

    /// <summary>Needs a device-mapper target beyond linear/striped (those modules may still be loading in the VM).</summary>
    public bool NeedsExtraTargets => SegmentTypes.Split(',').Any(t => t is not ("linear" or "striped" or ""));
}

/// <summary>
/// LVM through the <c>lvm</c> tool, restricted to the devices we name (a filter that rejects everything else) and
/// never writing: reports run with <c>--readonly</c>, every command with <c>global/metadata_read_only</c> (repairs are
/// only simulated), no backup/archive files, and logical volumes are activated read-only
/// (<c>activation/read_only_volume_list</c>); no udev, nodes are made by lvm itself.
/// </summary>
internal sealed class Lvm(IReadOnlyCollection<string> devices, Action<string> log)
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);

    public string Config(IEnumerable<string>? readOnlyGroups = null, IEnumerable<string>? onlyVolumes = null)
    {
        var filter = string.Join(", ", devices.Select(d => $"\"a|^{EscapeRegex(d)}$|\"").Append("\"r|.*|\""));
        var config = new StringBuilder()
            .Append("devices { filter = [ ").Append(filter).Append(" ] global_filter = [ ").Append(filter).Append(" ] ")
            .Append("scan = [ \"/dev\" ] obtain_device_list_from_udev = 0 use_devicesfile = 0 } ")
            .Append("global { metadata_read_only = 1 } ")
            .Append("backup { backup = 0 archive = 0 } ")
            .Append("activation { udev_sync = 0 udev_rules = 0 monitoring = 0 verify_udev_operations = 0");
        // read_only_volume_list always has an entry, so nothing is ever activated writable by accident.
        var groups = (readOnlyGroups ?? []).ToList();
        config.Append(" read_only_volume_list = [ ")
            .Append(string.Join(", ", (groups.Count == 0 ? ["@restorefs-none"] : groups).Select(g => $"\"{g}\"")))
            .Append(" ]");
        if (onlyVolumes is not null)
        {
            // volume_list: only these (vg/lv) are activated; thin volumes are mapped by ThinVolumes instead.
            config.Append(" volume_list = [ ").Append(string.Join(", ", onlyVolumes.Select(v => $"\"{v}\""))).Append(" ]");
        }

        config.Append(" } log { level = 0 }");
        return config.ToString();
    }

    private static string EscapeRegex(string s)
    {
        var b = new StringBuilder();
        foreach (var c in s)
        {
            if ("\\^$.|?*+()[]{}".Contains(c, StringComparison.Ordinal))
            {
                b.Append('\\');
            }

            b.Append(c);
        }

        return b.ToString();
    }

    private ToolResult Run(params string[] args) => Tool.Run("lvm", args, Limit);

    private string? pvReport;
    private string? lvReport;

    public IReadOnlyList<LvmPhysicalVolume> PhysicalVolumes()
    {
        // pe_start and the segment fields below serve LinearSegments: each lvm run costs a good second under TCG.
        var r = Run("pvs", "--readonly", "--config", Config(), "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "pv_name,vg_name,pe_start");
        if (!r.Ok)
        {
            throw new IOException($"lvm pvs failed: {r.FirstLine}");
        }

        pvReport = r.Out;

        return Rows(r.Out, "pv").Select(row => new LvmPhysicalVolume(row.GetValueOrDefault("pv_name") ?? "", row.GetValueOrDefault("vg_name") ?? ""))
            .Where(pv => pv.Device.Length > 0).ToList();
    }

    public IReadOnlyList<LvmLogicalVolume> LogicalVolumes()
    {
        // -a: the internal volumes too (a thin pool's data and metadata LVs are read directly, see ThinVolumes).
        var r = Run("lvs", "-a", "--readonly", "--config", Config(), "--reportformat", "json", "--units", "b", "--nosuffix",
            "-o", "vg_name,lv_name,lv_size,lv_attr,lv_dm_path,segtype,seg_start,seg_size,stripes,seg_pe_ranges,vg_extent_size,"
                  + "pool_lv,thin_id,origin,data_lv,metadata_lv,chunk_size");
        if (!r.Ok)
        {
            throw new IOException($"lvm lvs failed: {r.FirstLine}");
        }

        lvReport = r.Out;

        // One row per segment: merge segment types per LV.
        var result = new List<LvmLogicalVolume>();
        foreach (var row in Rows(r.Out, "lv"))
        {
            var vg = row.GetValueOrDefault("vg_name") ?? "";
            var name = Unbracket(row.GetValueOrDefault("lv_name"));
            if (vg.Length == 0 || name.Length == 0)
            {
                continue;
            }

            _ = ulong.TryParse(row.GetValueOrDefault("lv_size"), NumberStyles.None, CultureInfo.InvariantCulture, out var size);
            var dm = row.GetValueOrDefault("lv_dm_path") ?? "";
            if (dm.Length == 0)
            {
                dm = "/dev/mapper/" + vg.Replace("-", "--", StringComparison.Ordinal) + "-" + name.Replace("-", "--", StringComparison.Ordinal);
            }

            _ = ulong.TryParse(row.GetValueOrDefault("thin_id"), NumberStyles.None, CultureInfo.InvariantCulture, out var thinId);
            _ = ulong.TryParse(row.GetValueOrDefault("chunk_size"), NumberStyles.None, CultureInfo.InvariantCulture, out var chunk);
            var lv = new LvmLogicalVolume(vg, name, size, row.GetValueOrDefault("lv_attr") ?? "", dm, row.GetValueOrDefault("segtype") ?? "")
            {
                Hidden = (row.GetValueOrDefault("lv_name") ?? "").StartsWith('['),
                PoolLv = Unbracket(row.GetValueOrDefault("pool_lv")),
                ThinId = thinId,
                Origin = Unbracket(row.GetValueOrDefault("origin")),
                DataLv = Unbracket(row.GetValueOrDefault("data_lv")),
                MetadataLv = Unbracket(row.GetValueOrDefault("metadata_lv")),
                ChunkSize = chunk,
            };
            var existing = result.FindIndex(x => x.VolumeGroup == vg && x.Name == name);
            if (existing >= 0)
            {
                result[existing] = result[existing] with { SegmentTypes = result[existing].SegmentTypes + "," + lv.SegmentTypes };
            }
            else
            {
                result.Add(lv);
            }
        }

        return result;
    }

    private static string Unbracket(string? name) =>
        name is ['[', .. var inner, ']'] ? inner : name ?? "";

    /// <summary>
    /// From the reports of <see cref="PhysicalVolumes"/> and <see cref="LogicalVolumes"/> (one row per segment):
    /// where each linear LV's bytes lie on its physical volumes: per LV, its segments in order as (LV byte offset, PV
    /// device, byte offset on the PV device, length). An LV with a segment of another type (or striped over several
    /// PVs) is left out: its bytes are not a plain run of PV bytes.
    /// </summary>
    public IReadOnlyDictionary<string, IReadOnlyList<(long Offset, string Device, long DeviceOffset, long Length)>> LinearSegments()
    {
        if (pvReport is null || lvReport is null)
        {
            throw new IOException("lvm segments are known only after PhysicalVolumes and LogicalVolumes");
        }

        var peStart = Rows(pvReport, "pv").Where(r => r.ContainsKey("pv_name"))
            .ToDictionary(r => r["pv_name"], r => long.TryParse(r.GetValueOrDefault("pe_start"), NumberStyles.None, CultureInfo.InvariantCulture, out var v) ? v : -1);
        var result = new Dictionary<string, List<(long, string, long, long)>?>(StringComparer.Ordinal);
        foreach (var row in Rows(lvReport, "lv"))
        {
            var key = (row.GetValueOrDefault("vg_name") ?? "") + "/" + Unbracket(row.GetValueOrDefault("lv_name"));
            if (result.TryGetValue(key, out var known) && known is null)
            {
                continue;
            }

            var list = known ?? [];
            result[key] = Segment(row, peStart) is { } segment ? [.. list, segment] : null;
        }

        return result.Where(kv => kv.Value is { Count: > 0 })
            .ToDictionary(kv => kv.Key, kv => (IReadOnlyList<(long, string, long, long)>)kv.Value!.OrderBy(x => x.Item1).ToList(), StringComparer.Ordinal);
    }

    private static (long, string, long, long)? Segment(Dictionary<string, string> row, Dictionary<string, long> peStart)
    {
        static long Number(Dictionary<string, string> row, string name) =>
            long.TryParse(row.GetValueOrDefault(name), NumberStyles.None, CultureInfo.InvariantCulture, out var v) ? v : -1;

        var type = row.GetValueOrDefault("segtype");
        var ranges = row.GetValueOrDefault("seg_pe_ranges") ?? "";
        if (!(type == "linear" || (type == "striped" && Number(row, "stripes") == 1)) || ranges.Contains(' ', StringComparison.Ordinal))
        {
            return null;
        }

        // "/dev/vda3:0-79": physical extents 0 to 79 (inclusive) of that PV.
        var colon = ranges.LastIndexOf(':');
        var dash = colon < 0 ? -1 : ranges.IndexOf('-', colon);
        if (colon <= 0 || dash < 0
            || !long.TryParse(ranges.AsSpan(colon + 1, dash - colon - 1), NumberStyles.None, CultureInfo.InvariantCulture, out var first)
            || !long.TryParse(ranges.AsSpan(dash + 1), NumberStyles.None, CultureInfo.InvariantCulture, out var last))
        {
            return null;
        }

        var device = ranges[..colon];
        var extent = Number(row, "vg_extent_size");
        var start = Number(row, "seg_start");
        var size = Number(row, "seg_size");
        if (!peStart.TryGetValue(device, out var pe) || pe < 0 || extent <= 0 || start < 0 || size <= 0 || (last - first + 1) * extent != size)
        {
            return null;
        }

        return (start, device, pe + first * extent, size);
    }

    /// <summary>Activates a volume group's logical volumes read-only and makes their nodes; the tool's complaint on failure.</summary>
    /// <param name="onlyVolumes">When given, only these logical volumes (vg/lv) are activated.</param>
    public ToolResult Activate(string vg, IReadOnlyCollection<string>? onlyVolumes = null)
    {
        var config = Config([vg], onlyVolumes);
        var r = Run("vgchange", "--config", config, "-ay", "-K", "--ignoremonitoring", "--noudevsync", vg);
        var nodes = Run("vgmknodes", "--config", config, vg);
        if (!nodes.Ok)
        {
            log($"lvm vgmknodes {vg}: {nodes.FirstLine}");
        }

        return r;
    }

    public ToolResult Deactivate(string fullName) => Run("lvchange", "--config", Config(), "-an", "--noudevsync", fullName);

    /// <summary>Whether the kernel has device-mapper (its misc device is registered once dm-mod is loaded).</summary>
    public static bool DeviceMapperAvailable()
    {
        try
        {
            return File.Exists("/proc/misc") && File.ReadLines("/proc/misc").Any(l => l.TrimEnd().EndsWith(" device-mapper", StringComparison.Ordinal));
        }
        catch (IOException)
        {
            return false;
        }
    }

    internal static List<Dictionary<string, string>> Rows(string json, string kind)
    {
        var list = new List<Dictionary<string, string>>();
        var start = json.IndexOf('{', StringComparison.Ordinal);
        if (start < 0)
        {
            return list;
        }

        using var doc = JsonDocument.Parse(json[start..]);
        if (!doc.RootElement.TryGetProperty("report", out var reports))
        {
            return list;
        }

        foreach (var report in reports.EnumerateArray())
        {
            if (!report.TryGetProperty(kind, out var rows))
            {
                continue;
            }

            foreach (var row in rows.EnumerateArray())
            {
                var d = new Dictionary<string, string>(StringComparer.Ordinal);
                foreach (var p in row.EnumerateObject())
                {
                    d[p.Name] = p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString() ?? "" : p.Value.ToString();
                }

                list.Add(d);
            }
        }

        return list;
    }
}
