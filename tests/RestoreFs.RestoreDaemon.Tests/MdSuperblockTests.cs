using System.IO.Compression;
using RestoreFs.RestoreDaemon.Disks;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>
/// md superblocks as mdadm 4.2 wrote them (taken from the disks scripts/make-md-disk.sh makes, 4 KiB each, gzip and
/// base64 here): the fields the catalog groups, loads and names arrays by, and where each version lies in a member.
/// </summary>
public sealed class MdSuperblockTests
{
    // RAID1 "raid-guest:boot", metadata 1.0, member 0 of 2: its superblock at sector 65520 of a 32 MiB partition.
    private const string V10 = "H4sIAAAAAAACA/vjp72SkQEBem7t3PVo8eTm8Du6d7/U/a0oSsxM0U0vTS0usUrKzy9hQAcP5/Bng2iYGQ3/EXJMDMSDB1B9H/5jl38hqftl7fOizRvYaq/tKhPvZ2DgYPjx////l1D7YXb9h4JrvRN9G4iymRGuZyQChlEwCkbBKBgFo2AUjIJRMApGwSgYBSMCAAAJ/GABABAAAA==";

    // RAID1 "raid-guest:system", metadata 1.2, member 1 of 2 (at 4 KiB).
    private const string V12 = "H4sIAAAAAAACA/vjp72SkQEBjm05ElZ8dfbBr3+SE1++32BRlJiZoptemlpcYlVcWVySmsuACh7O4c8G0XAzfiBMY2IgAnCg6uNAk4aZ5papyqy8Ntn28Mw/0+bn8HwGqRQAir+C2g+z6z8UuB17M6+BGPuBNvwfwYBhFIyCUTAKRsEoGAWjYBSMglEwCkbBiAAA4/ZBKAAQAAA=";

    // RAID5 "raid-guest:data" of three members, metadata 1.2: the third member.
    private const string V12Raid5 = "H4sIAAAAAAACA/vjp72SkQEBHB6pbvA69NPKf+Oi69cPNTAVJWam6KaXphaXWKUkliQyoIOHc/izQTQrEDOBGBYQ8QYgZmYgAnBAaQtULgwwQWnLorU3nzy3vz5daNEWr+ZZZ0AqBYDib6H2w9T9hwKZPVZLG4ixn4ERqPf/iAUMo2AUjIJRMApGwSgYBaNgFIyCUTAKRgQAAMuTjCsAEAAA";

    // RAID1 with metadata 0.90 made as /dev/md3 (no name), member 0 of 2.
    private const string V090 = "H4sIAAAAAAACA/vjp72SAQiiGBBAYN5uvYdz+LMZgewD9gwMTAwQzAyVD3319dS8WxevCBisOchAIXgLtQdmBwyYxFfxM0LZMPo/EDCMAqqDf0DMAmWz0dluRqj9IlA222h0jIJRMApGwSgYBaNgFIyCUTAKRvtfNAEAjvF8cwAQAAA=";

    /// <summary>The version-1.0 superblock above (RAID1 "boot", 2 members, member 0).</summary>
    public static byte[] V10Block() => Block(V10);

    private static byte[] Block(string packed)
    {
        using var gz = new GZipStream(new MemoryStream(Convert.FromBase64String(packed)), CompressionMode.Decompress);
        var block = new MemoryStream();
        gz.CopyTo(block);
        Assert.Equal(4096, block.Length);
        return block.ToArray();
    }

    /// <summary>A member of <paramref name="length"/> bytes of pattern bytes (a file system's, say), the block at
    /// <paramref name="at"/>.</summary>
    private static MemoryStream Member(long length, long at, byte[] block)
    {
        var bytes = new byte[length];
        new Random(5).NextBytes(bytes);
        block.CopyTo(bytes, at);
        return new MemoryStream(bytes);
    }

    [Fact]
    public void Version_1_0_at_the_end_names_its_array_level_and_role_and_wins_over_the_file_system_at_the_start()
    {
        const long Length = 32 << 20;
        var (v10, _) = MdSuperblock.EndOffsets(Length);
        Assert.Equal(65520L * 512, v10);
        using var member = Member(Length, v10, Block(V10));
        // The array's own ext4 starts the member, as a RAID1 with its superblock at the end does.
        var ext4 = new byte[2048];
        ext4[0x438] = 0x53;
        ext4[0x439] = 0xEF;
        member.Position = 0;
        member.Write(ext4);
        Assert.Equal("ext2", FsProbe.Detect(member, 0, Length)); // a plain ext2 superblock: no feature flags
        Assert.Equal(FsProbe.RaidMember, FsProbe.DetectWithEnd(member, 0, Length));

        var sb = MdSuperblock.Read(member, 0, Length)!;
        Assert.Equal(("1.0", "boot", 1, 2, 0, "raid1", "boot"), (sb.Version, sb.Name, sb.Level, sb.RaidDisks, sb.Role, sb.Personality, sb.DisplayName));
        Assert.Equal(32, sb.Uuid.Length);
        Assert.True(sb.Events >= 1);
    }

    [Fact]
    public void The_same_block_elsewhere_is_not_a_superblock_it_names_another_sector()
    {
        const long Length = 32 << 20;
        using var member = Member(Length, (32 << 20) - 64 * 1024, Block(V10)); // at the 0.90 place: names sector 65520
        Assert.Null(MdSuperblock.Read(member, 0, Length));
        Assert.Null(FsProbe.DetectWithEnd(member, 0, Length));
    }

    [Fact]
    public void Version_1_2_at_4_KiB_and_members_of_a_raid5()
    {
        using var system = Member(64 << 20, 4096, Block(V12));
        var sb = MdSuperblock.Read(system, 0, 64 << 20)!;
        Assert.Equal(("1.2", "system", 1, 2, 1), (sb.Version, sb.Name, sb.Level, sb.RaidDisks, sb.Role));
        Assert.Equal(FsProbe.RaidMember, FsProbe.Detect(system, 0, 64 << 20));

        using var data = Member(8 << 20, 4096, Block(V12Raid5));
        var raid5 = MdSuperblock.Read(data, 0, 8 << 20)!;
        Assert.Equal((5, 3, 2, "raid456", "raid5"), (raid5.Level, raid5.RaidDisks, raid5.Role, raid5.Personality, raid5.LevelName));
        Assert.NotEqual(sb.Uuid, raid5.Uuid);
    }

    [Fact]
    public void Version_0_90_has_no_name_and_is_known_by_its_minor()
    {
        const long Length = 16 << 20;
        var (_, v090) = MdSuperblock.EndOffsets(Length);
        using var member = Member(Length, v090, Block(V090));
        var sb = MdSuperblock.Read(member, 0, Length)!;
        Assert.Equal(("0.90", "", 1, 2, 0, 3, "md3"), (sb.Version, sb.Name, sb.Level, sb.RaidDisks, sb.Role, sb.PreferredMinor, sb.DisplayName));
        Assert.Equal(FsProbe.RaidMember, FsProbe.DetectWithEnd(member, 0, Length));
    }

    [Theory]
    [InlineData("a:b/c d", "b_c_d")]
    [InlineData("..", null)]
    public void Names_from_the_disk_are_safe_path_components(string stored, string? shown)
    {
        var sb = new MdSuperblock("1.2", "0123456789abcdef0123456789abcdef", stored[(stored.IndexOf(':', StringComparison.Ordinal) + 1)..], 1, 2, 0, 1, -1);
        Assert.Equal(shown ?? "md-01234567", sb.DisplayName);
    }
}
