using System.Text;
using RestoreFs.Tree.Files;

namespace RestoreFs.Tree.Tests;

/// <summary>Where a files/ path's volume ends: the hard-link table and the file maps are per volume.</summary>
public sealed class LinkTableTests
{
    [Theory]
    [InlineData("disk.img/part/1/etc/passwd", "disk.img/part/1")]
    [InlineData("disk.img/lvm/vg0/root/etc", "disk.img/lvm/vg0/root")]
    [InlineData("disk.img/zfs/rpool/rpool+data+subvol-100-disk-0/etc/hosts", "disk.img/zfs/rpool/rpool+data+subvol-100-disk-0")]
    [InlineData("disk.img/zfs/tank/tank", "disk.img/zfs/tank/tank")]
    [InlineData("disk.img/raw/home", "disk.img/raw")]
    public void A_path_inside_a_volume_is_cut_at_the_volume(string path, string volume) =>
        Assert.Equal(volume.Length, LinkTable.VolumeLength(Encoding.UTF8.GetBytes(path)));

    [Theory]
    [InlineData("disk.img/zfs/tank")]
    [InlineData("disk.img/lvm/vg0")]
    [InlineData("disk.img/part")]
    [InlineData("disk.img")]
    public void A_path_above_the_volumes_has_none(string path) =>
        Assert.Equal(-1, LinkTable.VolumeLength(Encoding.UTF8.GetBytes(path)));
}
