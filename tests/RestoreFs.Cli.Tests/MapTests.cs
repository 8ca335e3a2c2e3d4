using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary><c>restorefs map</c> / <c>unmap</c> life cycle.</summary>
[Collection(BackupCollection.Name)]
public sealed class MapTests(BackupFixture backup) : IDisposable
{
    private readonly TempDirectory work = new("restorefs-map");

    [Fact]
    public void Map_prints_a_device_with_the_image_then_unmap_releases_it_and_a_second_unmap_fails()
    {
        var map = BackupFixture.Cli("map", backup.Store, "vm/100/" + BackupFixture.Time, "drive-scsi0.img");
        var device = map.StdOut.Split('\n')[0].Trim();
        Assert.Matches("^/dev/(loop|nbd)[0-9]+$", device);
        try
        {
            Assert.Contains(device, BackupFixture.Cli("map", "--list").StdOut);
            var sha = ProcessRunner.Run("sha256sum", [device], TimeSpan.FromMinutes(1)).EnsureSuccess("sha256sum of the device");
            Assert.StartsWith(BackupFixture.Sha256(backup.DiskImage), sha.StdOut);
        }
        finally
        {
            ProcessRunner.Run(RepoPaths.Cli, ["unmap", device], TimeSpan.FromSeconds(60)).EnsureSuccess("restorefs unmap");
        }

        var name = Path.GetFileName(device);
        Assert.True(MountTable.WaitUntil(() => !File.Exists($"/sys/block/{name}/loop/backing_file"), TimeSpan.FromSeconds(10)));
        var again = ProcessRunner.Run(RepoPaths.Cli, ["unmap", device]);
        Assert.NotEqual(0, again.ExitCode);
        Assert.Contains("not mapped", again.StdErr);
    }

    [Fact]
    public void Map_of_an_unknown_snapshot_or_archive_is_a_clear_error()
    {
        var snapshot = ProcessRunner.Run(RepoPaths.Cli, ["map", backup.Store, "vm/100/2020-01-01T00:00:00Z", "drive-scsi0.img"]);
        Assert.NotEqual(0, snapshot.ExitCode);
        Assert.Contains("not found", snapshot.StdErr);
        var archive = ProcessRunner.Run(RepoPaths.Cli, ["map", backup.Store, "vm/100/" + BackupFixture.Time, "drive-virtio9.img"]);
        Assert.NotEqual(0, archive.ExitCode);
        Assert.Contains("no archive drive-virtio9.img.fidx", archive.StdErr);
    }

    public void Dispose() => work.Dispose();
}
