using System.Globalization;
using System.Text;
using RestoreFs.RestoreApi;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>Volume entries (part/N, lvm/VG/LV, raw) carry the attributes of the volume's root directory, not made-up
/// ones; a volume that fails to mount carries none (<see cref="HandlerFixture"/>).</summary>
public sealed class VolumeRootTests(HandlerFixture f) : IClassFixture<HandlerFixture>
{
    private static string S(byte[] b) => Encoding.UTF8.GetString(b);

    private static string Stat(string path) => DiskTools.Run("stat", "-c", "%i %f %u %g %h %.9Y %.9Z", path).StdOut.Trim();

    private static string Of(ArchiveEntry e) => string.Join(' ', e.Ino, e.Mode.ToString("x", CultureInfo.InvariantCulture), e.Uid, e.Gid, e.NLink,
        $"{e.MTime}.{e.MTimeNs:D9}", $"{e.CTime?.Seconds}.{e.CTime?.Nanoseconds:D9}");

    [Fact]
    public async Task Partitions_logical_volumes_and_raw_carry_their_roots_stat_and_keep_the_volume_size()
    {
        await using var client = f.Harness.Client();
        var parts = await client.ListAllAsync(HandlerFixture.FullName + "/part");
        var p1 = parts.Single(e => S(e.Name) == "1");
        Assert.Equal(Stat(f.Tree), Of(p1));
        Assert.Equal(40UL << 20, p1.Size);
        Assert.NotNull(p1.Dev);
        var p2 = parts.Single(e => S(e.Name) == "2");
        Assert.NotNull(p2.Error);
        Assert.Equal(((ulong?)null, (uint?)null), (p2.Ino, p2.MTimeNs));

        var lv = Assert.Single(await client.ListAllAsync(HandlerFixture.FullName + "/lvm/vg0"));
        Assert.Equal(Stat(f.Small), Of(lv));
        Assert.Equal(320UL << 20, lv.Size);

        var raw = Assert.Single(await client.ListAllAsync("bare"));
        Assert.Equal((EntryTypes.Virtual, Stat(f.Tree)), (raw.Type, Of(raw)));
    }
}
