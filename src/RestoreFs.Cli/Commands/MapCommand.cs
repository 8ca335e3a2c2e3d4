using System.CommandLine;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using RestoreFs.Cli.Hosting;
using RestoreFs.Cli.Logging;
using RestoreFs.Datastore;
using RestoreFs.Tree;

namespace RestoreFs.Cli.Commands;

/// <summary>
/// <c>restorefs map STORE SNAPSHOT ARCHIVE</c>: the image as a read-only block device (kernel NBD where it exists, else
/// a loop device over the image in a private RestoreFs mount), kept until <c>restorefs unmap DEVICE</c>.
/// </summary>
public static class MapCommand
{
    private static string MapsDirectory => Path.Combine(RuntimePaths.Directory, "maps");

    public static IEnumerable<Command> Create()
    {
        var store = new Argument<string?>("STORE") { Description = "The datastore directory.", Arity = ArgumentArity.ZeroOrOne };
        var snapshot = new Argument<string?>("SNAPSHOT") { Description = "e.g. vm/100/2024-05-01T10:00:00Z", Arity = ArgumentArity.ZeroOrOne };
        var archive = new Argument<string?>("ARCHIVE") { Description = "e.g. drive-scsi0.img", Arity = ArgumentArity.ZeroOrOne };
        var foreground = new Option<bool>("--foreground") { Description = "Stay attached until Ctrl-C." };
        var list = new Option<bool>("--list") { Description = "Show what is mapped." };
        var map = new Command("map", "Map a disk image of a backup to a read-only block device.") { store, snapshot, archive, foreground, list };
        KeyOptions.AddTo(map);
        KeyOptions.AddNamespace(map);
        map.SetAction(parse => CliErrors.Run(() =>
        {
            if (parse.GetValue(list))
            {
                return List();
            }

            if (parse.GetValue(store) is not { } s || parse.GetValue(snapshot) is not { } snap || parse.GetValue(archive) is not { } arch)
            {
                throw new ArgumentException("map needs STORE SNAPSHOT ARCHIVE (or --list)");
            }

            var storePath = Path.GetFullPath(s);
            var ns = KeyOptions.GetNamespace(parse);
            var key = KeyOptions.LoadKey(parse);
            // Check the snapshot and archive before going to the background, so mistakes are reported at once.
            var reader = DatastoreReader.Open(storePath);
            var info = reader.GetSnapshot(ns, snap);
            var fileName = DatastoreReader.ArchiveFileName(arch);
            reader.OpenFixedIndex(info, fileName, key);
            if (!parse.GetValue(foreground) && !Daemon.IsChild)
            {
                var args = new List<string> { "map", storePath, info.Name, fileName, "--foreground" };
                if (ns.Path.Length > 0)
                {
                    args.AddRange(["--ns", ns.Path]);
                }

                args.AddRange(KeyOptions.ForwardArguments(parse));
                return Daemon.RunParent(args, TimeSpan.FromMinutes(2));
            }

            Daemon.DetachSession();
            return Serve(storePath, info, fileName, key).GetAwaiter().GetResult();
        }));

        var device = new Argument<string>("DEVICE") { Description = "The mapped device, e.g. /dev/loop3." };
        var unmap = new Command("unmap", "Release a device mapped with 'restorefs map'.") { device };
        unmap.SetAction(parse => CliErrors.Run(() => Unmap(parse.GetValue(device)!)));
        return [map, unmap];
    }

    private static async Task<int> Serve(string storePath, SnapshotInfo snapshot, string archive, CryptConfig? key)
    {
        var id = Guid.NewGuid().ToString("N")[..12];
        var mountPoint = Path.Combine(MapsDirectory, id);
        Directory.CreateDirectory(mountPoint);
        var options = new TreeOptions
        {
            Key = key,
            Uid = NativeMethods.GetEuid(),
            Gid = NativeMethods.GetEgid(),
            RuntimeDirectory = RuntimePaths.Directory,
            StorePath = storePath,
            MountPoint = mountPoint,
        };
        var tree = await MountedTree.MountAsync(storePath, mountPoint, options, LogSetup.Factory).ConfigureAwait(false);
        var stateFile = string.Empty;
        try
        {
            var state = new SnapshotState(tree.Context, snapshot);
            var image = SnapshotDirectory.ImageName(archive);
            var directory = new SnapshotDirectory(tree.Context, state);
            var attached = await tree.Context.Exports.AttachAsync(state, archive, directory.ImagePathInMount(image)).ConfigureAwait(false);
            stateFile = Path.Combine(MapsDirectory, Path.GetFileName(attached.DevicePath) + ".json");
            var record = new JsonObject
            {
                ["pid"] = Environment.ProcessId,
                ["start"] = PidFile.StartTimeOf(Environment.ProcessId),
                ["device"] = attached.DevicePath,
                ["kind"] = attached.Kind,
                ["store"] = storePath,
                ["snapshot"] = snapshot.Name,
                ["archive"] = archive,
                ["partitions"] = new JsonArray(attached.Partitions.Select(p => (JsonNode)$"{p.Number}={p.DevicePath}").ToArray()),
            };
            await File.WriteAllTextAsync(stateFile, record.ToJsonString()).ConfigureAwait(false);
            Console.Out.WriteLine(attached.DevicePath);
            foreach (var p in attached.Partitions)
            {
                Console.Out.WriteLine($"{attached.DevicePath} partition {p.Number}: {p.DevicePath}");
            }

            Daemon.SignalReady(Path.Combine(MapsDirectory, Path.GetFileName(attached.DevicePath) + ".log"));
            var stop = new TaskCompletionSource();
            using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.TrySetResult(); });
            using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.TrySetResult(); });
            await Task.WhenAny(stop.Task, tree.Completion).ConfigureAwait(false);
            return 0;
        }
        finally
        {
            await tree.DisposeAsync().ConfigureAwait(false);
            if (stateFile.Length > 0)
            {
                File.Delete(stateFile);
            }

            try
            {
                Directory.Delete(mountPoint);
            }
            catch (IOException)
            {
            }
        }
    }

    private static IEnumerable<JsonObject> Records()
    {
        if (!Directory.Exists(MapsDirectory))
        {
            yield break;
        }

        foreach (var file in Directory.EnumerateFiles(MapsDirectory, "*.json"))
        {
            JsonObject? record = null;
            try
            {
                record = JsonNode.Parse(File.ReadAllText(file))?.AsObject();
            }
            catch (JsonException)
            {
            }

            if (record is not null)
            {
                yield return record;
            }
        }
    }

    private static int List()
    {
        var any = false;
        foreach (var r in Records())
        {
            any = true;
            var alive = IsServer(r);
            Console.Out.WriteLine($"{r["device"]}\t{r["snapshot"]}/{r["archive"]}\t({r["kind"]}, pid {r["pid"]}{(alive ? string.Empty : ", DEAD")})");
        }

        if (!any)
        {
            Console.Out.WriteLine("nothing is mapped");
        }

        return 0;
    }

    /// <summary>
    /// Whether the record's pid is still the process that wrote it (same start time): a pid reused by another process
    /// after the server died is never signalled. Records without a start time are trusted to nobody.
    /// </summary>
    private static bool IsServer(JsonObject record) =>
        record["pid"] is { } pid && record["start"] is { } start &&
        PidFile.StartTimeOf((int)pid) is var now && now != 0 && now == (ulong)start;

    private static int Unmap(string device)
    {
        var full = device.StartsWith('/') ? device : "/dev/" + device;
        var record = Records().FirstOrDefault(r => (string?)r["device"] == full)
            ?? throw new ArgumentException($"{full} is not mapped by restorefs (see 'restorefs map --list')");
        var pid = (int)record["pid"]!;
        if (IsServer(record))
        {
            NativeMethods.Kill(pid, 2);
            var deadline = DateTime.UtcNow.AddSeconds(10);
            while (IsServer(record) && DateTime.UtcNow < deadline)
            {
                Thread.Sleep(100);
            }
        }

        var stateFile = Path.Combine(MapsDirectory, Path.GetFileName(full) + ".json");
        if (IsServer(record))
        {
            throw new InvalidOperationException($"the process serving {full} (pid {pid}) did not stop within 10 s");
        }

        if (File.Exists(stateFile))
        {
            // The server died without cleaning up: release the loop devices it left.
            foreach (var dev in new[] { full }.Concat(record["partitions"]?.AsArray().Select(p => ((string)p!).Split('=')[1]) ?? []))
            {
                System.Diagnostics.Process.Start("losetup", ["-d", dev])?.WaitForExit();
            }

            File.Delete(stateFile);
        }

        Console.Out.WriteLine($"unmapped {full}");
        return 0;
    }
}
