using System.CommandLine;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using RestoreFs.Cli.Hosting;
using RestoreFs.Cli.Logging;
using RestoreFs.Tree;
using Serilog;

namespace RestoreFs.Cli.Commands;

/// <summary><c>restorefs mount STORE MOUNTPOINT</c>: the datastore as a read-only filesystem.</summary>
public static class MountCommand
{
    public static Command Create()
    {
        var store = new Argument<string>("STORE") { Description = "The datastore directory (PBS layout), or s3://BUCKET/STORE." };
        var mountPoint = new Argument<string>("MOUNTPOINT") { Description = "An existing empty directory." };
        var foreground = new Option<bool>("--foreground", "-f") { Description = "Stay in the foreground until interrupted." };
        var noVm = new Option<bool>("--no-vm") { Description = "Do not offer files/ (no restore VM)." };
        var cacheMb = new Option<int>("--cache-mb")
        {
            Description = "Decoded-chunk cache of the mount (all images of all snapshots together), in MiB.",
            DefaultValueFactory = _ => 64,
        };
        var allowOther = new Option<bool>("--allow-other")
        {
            Description = "Let every local user read the mount (all backups, decrypted, and the files inside them). " +
                          "Without it only you (and root) can enter it. Non-root users need user_allow_other in /etc/fuse.conf.",
        };
        var maxVms = new Option<int>("--max-vms")
        {
            Description = "Restore VMs this mount runs at once (0: sized to the host's memory); the least recently used one stops first.",
            DefaultValueFactory = _ => 0,
        };
        var noReplay = new Option<bool>("--no-replay")
        {
            Description = "files/: mount guest file systems without journal replay (the state on disk, as without a crash recovery). " +
                          "By default the restore VM replays journals into a throwaway overlay; the backup is never written.",
        };
        var guestKeys = new Option<string?>("--guest-passphrase-file")
        {
            Description = "files/: passphrases of LUKS volumes in the guest disks, one per line: 'UUID=<uuid> <passphrase>', " +
                          "or a line with only a passphrase for every other volume.",
        };
        var pollUs = new Option<int>("--poll-us")
        {
            Description = "After answering a metadata request, look for the next one this many microseconds before sleeping, " +
                          "the other reader threads waiting their turn (0: never; every reader sleeps on the device). Saves " +
                          "wake-ups per request while a program walks or copies a tree.",
            DefaultValueFactory = _ => RestoreFs.Fuse.FuseMountOptions.DefaultPollMicroseconds,
        };
        pollUs.Validators.Add(result =>
        {
            if (result.GetValueOrDefault<int>() is < 0 or > 10_000)
            {
                result.AddError("--poll-us must be between 0 and 10000");
            }
        });
        var command = new Command("mount", "Mount a datastore read-only: snapshots/<group>/<time>/<disk>.img, .img.dev, <name>.pxar/, files/.")
        {
            store, mountPoint, foreground, noVm, cacheMb, allowOther, maxVms, noReplay, guestKeys, pollUs,
        };
        KeyOptions.AddTo(command);
        StoreOptions.AddTo(command);
        command.SetAction(parse =>
        {
            StoreOptions.Apply(parse);
            var storePath = StoreOptions.Normalize(parse.GetValue(store)!);
            var mountPath = Path.GetFullPath(parse.GetValue(mountPoint)!);
            if (storePath is null)
            {
                return 2;
            }

            // A stale mount of a dead server does not stat as a directory; the mount clears it.
            if (!Directory.Exists(mountPath) && !MountService.IsMounted(mountPath))
            {
                Console.Error.WriteLine($"restorefs: mount point {mountPath} does not exist");
                return 2;
            }

            var keyFile = parse.GetValue(guestKeys) is { } given ? Path.GetFullPath(given) : null;
            byte[]? keysForGuest = null;
            if (keyFile is not null)
            {
                try
                {
                    keysForGuest = GuestKeyFile.ForGuest(GuestKeyFile.Parse(File.ReadAllBytes(keyFile), keyFile));
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
                {
                    Console.Error.WriteLine($"restorefs: --guest-passphrase-file: {e.Message}");
                    return 2;
                }
            }

            if (!parse.GetValue(foreground) && !Daemon.IsChild)
            {
                // Ask for the passphrase here, on the terminal, before going to the background.
                var childArgs = new List<string> { "mount", storePath, mountPath, "--foreground", "--cache-mb", parse.GetValue(cacheMb).ToString() };
                if (parse.GetValue(noVm))
                {
                    childArgs.Add("--no-vm");
                }

                if (parse.GetValue(allowOther))
                {
                    childArgs.Add("--allow-other");
                }

                childArgs.AddRange(["--max-vms", parse.GetValue(maxVms).ToString(System.Globalization.CultureInfo.InvariantCulture)]);
                childArgs.AddRange(["--poll-us", parse.GetValue(pollUs).ToString(System.Globalization.CultureInfo.InvariantCulture)]);
                if (parse.GetValue(noReplay))
                {
                    childArgs.Add("--no-replay");
                }

                if (keyFile is not null)
                {
                    childArgs.AddRange(["--guest-passphrase-file", keyFile]); // the path only; the child reads the file
                }

                if (parse.GetValue(GlobalOptions.Verbose))
                {
                    childArgs.Add("--verbose");
                }

                // The passphrase goes to the child through a pipe, never through its environment or command line.
                var passphrase = KeyOptions.PassphraseForChild(parse);
                childArgs.AddRange(KeyOptions.ForwardArguments(parse));
                childArgs.AddRange(StoreOptions.ForwardArguments(parse));
                return Daemon.RunParent(childArgs, TimeSpan.FromMinutes(2), passphrase);
            }

            Daemon.DetachSession();
            var key = KeyOptions.LoadKey(parse);
            StartupWarmup.Start(storePath, key);
            Secrets.ScrubEnvironment(Secrets.PassphraseVariable);
            if (key is not null)
            {
                RestoreFs.Datastore.CryptConfig.LogCipherChoice(LogSetup.Factory.CreateLogger("restorefs"));
            }

            var tree = new TreeOptions
            {
                Key = key,
                Uid = NativeMethods.GetEuid(),
                Gid = NativeMethods.GetEgid(),
                ImageCacheBytes = Math.Max(8, parse.GetValue(cacheMb)) * 1024L * 1024L,
                RuntimeDirectory = RuntimePaths.Directory,
                StorePath = storePath,
                MountPoint = mountPath,
            };
            var fuse = new RestoreFs.Fuse.FuseMountOptions(FsName: "restorefs:" + Path.GetFileName(Path.TrimEndingDirectorySeparator(storePath)),
                AllowOther: parse.GetValue(allowOther))
            {
                TraceRequests = Environment.GetEnvironmentVariable("RESTOREFS_FUSE_TRACE") == "1",
                PollMicroseconds = parse.GetValue(pollUs),
            };
            FilesBackendFactory.MaxVms = parse.GetValue(maxVms);
            FilesBackendFactory.Replay = !parse.GetValue(noReplay);
            FilesBackendFactory.GuestKeys = keysForGuest;
            return Serve(new MountSettings(storePath, mountPath, tree, StartVms: !parse.GetValue(noVm), fuse));
        });
        return command;
    }

    private static int Serve(MountSettings settings)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Services.AddSerilog(Log.Logger, dispose: false);
        builder.Services.AddSingleton(settings);
        builder.Services.AddSingleton<ILoggerFactory>(LogSetup.Factory);
        builder.Services.AddSingleton<Func<TreeContext, IFilesBackend?>>(FilesBackendFactory.Create);
        builder.Services.AddHostedService<MountService>();
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(60));
        using var host = builder.Build();
        host.Run();
        return Environment.ExitCode;
    }
}
