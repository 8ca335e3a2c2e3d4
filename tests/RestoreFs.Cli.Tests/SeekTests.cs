using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>SEEK_DATA/SEEK_HOLE through the mount: answered for every file, so the kernel never turns lseek off.</summary>
[Collection(BackupCollection.Name)]
public sealed class SeekTests(BackupFixture backup) : IDisposable
{
    private readonly TempDirectory work = new("restorefs-seek");

    [Fact]
    public void Seek_data_on_a_config_file_then_seek_hole_on_a_sparse_image_still_finds_the_hole()
    {
        using var mount = CliMount.Start(backup.Store, work.Combine("mnt"), "--no-vm");
        var snap = BackupFixture.SnapshotDir(mount.MountPoint, "vm/100");
        var script = string.Join(';',
            "import os,sys",
            "c=os.open(sys.argv[1],os.O_RDONLY)",
            "print(os.lseek(c,0,os.SEEK_DATA), os.lseek(c,0,os.SEEK_HOLE), os.fstat(c).st_size)",
            "i=os.open(sys.argv[2],os.O_RDONLY)",
            "print(os.lseek(i,0,os.SEEK_HOLE), os.lseek(i,4194304,os.SEEK_DATA))");
        var output = ProcessRunner.Run("python3", ["-c", script, Path.Combine(snap, "qemu-server.conf"), Path.Combine(snap, "drive-scsi1.img")])
            .EnsureSuccess("lseek").StdOut.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var conf = output[0].Split(' ');
        Assert.Equal("0", conf[0]);
        Assert.Equal(conf[2], conf[1]); // a plain file is all data: the hole is its end
        Assert.Equal($"{BackupFixture.Chunk} {2 * BackupFixture.Chunk}", output[1]); // chunk 1 is the zero chunk
    }

    public void Dispose() => work.Dispose();
}
