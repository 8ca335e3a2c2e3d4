using System.Globalization;
using RestoreFs.RestoreDaemon.Native;

namespace RestoreFs.RestoreDaemon.Disks;

/// <summary>A pool <c>zpool import</c> found on the member devices it was shown.</summary>
/// <param name="Members">The member devices (of those shown) the pool's configuration names.</param>
internal sealed record ZfsPoolCandidate(string Name, string Id, string State, IReadOnlyList<string> Members, string Text);

/// <param name="Name">The full dataset name, e.g. <c>rpool/data/subvol-100-disk-0</c>.</param>
/// <param name="Type"><c>filesystem</c> or <c>volume</c>.</param>
/// <param name="Size">Bytes the dataset refers to (file system) or its volume size.</param>
/// <param name="KeyMissing">Encrypted with ZFS native encryption and its key is not loaded.</param>
/// <param name="NoDevice">A volume with <c>volmode=none</c>: ZFS makes no block device for it.</param>
internal sealed record ZfsDataset(string Name, string Type, ulong Size, bool KeyMissing, bool NoDevice = false);

/// <summary>
/// ZFS in the restore VM: the addon (modules and tools, packed apart from the initramfs' hot path) is unpacked and the
/// module loaded only when a pool member is found; pools are imported read-only, without a cache file and without
/// mounting anything (<c>-N</c>); datasets are mounted one by one by the catalog. The ARC is bounded so that a pool
/// fits the VM's memory.
/// </summary>
internal sealed class Zfs(Action<string> log)
{
    /// <summary>The ZFS addon inside the initramfs: unpacked to / on first use.</summary>
    public const string AddonArchive = "/zfs-addon.tar.gz";

    /// <summary>Where the member devices are shown to <c>zpool import</c> (symbolic links, so that it reads only those).</summary>
    public const string DeviceDirectory = "/run/restorefs-zfs";

    // The smallest ARC ZFS accepts (64 MiB: one transaction group must fit); the VM has 256 MiB in all.
    private const long ArcMax = 64L << 20, ArcMin = 32L << 20;

    private static readonly TimeSpan ToolLimit = TimeSpan.FromMinutes(2);

    /// <summary>Unpacks the addon and loads the module (once); null when ZFS is ready, else why not.</summary>
    public string? EnsureLoaded()
    {
        if (Directory.Exists("/sys/module/zfs") && File.Exists("/dev/zfs"))
        {
            return null;
        }

        if (!File.Exists(Tool.Resolve("zpool")) || !File.Exists(Tool.Resolve("zfs")))
        {
            if (!File.Exists(AddonArchive))
            {
                return "this restore image has no ZFS support (it was built without the ZFS addon)";
            }

            var unpacked = Tool.Run("tar", ["-x", "-z", "-f", AddonArchive, "-C", "/"], ToolLimit);
            if (!unpacked.Ok)
            {
                return $"cannot unpack the ZFS addon: {unpacked.FirstLine}";
            }

            log($"unpacked the ZFS addon ({new FileInfo(AddonArchive).Length} bytes)");
        }

        if (!Directory.Exists("/sys/module/zfs"))
        {
            var loaded = Tool.Run("modprobe", ["zfs", $"zfs_arc_max={ArcMax}", $"zfs_arc_min={ArcMin}"], ToolLimit);
            if (!loaded.Ok)
            {
                return $"cannot load the ZFS module: {loaded.FirstLine}";
            }
        }

        for (var i = 0; i < 500 && !File.Exists("/dev/zfs"); i++)
        {
            Thread.Sleep(10);
        }

        return File.Exists("/dev/zfs") ? null : "the ZFS module loaded, but /dev/zfs did not appear";
    }

    /// <summary>Shows the member devices to <c>zpool import</c> as links named <c>m0</c>, <c>m1</c>, …; link name → device.</summary>
    public static Dictionary<string, string> ShowDevices(IReadOnlyList<string> devices)
    {
        if (Directory.Exists(DeviceDirectory))
        {
            Directory.Delete(DeviceDirectory, recursive: true);
        }

        Directory.CreateDirectory(DeviceDirectory);
        var links = new Dictionary<string, string>(StringComparer.Ordinal);
        for (var i = 0; i < devices.Count; i++)
        {
            var name = "m" + i.ToString(CultureInfo.InvariantCulture);
            File.CreateSymbolicLink(Path.Combine(DeviceDirectory, name), devices[i]);
            links[name] = devices[i];
        }

        return links;
    }

    /// <summary>The pools <c>zpool import</c> finds on the shown devices (nothing is imported).</summary>
    public IReadOnlyList<ZfsPoolCandidate> FindPools(Dictionary<string, string> links)
    {
        var r = Tool.Run("zpool", ["import", "-d", DeviceDirectory], ToolLimit);
        if (!r.Ok && !r.Out.Contains("pool:", StringComparison.Ordinal))
        {
            throw new IOException($"zpool import (listing) failed: {r.FirstLine}");
        }

        return ParseImportListing(r.Out, links);
    }

    /// <summary>Parses <c>zpool import</c>'s listing: blocks starting with <c>pool:</c>, with <c>id:</c>, <c>state:</c> and a
    /// <c>config:</c> section naming the member devices.</summary>
    internal static IReadOnlyList<ZfsPoolCandidate> ParseImportListing(string text, IReadOnlyDictionary<string, string> links)
    {
        var blocks = new List<List<string>>();
        foreach (var line in text.Split('\n'))
        {
            if (line.TrimStart().StartsWith("pool: ", StringComparison.Ordinal))
            {
                blocks.Add([]);
            }

            blocks.LastOrDefault()?.Add(line.TrimEnd('\r'));
        }

        var result = new List<ZfsPoolCandidate>();
        foreach (var lines in blocks)
        {
            string Field(string key) =>
                lines.Select(l => l.Trim()).FirstOrDefault(l => l.StartsWith(key + ":", StringComparison.Ordinal))?[(key.Length + 1)..].Trim() ?? "";
            var members = new List<string>();
            var inConfig = false;
            foreach (var line in lines)
            {
                if (line.Trim() == "config:")
                {
                    inConfig = true;
                    continue;
                }

                if (inConfig && line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries) is [var token, ..]
                    && links.TryGetValue(Path.GetFileName(token), out var device) && !members.Contains(device))
                {
                    members.Add(device);
                }
            }

            var name = Field("pool");
            if (name.Length > 0)
            {
                result.Add(new ZfsPoolCandidate(name, Field("id"), Field("state"), members, string.Join('\n', lines).Trim()));
            }
        }

        return result;
    }

    /// <summary>Imports every pool on the shown devices read-only in one run (the common case: one pool, no name
    /// clash); the pools that did not come up are looked at one by one afterwards.</summary>
    public void ImportAll()
    {
        var r = Tool.Run("zpool", ["import", "-a", "-d", DeviceDirectory, "-N", "-f", "-o", "readonly=on", "-o", "cachefile=none"], ToolLimit);
        if (!r.Ok)
        {
            log($"zpool import -a: {r.FirstLine}");
        }
    }

    /// <summary>The imported pools with their members among the shown devices (<c>zpool status -P</c>).</summary>
    public IReadOnlyList<ZfsPoolCandidate> ImportedPools(Dictionary<string, string> links)
    {
        var r = Tool.Run("zpool", ["status", "-P"], ToolLimit);
        return r.Ok ? ParseImportListing(r.Out, links) : [];
    }

    /// <summary>Imports a pool read-only, by its id (under <paramref name="importName"/>), mounting nothing and keeping no
    /// cache file; <c>-f</c>: a backed-up pool was in use by its own system. Null when imported, else zpool's reason.</summary>
    public string? Import(ZfsPoolCandidate pool, string importName)
    {
        var args = new List<string> { "import", "-d", DeviceDirectory, "-N", "-f", "-o", "readonly=on", "-o", "cachefile=none", pool.Id };
        if (importName != pool.Name)
        {
            args.Add(importName);
        }

        var r = Tool.Run("zpool", args, ToolLimit);
        return r.Ok ? null : r.FirstLine;
    }

    /// <summary>The pool's file systems and volumes, parents first.</summary>
    public IReadOnlyList<ZfsDataset> Datasets(string pool)
    {
        var r = Tool.Run("zfs", ["list", "-H", "-p", "-r", "-t", "filesystem,volume", "-o", "name,type,referenced,volsize,keystatus,volmode", pool], ToolLimit);
        if (!r.Ok)
        {
            throw new IOException($"zfs list {pool}: {r.FirstLine}");
        }

        return ParseDatasets(r.Out);
    }

    internal static IReadOnlyList<ZfsDataset> ParseDatasets(string text)
    {
        var result = new List<ZfsDataset>();
        foreach (var line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var f = line.Split('\t');
            if (f.Length < 5)
            {
                continue;
            }

            var size = ulong.TryParse(f[1] == "volume" ? f[3] : f[2], NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : 0;
            result.Add(new ZfsDataset(f[0], f[1], size, f[4] == "unavailable", f.Length > 5 && f[1] == "volume" && f[5] == "none"));
        }

        return result.OrderBy(d => d.Name, StringComparer.Ordinal).ToList();
    }

    /// <summary>The block devices of ZFS volumes by dataset name (<c>/dev/zdN</c>, named by the BLKZNAME ioctl, as udev's
    /// zvol_id does), waiting up to <paramref name="limit"/> for <paramref name="count"/> of them: ZFS makes them
    /// asynchronously after the import.</summary>
    public Dictionary<string, string> VolumeDevices(int count, TimeSpan limit)
    {
        var found = new Dictionary<string, string>(StringComparer.Ordinal);
        var watch = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            found.Clear();
            foreach (var sys in Directory.Exists("/sys/block") ? Directory.GetDirectories("/sys/block", "zd*") : [])
            {
                var device = "/dev/" + Path.GetFileName(sys);
                if (File.Exists(device) && LibC.ZvolName(device) is { } name)
                {
                    found[name] = device;
                }
            }

            if (found.Count >= count || watch.Elapsed > limit)
            {
                return found;
            }

            Thread.Sleep(50);
        }
    }

    /// <summary>Exports a pool (read-only: nothing is written; it releases the member devices).</summary>
    public void Export(string pool)
    {
        var r = Tool.Run("zpool", ["export", "-f", pool], TimeSpan.FromSeconds(30));
        if (!r.Ok)
        {
            log($"zpool export {pool}: {r.FirstLine}");
        }
    }

    /// <summary>The name a dataset has under <c>zfs/&lt;pool&gt;/</c>: its full name with <c>/</c> as <c>+</c>, a
    /// character ZFS names never contain (<c>rpool/data/subvol-100-disk-0</c> → <c>rpool+data+subvol-100-disk-0</c>).</summary>
    public static string EntryName(string dataset) => dataset.Replace('/', '+');
}
