using System.Text;
using System.Text.Json;
using RestoreFs.RestoreApi;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>The issue-12 fields of an entry and the xattrs/seek answers, written and read back, and what a reader
/// refuses.</summary>
public sealed class ApiJsonFidelityTests
{
    private static byte[] Write(ArchiveEntry e)
    {
        using var memory = new MemoryStream();
        using (var w = new Utf8JsonWriter(memory))
        {
            ApiJson.WriteEntry(w, e);
        }

        return memory.ToArray();
    }

    [Fact]
    public void Every_stat_field_and_inline_xattrs_survive_a_round_trip()
    {
        var e = new ArchiveEntry("d/dev"u8.ToArray(), "dev"u8.ToArray(), EntryTypes.BlockDevice, true, 0, -5, 0x61B0, 1, 2, null, null)
        {
            MTimeNs = 999_999_999,
            ATime = new Timestamp(-1, 1),
            CTime = new Timestamp(1_700_000_000, 0),
            BTime = new Timestamp(1_600_000_000, 42),
            Dev = new DeviceNumber(259, 1_048_575),
            Ino = ulong.MaxValue,
            NLink = 7,
            Blocks = 8,
            RDev = new DeviceNumber(8, 16),
            Xattrs = [new Xattr([.. "user."u8, 0xff], [0, 1, 2]), new Xattr("user.big"u8.ToArray(), null, "too large"), new Xattr("user.empty"u8.ToArray(), [])],
        };
        var back = ApiJson.ReadEntry(Write(e));
        Assert.Equal((e.MTime, e.MTimeNs, e.ATime, e.CTime, e.BTime), (back.MTime, back.MTimeNs, back.ATime, back.CTime, back.BTime));
        Assert.Equal((e.Dev, e.Ino, e.NLink, e.Blocks, e.RDev, e.Mode), (back.Dev, back.Ino, back.NLink, back.Blocks, back.RDev, back.Mode));
        Assert.Equal(new Timestamp(-5, 999_999_999), back.MTimeStamp);
        Assert.Equal(3, back.Xattrs!.Count);
        Assert.Equal(e.Xattrs[0].Name, back.Xattrs[0].Name);
        Assert.Equal(e.Xattrs[0].Value, back.Xattrs[0].Value);
        Assert.Equal(("too large", (byte[]?)null), (back.Xattrs[1].Error, back.Xattrs[1].Value));
        Assert.Empty(back.Xattrs[2].Value!);

        // An entry without the new fields reads as before: nothing made up.
        var old = ApiJson.ReadEntry("""{"filepath":"YQ==","type":"f","leaf":true,"size":1,"mtime":2,"mode":33188,"uid":0,"gid":0}"""u8);
        Assert.Equal((null, null, null, null, null, null), ((object?)old.MTimeNs, (object?)old.Dev, (object?)old.Ino, (object?)old.NLink, (object?)old.ATime, old.Xattrs));
    }

    [Theory]
    [InlineData("""{"filepath":"YQ==","type":"f","mtime":1,"mtime_ns":1000000000}""")]
    [InlineData("""{"filepath":"YQ==","type":"f","dev":[1]}""")]
    [InlineData("""{"filepath":"YQ==","type":"f","dev":[1,2,3]}""")]
    [InlineData("""{"filepath":"YQ==","type":"f","rdev":[-1,2]}""")]
    [InlineData("""{"filepath":"YQ==","type":"f","xattrs":[{"value":"AA=="}]}""")]
    [InlineData("""{"filepath":"YQ==","type":"f","xattrs":[{"name":"dXNlci5h"}]}""")]
    [InlineData("""{"filepath":"YQ==","type":"f","xattrs":{"name":"dXNlci5h"}}""")]
    public void Malformed_new_fields_are_refused(string json)
    {
        Assert.ThrowsAny<Exception>(() => ApiJson.ReadEntry(Encoding.UTF8.GetBytes(json)));
    }

    [Fact]
    public void The_xattrs_and_seek_answers_read_back()
    {
        var list = ApiJson.ReadXattrsAnswer("""{"data":[{"name":"dXNlci5h","value":"AAE="},{"name":"dXNlci5i","error":"no"}]}"""u8);
        Assert.Equal(["user.a", "user.b"], list.Select(x => Encoding.UTF8.GetString(x.Name)));
        Assert.Equal(new byte[] { 0, 1 }, list[0].Value);
        Assert.Equal(-1, ApiJson.ReadSeekAnswer("""{"data":{"offset":-1}}"""u8));
        Assert.Equal(1L << 40, ApiJson.ReadSeekAnswer("""{"data":{"offset":1099511627776}}"""u8));
        Assert.ThrowsAny<Exception>(() => ApiJson.ReadSeekAnswer("""{"data":{"offset":-2}}"""u8));
    }
}
