using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// One test disk made by a script in scripts/ (into <c>disks/</c>, with the trees it holds in <c>disks/expected/</c>),
/// backed up with the CLI as <c>drive-scsi0</c> of one snapshot (or several disks, several snapshots) and mounted: real
/// FUSE mount, real restore VM.
/// </summary>
public abstract class DiskImageMountFixture : IDisposable
{
    /// <param name="script">The script that makes the disk: called with the disks directory and <paramref name="scriptArgs"/>.</param>
    /// <param name="image">The disk image's file name in the disks directory.</param>
    /// <param name="tools">Tools the script needs besides QEMU.</param>
    protected DiskImageMountFixture(string name, string[] tools, string script, string[] scriptArgs, TimeSpan scriptLimit, string image,
        string group, string time)
        : this(name, tools, script, scriptArgs, scriptLimit, [(group, time, [image])])
    {
    }

    /// <param name="snapshots">Snapshots to back up before the mount, the first one the fixture's own: each with its disk
    /// images (file names in the disks directory), backed up as <c>drive-scsi0</c>, <c>drive-scsi1</c>, … in that order.</param>
    /// <param name="guestPassphrase">Given: the mount gets it for every LUKS volume (<c>--guest-passphrase-file</c>).</param>
    protected DiskImageMountFixture(string name, string[] tools, string script, string[] scriptArgs, TimeSpan scriptLimit,
        IReadOnlyList<(string Group, string Time, string[] Images)> snapshots, string? guestPassphrase = null)
    {
        Requires.Root();
        foreach (var tool in tools.Prepend("qemu-system-x86_64"))
        {
            Requires.Tool(tool);
        }

        Dir = new TempDirectory(name);
        Group = snapshots[0].Group;
        Time = snapshots[0].Time;
        Directory.CreateDirectory(Runtime);
        ProcessRunner.Run("bash", [RepoPaths.Script(script), Dir.Combine("disks"), .. scriptArgs], scriptLimit).EnsureSuccess(script);
        foreach (var (group, time, images) in snapshots)
        {
            Cli(TimeSpan.FromMinutes(3), ["backup", "--store", Store, "--group", group, "--time", time,
                .. images.Select((image, i) => $"drive-scsi{i}={Dir.Combine("disks", image)}")]);
        }

        Directory.CreateDirectory(MountPoint);
        var keys = Dir.Combine("guest-keys");
        if (guestPassphrase is not null)
        {
            File.WriteAllText(keys, guestPassphrase + "\n");
        }

        Cli(TimeSpan.FromSeconds(60), ["mount", .. guestPassphrase is null ? Array.Empty<string>() : ["--guest-passphrase-file", keys], Store, MountPoint]);
    }

    public TempDirectory Dir { get; }

    public string Group { get; }

    public string Time { get; }

    public string Store => Dir.Combine("store");

    public string MountPoint => Dir.Combine("mnt");

    public string Runtime => Dir.Combine("run");

    public string Expected => Dir.Combine("disks", "expected");

    /// <summary>The disk in files/.</summary>
    public string Disk => Path.Combine(MountPoint, "snapshots", Group, Time, "files", "drive-scsi0.img");

    public Dictionary<string, string> Env => new() { ["XDG_RUNTIME_DIR"] = Runtime };

    /// <summary>Copies a volume of files/ with <c>rsync -a</c> (lost+found left out) and checks that the copy equals
    /// <c>expected/<paramref name="expected"/></c>: nothing for rsync to change (contents by checksum, modes, times,
    /// owners, symbolic links); the root's own time is the file system's. A volume with an .error file fails with its
    /// text. Returns the copy.</summary>
    public string AssertVolumeEquals(string volume, string expected, string label)
    {
        Assert.False(File.Exists(volume + ".error"), $"{label}: {(File.Exists(volume + ".error") ? File.ReadAllText(volume + ".error") : "")}");
        var copy = Dir.Combine("out-" + label.Replace('/', '+'));
        Rsync("-a", "--exclude=/lost+found", volume + "/", copy + "/");
        var changes = string.Join('\n', Rsync("-ai", "--dry-run", "--checksum", "--delete", copy + "/", Path.Combine(Expected, expected) + "/").StdOut
            .Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.EndsWith(" ./", StringComparison.Ordinal)));
        Assert.True(changes.Length == 0, $"{label} differs:\n{changes}");
        return copy;
    }

    private static ProcessResult Rsync(params string[] args) =>
        ProcessRunner.Run(Requires.Tool("rsync"), args, TimeSpan.FromMinutes(3)).EnsureSuccess("rsync " + string.Join(' ', args));

    public ProcessResult Cli(TimeSpan timeout, params string[] args) =>
        ProcessRunner.Run(RepoPaths.Cli, args, timeout, environment: Env).EnsureSuccess("restorefs " + string.Join(' ', args));

    public void Dispose()
    {
        if (MountTable.IsMounted(MountPoint))
        {
            ProcessRunner.Run(RepoPaths.Cli, ["vm", "stop", "--all"], TimeSpan.FromSeconds(60), environment: Env);
            ProcessRunner.Run(RepoPaths.Cli, ["umount", MountPoint], TimeSpan.FromSeconds(60), environment: Env);
            MountTable.LazyUnmount(MountPoint);
        }

        Dir.Dispose();
        GC.SuppressFinalize(this);
    }
}
