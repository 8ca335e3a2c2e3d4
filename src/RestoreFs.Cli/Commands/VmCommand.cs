using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using RestoreFs.Cli.Hosting;
using RestoreFs.Cli.Logging;
using RestoreFs.RestoreVm;

namespace RestoreFs.Cli.Commands;

/// <summary><c>restorefs vm status [--json]</c> and <c>restorefs vm stop NAME|--all</c>: the user's restore VMs.</summary>
public static class VmCommand
{
    public static Command Create()
    {
        var json = new Option<bool>("--json") { Description = "Print JSON instead of a table." };
        var status = new Command("status", "Show the running restore VMs: snapshot, pid, channel, uptime, idle time left, disks, mounts.") { json };
        status.SetAction(parse => Status(parse.GetValue(json)));

        var name = new Argument<string?>("NAME") { Description = "The VM's snapshot name as `vm status` shows it.", Arity = ArgumentArity.ZeroOrOne };
        // Completion reads the map without locking or probing (PBS's read-only view).
        name.CompletionSources.Add(_ => Manager().Map.Read().Select(e => e.Name));
        var all = new Option<bool>("--all") { Description = "Stop every restore VM of this user." };
        var stop = new Command("stop", "Stop a restore VM (or all of them); the next access to files/ starts it again.") { name, all };
        stop.SetAction(parse => Stop(parse.GetValue(name), parse.GetValue(all)));

        return new Command("vm", "Restore VMs that serve files/ (one per snapshot).") { status, stop };
    }

    private static RestoreVmManager Manager() =>
        new(FilesBackendFactory.Options(FilesBackendFactory.ImageDirectory() ?? RuntimePaths.Directory), LogSetup.Factory);

    private static int Status(bool asJson)
    {
        var manager = Manager();
        var rows = manager.StatusAsync(CancellationToken.None).GetAwaiter().GetResult();
        var now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        if (asJson)
        {
            // Built as JSON nodes (no reflection over anonymous types: the CLI is compiled ahead of time).
            var data = new JsonArray(rows.Select(r => (JsonNode)new JsonObject
            {
                ["snapshot"] = r.Entry.Name,
                ["pid"] = r.Entry.Pid,
                ["channel"] = r.Entry.Channel,
                ["accelerator"] = r.Entry.Accelerator,
                ["uptime"] = r.Status?.Uptime ?? now - r.Entry.Started,
                ["idleLeft"] = r.Status?.Timeout,
                ["disks"] = new JsonArray(r.Entry.Disks.Select(d => (JsonNode?)JsonValue.Create(d)).ToArray()),
                ["mounts"] = new JsonArray((r.Status?.Mounts ?? []).Select(m => (JsonNode?)new JsonObject
                {
                    ["volume"] = m.Volume, ["fstype"] = m.FsType, ["error"] = m.Error,
                }).ToArray()),
                ["answering"] = r.Status is not null,
                // The guest's boot steps (seconds on its own clock; −1: not reached or not known).
                ["boot"] = r.Status?.Boot is { } b
                    ? new JsonObject
                    {
                        ["init"] = b.Init, ["modules"] = b.Modules, ["daemon"] = b.Daemon, ["listening"] = b.Listening, ["scanned"] = b.Scanned,
                    }
                    : null,
            }).ToArray());
            Console.WriteLine(data.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }

        if (rows.Count == 0)
        {
            Console.WriteLine("no restore VMs running");
            return 0;
        }

        Console.WriteLine($"{"SNAPSHOT",-50} {"PID",7} {"CHANNEL",-8} {"UPTIME",7} {"IDLE LEFT",9} {"DISKS",-20} MOUNTS");
        foreach (var (entry, st) in rows)
        {
            var channel = entry.Channel.Split(':')[0];
            var uptime = st?.Uptime ?? now - entry.Started;
            var idle = st is null ? "no answer" : $"{st.Timeout}s";
            var mounts = st is null ? "-" : string.Join(",", st.Mounts.Where(m => m.Error is null).Select(m => m.Volume));
            Console.WriteLine($"{entry.Name,-50} {entry.Pid,7} {channel,-8} {uptime,6}s {idle,9} {string.Join(",", entry.Disks),-20} {(mounts.Length == 0 ? "-" : mounts)}");
        }

        return 0;
    }

    private static int Stop(string? name, bool all)
    {
        if (name is null == !all)
        {
            Console.Error.WriteLine("restorefs: vm stop wants a NAME or --all");
            return 2;
        }

        var manager = Manager();
        if (all)
        {
            foreach (var n in manager.StopAllAsync(CancellationToken.None).GetAwaiter().GetResult())
            {
                Console.WriteLine($"stopped {n}");
            }

            return 0;
        }

        manager.CleanupAsync(CancellationToken.None).GetAwaiter().GetResult();
        if (manager.StopAsync(name!, CancellationToken.None).GetAwaiter().GetResult())
        {
            Console.WriteLine($"stopped {name}");
            return 0;
        }

        Console.Error.WriteLine($"restorefs: no restore VM named {name} (see restorefs vm status)");
        return 1;
    }
}
