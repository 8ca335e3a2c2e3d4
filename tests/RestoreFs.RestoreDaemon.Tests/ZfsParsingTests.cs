using RestoreFs.RestoreDaemon.Disks;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>What the daemon reads from zpool and zfs (OpenZFS 2.1's output), and the ZFS label probe. The pools
/// themselves are tested in a real VM (Cli.Tests/ZfsTests): the host has no ZFS.</summary>
public sealed class ZfsParsingTests
{
    private const string Listing = """
           pool: tank
             id: 15828351395296587297
          state: ONLINE
         status: The pool was last accessed by another system.
         action: The pool can be imported using its name or numeric identifier and
        	the '-f' flag.
           see: https://openzfs.github.io/openzfs-docs/msg/ZFS-8000-EY
         config:

        	tank        ONLINE
        	  m0        ONLINE

           pool: rpool
             id: 42
          state: DEGRADED
         status: One or more devices are missing from the system.
         config:

        	rpool                      DEGRADED
        	  mirror-0                 DEGRADED
        	    /run/restorefs-zfs/m1  ONLINE
        	    9876543210             UNAVAIL
        """;

    [Fact]
    public void The_import_listing_names_each_pool_its_id_state_and_members()
    {
        var links = new Dictionary<string, string> { ["m0"] = "/dev/vda1", ["m1"] = "/dev/vdb2" };
        var pools = Zfs.ParseImportListing(Listing.Replace("\r", "", StringComparison.Ordinal), links);
        Assert.Equal(2, pools.Count);
        Assert.Equal(("tank", "15828351395296587297", "ONLINE"), (pools[0].Name, pools[0].Id, pools[0].State));
        Assert.Equal(["/dev/vda1"], pools[0].Members);
        Assert.Equal(("rpool", "42", "DEGRADED"), (pools[1].Name, pools[1].Id, pools[1].State));
        Assert.Equal(["/dev/vdb2"], pools[1].Members);
        Assert.Contains("UNAVAIL", pools[1].Text, StringComparison.Ordinal);
        Assert.Empty(Zfs.ParseImportListing("no pools available to import\n", links));
    }

    [Fact]
    public void Datasets_are_read_parents_first_with_sizes_and_missing_keys()
    {
        var text = "tank\tfilesystem\t98304\t-\t-\t-\ntank/vol\tvolume\t12288\t33554432\t-\tdefault\n"
                   + "tank/home\tfilesystem\t2000000\t-\tunavailable\t-\ntank/home/alice\tfilesystem\t700000\t-\tavailable\t-\n"
                   + "tank/swap\tvolume\t4096\t1073741824\t-\tnone\n";
        var ds = Zfs.ParseDatasets(text);
        Assert.Equal(["tank", "tank/home", "tank/home/alice", "tank/swap", "tank/vol"], ds.Select(d => d.Name));
        Assert.True(ds[3].NoDevice);
        ds = ds.Where(d => d.Name != "tank/swap").ToList();
        Assert.All(ds, d => Assert.False(d.NoDevice));
        Assert.Equal(33554432UL, ds[3].Size);
        Assert.Equal("volume", ds[3].Type);
        Assert.True(ds[1].KeyMissing);
        Assert.False(ds[2].KeyMissing);
        Assert.Equal("tank+home+alice", Zfs.EntryName("tank/home/alice"));
    }

    [Fact]
    public void A_zfs_label_is_a_pool_member_and_a_near_miss_is_not()
    {
        var label = new byte[FsProbe.ProbeBytes];
        // The label's name-value list at 16 KiB, XDR: encoding 1, endianness 1, two reserved bytes, version 0, flags 1,
        // then the first pair (encoded and decoded size, name "version"), and later "pool_guid".
        byte[] head = [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0x28, 0, 0, 0, 0x30, 0, 0, 0, 7, .. "version"u8];
        head.CopyTo(label, 16 * 1024);
        "pool_guid"u8.CopyTo(label.AsSpan(16 * 1024 + 200));
        Assert.Equal(FsProbe.ZfsMember, FsProbe.Detect(label));
        Assert.True(FsProbe.IsContainer(FsProbe.ZfsMember));

        var noGuid = (byte[])label.Clone();
        noGuid.AsSpan(16 * 1024 + 200, 9).Clear();
        Assert.Null(FsProbe.Detect(noGuid));
        var otherEncoding = (byte[])label.Clone();
        otherEncoding[16 * 1024] = 0; // native encoding: not what labels use
        Assert.Null(FsProbe.Detect(otherEncoding));
    }
}
