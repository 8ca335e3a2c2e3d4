using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using RestoreFs.Datastore;

namespace RestoreFs.Cli.Commands;

/// <summary><c>restorefs snapshots STORE</c>: groups, snapshots and archives with sizes and encryption state.</summary>
public static class SnapshotsCommand
{
    public static Command Create()
    {
        var store = new Argument<string>("STORE") { Description = "The datastore directory, or s3://BUCKET/STORE." };
        var json = new Option<bool>("--json") { Description = "Machine-readable output." };
        var command = new Command("snapshots", "List the snapshots of a datastore.") { store, json };
        KeyOptions.AddNamespace(command);
        StoreOptions.AddTo(command);
        command.SetAction(parse => CliErrors.Run(() =>
        {
            StoreOptions.Apply(parse);
            var reader = DatastoreReader.Open(StoreOptions.Resolve(parse.GetValue(store)!));
            var only = parse.GetValue(KeyOptions.Namespace) is null ? null : KeyOptions.GetNamespace(parse);
            var namespaces = only is null ? reader.ListNamespaces() : [only];
            var list = new JsonArray();
            foreach (var ns in namespaces)
            {
                foreach (var group in reader.ListGroups(ns))
                {
                    foreach (var snap in reader.ListSnapshots(group))
                    {
                        Manifest manifest;
                        try
                        {
                            manifest = reader.ReadManifest(snap, null);
                        }
                        catch (DatastoreException e)
                        {
                            // A bad snapshot is shown with its error; it never hides the others.
                            list.Add((JsonNode)new JsonObject { ["ns"] = ns.Path, ["snapshot"] = snap.Name, ["error"] = e.Message });
                            continue;
                        }

                        list.Add((JsonNode)new JsonObject
                        {
                            ["ns"] = ns.Path,
                            ["snapshot"] = snap.Name,
                            ["backup-time"] = snap.Time.ToUnixTimeSeconds(),
                            ["encrypted"] = manifest.IsEncrypted,
                            ["key-fingerprint"] = manifest.KeyFingerprint,
                            ["files"] = new JsonArray(manifest.Files.Select(f => (JsonNode)new JsonObject
                            {
                                ["filename"] = f.FileName,
                                ["size"] = f.Size,
                                ["crypt-mode"] = f.CryptMode.ToString().ToLowerInvariant(),
                            }).ToArray()),
                        });
                    }
                }
            }

            // What the listing skipped (symlinks, FIFOs, names PBS would not write): one warning line each.
            foreach (var skipped in reader.Skipped)
            {
                Console.Error.WriteLine($"restorefs: warning: skipped {skipped}");
            }

            if (parse.GetValue(json))
            {
                Console.Out.WriteLine(list.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
                return 0;
            }

            if (list.Count == 0)
            {
                Console.Out.WriteLine("no snapshots");
                return 0;
            }

            foreach (var item in list)
            {
                var ns = (string)item!["ns"]!;
                var prefix = ns.Length > 0 ? $"[ns {ns}] " : string.Empty;
                if (item["error"] is { } error)
                {
                    Console.Out.WriteLine($"{prefix}{item["snapshot"]}  ERROR: {error}");
                    continue;
                }

                var encrypted = (bool)item["encrypted"]! ? $"  encrypted (key {((string?)item["key-fingerprint"])?[..23]})" : string.Empty;
                Console.Out.WriteLine($"{prefix}{item["snapshot"]}{encrypted}");
                foreach (var f in item["files"]!.AsArray())
                {
                    Console.Out.WriteLine($"    {(string)f!["filename"]!,-32} {FormatSize((ulong)f["size"]!),10}");
                }
            }

            return 0;
        }));
        return command;
    }

    private static string FormatSize(ulong bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        double value = bytes;
        var unit = 0;
        while (value >= 1024 && unit < units.Length - 1)
        {
            value /= 1024;
            unit++;
        }

        return unit == 0 ? $"{bytes} B" : $"{value:0.0} {units[unit]}";
    }
}
