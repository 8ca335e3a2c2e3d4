using System.CommandLine;
using System.Diagnostics;
using System.Runtime.InteropServices;
using RestoreFs.Cli.Logging;
using RestoreFs.Datastore;

namespace RestoreFs.Cli.Commands;

/// <summary><c>restorefs backup</c>: writes raw images (files or block devices) into a datastore as one snapshot.</summary>
public static class BackupCommand
{
    public static Command Create()
    {
        var store = new Option<string>("--store") { Description = "Datastore directory (created if missing), or s3://BUCKET/STORE.", Required = true };
        var group = new Option<string>("--group") { Description = "Backup group, e.g. vm/100.", Required = true };
        var time = new Option<string?>("--time") { Description = "Backup time (RFC 3339); default now." };
        var config = new Option<string?>("--config") { Description = "A VM config file stored as qemu-server.conf.blob." };
        var images = new Argument<string[]>("NAME=PATH") { Description = "Images to back up, e.g. drive-scsi0=/dev/sdb, or directories as pxar archives, e.g. root.pxar=/srv/ct.", Arity = ArgumentArity.OneOrMore };
        var command = new Command("backup", "Back up raw disk images, and directories as pxar archives, into a datastore (PBS format).") { store, group, time, config, images };
        KeyOptions.AddTo(command);
        KeyOptions.AddNamespace(command);
        StoreOptions.AddTo(command);
        var splitArchive = PxarCli.SplitOption();
        command.Add(splitArchive);
        command.SetAction(parse => CliErrors.Run(() =>
        {
            var ns = KeyOptions.GetNamespace(parse);
            var backupGroup = BackupGroup.Parse(ns, parse.GetValue(group)!);
            var when = parse.GetValue(time) is { } t ? Names.ParseUserTime(t) : DateTimeOffset.UtcNow;
            var key = LoadOrNull(parse);
            var pairs = parse.GetValue(images)!.Select(ParsePair).ToList();
            var stopwatch = Stopwatch.StartNew();

            // SIGINT/SIGTERM stop the backup between chunks: the writer then removes its temporary files and the
            // unfinished snapshot. A second signal ends the process at once (the next backup sweeps what it left).
            using var stop = new CancellationTokenSource();
            PosixSignalContext? caught = null;
            void OnSignal(PosixSignalContext context)
            {
                if (!stop.IsCancellationRequested)
                {
                    caught = context;
                    context.Cancel = true;
                    stop.Cancel();
                }
            }

            using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
            using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
            StoreOptions.Apply(parse);
            var target = parse.GetValue(store)!;
            using var staging = StoreOpenOptions.IsRemote(target) ? new S3Staging(target) : null;
            using var writer = BackupWriter.Create(staging?.Directory ?? target, backupGroup, when, key, LogSetup.Factory,
                precreateChunkDirectories: staging is null);
            long total = 0;
            try
            {
                foreach (var (name, path) in pairs)
                {
                    stop.Token.ThrowIfCancellationRequested();
                    if (PxarCli.IsPxar(name))
                    {
                        continue; // written below
                    }

                    using var source = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1 << 20);
                    var size = source.CanSeek && source.Length > 0 ? source.Length : BlockDeviceSize(path);
                    using var bar = new ProgressBar(name, size);
                    writer.AddImage(name, source, size, bar, stop.Token);
                    total += size;
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                writer.Dispose();
                Console.Error.WriteLine($"restorefs: backup stopped by {caught?.Signal.ToString() ?? "a signal"}; the unfinished snapshot was removed");
                return caught?.Signal == PosixSignal.SIGTERM ? 143 : 130;
            }

            total += PxarCli.Backup(writer, pairs, parse.GetValue(splitArchive));
            if (parse.GetValue(config) is { } conf)
            {
                writer.AddBlob("qemu-server.conf", File.ReadAllBytes(conf));
            }

            var snapshot = writer.Finish();
            if (staging is not null)
            {
                var uploaded = staging.Upload(snapshot, stop.Token);
                Console.Error.WriteLine($"restorefs: uploaded to {target}: {uploaded.ChunksCreated} new chunks, {uploaded.ChunksPresent} already there, {uploaded.Files} files");
            }

            Console.Out.WriteLine($"{snapshot.Name}: {total} bytes in {stopwatch.Elapsed.TotalSeconds:0.0} s " +
                                  $"({total / 1e6 / Math.Max(0.001, stopwatch.Elapsed.TotalSeconds):0} MB/s){(key is null ? string.Empty : ", encrypted with key " + key.ShortFingerprint)}");
            return 0;
        }));
        return command;
    }

    /// <summary>
    /// A backup to S3 is written into a private local staging datastore first, then its chunks and files are put into the
    /// bucket in PBS's layout (chunks with conditional puts, the manifest last); the staging directory is removed.
    /// </summary>
    private sealed class S3Staging : IDisposable
    {
        private readonly RestoreFs.Datastore.S3.S3StoreLocation location;

        public S3Staging(string url)
        {
            location = RestoreFs.Datastore.S3.S3StoreLocation.Parse(url);
            Directory = System.IO.Directory.CreateTempSubdirectory("restorefs-s3-backup-").FullName;
        }

        public string Directory { get; }

        public RestoreFs.Datastore.S3.S3StoreUploader.Result Upload(SnapshotInfo snapshot, CancellationToken ct)
        {
            var options = StoreOpenOptions.Default;
            var s3 = RestoreFs.Datastore.S3.S3Options.Resolve(options.S3, profile: options.Profile);
            using var client = new RestoreFs.Datastore.S3.S3Client(s3, LogSetup.Factory);
            return RestoreFs.Datastore.S3.S3StoreUploader.UploadSnapshotAsync(client, location, Directory, snapshot.DirectoryPath, ct).GetAwaiter().GetResult();
        }

        public void Dispose()
        {
            try
            {
                System.IO.Directory.Delete(Directory, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }

    private static CryptConfig? LoadOrNull(ParseResult parse) => KeyOptions.LoadKey(parse);

    private static (string Name, string Path) ParsePair(string text)
    {
        var eq = text.IndexOf('=');
        if (eq <= 0 || eq == text.Length - 1)
        {
            throw new ArgumentException($"'{text}' is not NAME=PATH");
        }

        var name = text[..eq];
        if (!Names.SafeId.IsMatch(name))
        {
            throw new ArgumentException($"archive name '{name}' may only hold letters, digits, '.', '_' and '-'");
        }

        return (name, text[(eq + 1)..]);
    }

    private static long BlockDeviceSize(string path)
    {
        var name = Path.GetFileName(Path.GetFullPath(path));
        var sys = $"/sys/class/block/{name}/size";
        if (File.Exists(sys) && long.TryParse(File.ReadAllText(sys).Trim(), out var sectors))
        {
            return sectors * 512;
        }

        throw new ArgumentException($"cannot tell the size of {path}");
    }

    /// <summary>Backup progress through <see cref="CliProgress"/>, with the chunk counts.</summary>
    private sealed class ProgressBar(string name, long total) : IProgress<BackupProgress>, IDisposable
    {
        private readonly CliProgress progress = new(name, total);

        public void Report(BackupProgress value) => progress.Report(value.Done,
            (Terminal: $"{value.NewChunks} new, {value.ReusedChunks} reused", Log: $"{value.NewChunks} new chunks, {value.ReusedChunks} reused"));

        public void Dispose() => progress.Dispose();
    }
}
