using System.Text;
using System.Text.Json;
using RestoreFs.RestoreApi;

namespace RestoreFs.RestoreApi.Tests;

/// <summary>The JSON of <c>list</c> and <c>status</c>: PBS's field names, byte-exact names, incremental parsing.</summary>
public sealed class ApiJsonTests
{
    private static string Write(ArchiveEntry e)
    {
        using var memory = new MemoryStream();
        using (var w = new Utf8JsonWriter(memory))
        {
            ApiJson.WriteEntry(w, e);
        }

        return Encoding.UTF8.GetString(memory.ToArray());
    }

    [Fact]
    public void An_entry_is_written_with_the_pbs_fields_and_ours()
    {
        var entry = new ArchiveEntry("d/part/1/a"u8.ToArray(), "a"u8.ToArray(), 'f', true, 5, 1714557600, 0x81A4, 1000, 100, null, null);
        Assert.Equal(
            "{\"filepath\":\"ZC9wYXJ0LzEvYQ==\",\"text\":\"a\",\"type\":\"f\",\"leaf\":true,\"size\":5,\"mtime\":1714557600,"
            + "\"name\":\"YQ==\",\"mode\":33188,\"uid\":1000,\"gid\":100}",
            Write(entry));
        var link = new ArchiveEntry("l"u8.ToArray(), "l"u8.ToArray(), 'l', true, 4, 0, 0xA1FF, 0, 0, "/etc"u8.ToArray(), null);
        Assert.Contains("\"target\":\"L2V0Yw==\"", Write(link));
        var failed = new ArchiveEntry("d/part/2"u8.ToArray(), "2"u8.ToArray(), 'd', false, 8, null, 0x41ED, 0, 0, null, "no file system");
        var json = Write(failed);
        Assert.Contains("\"error\":\"no file system\"", json);
        Assert.DoesNotContain("mtime", json);
    }

    [Fact]
    public void Names_that_are_not_utf8_round_trip_and_text_is_their_lossy_form()
    {
        byte[] name = [.. "caf"u8, 0xE9, 0xFF, .. ".txt"u8];
        byte[] target = [.. "../"u8, 0x80, 0x00, 0x01];
        var entry = new ArchiveEntry([.. "d/raw/"u8, .. name], name, 'l', true, 6, -5, 0xA1FF, 4000000000, 3, target, "a \"quoted\" }{ error")
        {
            Content = [0, 1, 2, 255],
        };
        var json = Write(entry);
        using (var doc = JsonDocument.Parse(json))
        {
            Assert.Equal("caf\uFFFD\uFFFD.txt", doc.RootElement.GetProperty("text").GetString());
        }

        var back = ApiJson.ReadEntry(Encoding.UTF8.GetBytes(json));
        Assert.Equal(entry.FilePath, back.FilePath);
        Assert.Equal(name, back.Name);
        Assert.Equal(target, back.Target);
        Assert.Equal(entry.Content, back.Content);
        Assert.Equal((entry.Type, entry.Leaf, entry.Size, entry.MTime, entry.Mode, entry.Uid, entry.Gid, entry.Error),
            (back.Type, back.Leaf, back.Size, back.MTime, back.Mode, back.Uid, back.Gid, back.Error));
    }

    [Fact]
    public void A_pbs_entry_without_our_fields_reads_with_the_name_from_its_filepath()
    {
        var e = ApiJson.ReadEntry("{\"filepath\":\"ZHJpdmUtc2NzaTAuaW1nLmZpZHgvcGFydC8xL2V0Yw==\",\"text\":\"etc\",\"type\":\"d\",\"leaf\":false,\"unknown\":{\"x\":[1,2]}}"u8);
        Assert.Equal("drive-scsi0.img.fidx/part/1/etc", Encoding.UTF8.GetString(e.FilePath));
        Assert.Equal("etc", Encoding.UTF8.GetString(e.Name));
        Assert.Equal(('d', false, (ulong?)null), (e.Type, e.Leaf, e.Size));
    }

    [Fact]
    public async Task The_entry_reader_takes_one_object_at_a_time_whatever_the_strings_hold()
    {
        // Hand-written JSON with braces, brackets, escaped quotes and backslashes inside strings.
        var text = "{\"data\" : [\n {\"filepath\":\"YQ==\",\"text\":\"a}\\\"{[\",\"type\":\"f\",\"leaf\":true,\"error\":\"x\\\\\\\"}]\"},"
                   + "{\"filepath\":\"Yg==\",\"type\":\"d\",\"leaf\":false} ,\n"
                   + string.Join(",", Enumerable.Range(0, 2000).Select(i => $"{{\"filepath\":\"{Convert.ToBase64String(Encoding.UTF8.GetBytes($"n{i}"))}\",\"type\":\"f\",\"leaf\":true,\"size\":{i}}}"))
                   + "\n]}";
        var bytes = Encoding.UTF8.GetBytes(text);
        foreach (var step in new[] { 1, 13, 100_000 })
        {
            var entries = new List<ArchiveEntry>();
            await foreach (var e in new EntryStreamReader(new ChunkedStepStream(bytes, step)).ReadAllAsync(CancellationToken.None))
            {
                entries.Add(e);
            }

            Assert.Equal(2002, entries.Count);
            Assert.Equal("x\\\"}]", entries[0].Error);
            Assert.Equal("b", Encoding.UTF8.GetString(entries[1].Name));
            Assert.Equal(1999UL, entries[^1].Size);
        }

        await Assert.ThrowsAsync<IOException>(async () =>
        {
            await foreach (var _ in new EntryStreamReader(new MemoryStream(bytes[..(bytes.Length / 2)])).ReadAllAsync(CancellationToken.None))
            {
            }
        });
    }

    [Theory]
    [InlineData("{\"filepath\":null,\"type\":\"f\"}")]
    [InlineData("{\"name\":7,\"type\":\"f\"}")]
    [InlineData("{\"target\":\"%%%\",\"type\":\"l\"}")]
    [InlineData("{\"filepath\":\"L2E=\",\"type\":\"\"}")]
    public void Null_or_non_base64_names_and_an_empty_type_are_json_errors(string json)
    {
        // Found by the fuzzer (tests/RestoreFs.Fuzz, target listing): "filepath":null was an ArgumentNullException.
        var e = Assert.Throws<JsonException>(() => ApiJson.ReadEntry(Encoding.UTF8.GetBytes(json)));
        Assert.Matches("'(filepath|name|target|type)'", e.Message);
    }

    [Fact]
    public void Status_round_trips()
    {
        var status = new DaemonStatus(12, 588,
            [new DiskStatus("drive-scsi0", 1UL << 33, ["drive-scsi0/part/1", "drive-scsi0/lvm/vg/root"], null), new DiskStatus("x", 0, [], "unreadable")],
            [new MountStatus("drive-scsi0/part/1", "ext4", "/mnt/dev/vda1", null)], new BootTimes(0.61, 0.8, 0.9, 1.0, -1, 1.25));
        using var memory = new MemoryStream();
        using (var w = new Utf8JsonWriter(memory))
        {
            w.WriteStartObject();
            w.WritePropertyName("data");
            ApiJson.WriteStatus(w, status);
            w.WriteEndObject();
        }

        var back = ApiJson.ReadStatus(memory.ToArray());
        Assert.Equal((12L, 588L), (back.Uptime, back.Timeout));
        Assert.Equal(["drive-scsi0/part/1", "drive-scsi0/lvm/vg/root"], back.Disks[0].Volumes);
        Assert.Equal("unreadable", back.Disks[1].Error);
        Assert.Equal(status.Mounts, back.Mounts);
        Assert.Equal(status.Boot, back.Boot);

        // A daemon outside a restore VM sends no boot steps.
        using var plain = new MemoryStream();
        using (var w = new Utf8JsonWriter(plain))
        {
            w.WriteStartObject();
            w.WritePropertyName("data");
            ApiJson.WriteStatus(w, status with { Boot = null });
            w.WriteEndObject();
        }

        Assert.DoesNotContain("\"boot\"", System.Text.Encoding.UTF8.GetString(plain.ToArray()), StringComparison.Ordinal);
        Assert.Null(ApiJson.ReadStatus(plain.ToArray()).Boot);
    }

    /// <summary>Gives at most <c>step</c> bytes per read.</summary>
    private sealed class ChunkedStepStream(byte[] data, int step) : MemoryStream(data)
    {
        public override int Read(byte[] buffer, int offset, int count) => base.Read(buffer, offset, Math.Min(count, step));

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
            base.ReadAsync(buffer[..Math.Min(buffer.Length, step)], cancellationToken);
    }
}
