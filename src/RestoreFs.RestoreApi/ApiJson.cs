using System.Text;
using System.Text.Json;

namespace RestoreFs.RestoreApi;

/// <summary>
/// JSON of the API, written and read by hand with Utf8JsonWriter/Utf8JsonReader (no reflection: the daemon is
/// NativeAOT). Byte strings travel as standard padded base64, as PBS does for <c>filepath</c>.
/// </summary>
public static class ApiJson
{
    public static void WriteEntry(Utf8JsonWriter w, ArchiveEntry e)
    {
        w.WriteStartObject();
        w.WriteString("filepath", Convert.ToBase64String(e.FilePath));
        w.WriteString("text", Encoding.UTF8.GetString(e.Name));
        w.WriteString("type", e.Type.ToString());
        w.WriteBoolean("leaf", e.Leaf);
        if (e.Size is { } size)
        {
            w.WriteNumber("size", size);
        }

        if (e.MTime is { } mtime)
        {
            w.WriteNumber("mtime", mtime);
        }

        w.WriteString("name", Convert.ToBase64String(e.Name));
        w.WriteNumber("mode", e.Mode);
        w.WriteNumber("uid", e.Uid);
        w.WriteNumber("gid", e.Gid);
        if (e.Target is not null)
        {
            w.WriteString("target", Convert.ToBase64String(e.Target));
        }

        if (e.Error is not null)
        {
            w.WriteString("error", e.Error);
        }

        if (e.Content is not null)
        {
            w.WriteBase64String("content", e.Content);
        }

        if (e.Extents is not null)
        {
            // [[logical, disk, length], ...]
            w.WriteStartArray("extents");
            foreach (var x in e.Extents)
            {
                w.WriteStartArray();
                w.WriteNumberValue(x.Logical);
                w.WriteNumberValue(x.Disk);
                w.WriteNumberValue(x.Length);
                w.WriteEndArray();
            }

            w.WriteEndArray();
        }

        if (e.MTimeNs is { } mtimeNs)
        {
            w.WriteNumber("mtime_ns", mtimeNs);
        }

        WriteTime(w, "atime", e.ATime);
        WriteTime(w, "ctime", e.CTime);
        WriteTime(w, "btime", e.BTime);
        WriteDevice(w, "dev", e.Dev);
        if (e.Ino is { } ino)
        {
            w.WriteNumber("ino", ino);
        }

        if (e.NLink is { } nlink)
        {
            w.WriteNumber("nlink", nlink);
        }

        if (e.Blocks is { } blocks)
        {
            w.WriteNumber("blocks", blocks);
        }

        WriteDevice(w, "rdev", e.RDev);
        if (e.Xattrs is not null)
        {
            w.WritePropertyName("xattrs");
            WriteXattrs(w, e.Xattrs);
        }

        if (e.Next is { } next)
        {
            w.WriteNumber("next", next);
        }

        w.WriteEndObject();
    }

    private static void WriteTime(Utf8JsonWriter w, string name, Timestamp? t)
    {
        if (t is { } v)
        {
            w.WriteNumber(name, v.Seconds);
            w.WriteNumber(name + "_ns", v.Nanoseconds);
        }
    }

    private static void WriteDevice(Utf8JsonWriter w, string name, DeviceNumber? d)
    {
        if (d is { } v)
        {
            w.WriteStartArray(name);
            w.WriteNumberValue(v.Major);
            w.WriteNumberValue(v.Minor);
            w.WriteEndArray();
        }
    }

    /// <summary><c>[{"name":B64,"value":B64} | {"name":B64,"error":text}, …]</c></summary>
    public static void WriteXattrs(Utf8JsonWriter w, IReadOnlyList<Xattr> xattrs)
    {
        w.WriteStartArray();
        foreach (var x in xattrs)
        {
            w.WriteStartObject();
            w.WriteBase64String("name", x.Name);
            if (x.Value is not null)
            {
                w.WriteBase64String("value", x.Value);
            }

            if (x.Error is not null)
            {
                w.WriteString("error", x.Error);
            }

            w.WriteEndObject();
        }

        w.WriteEndArray();
    }

    /// <summary>Reads an array written by <see cref="WriteXattrs"/>; the reader is on its StartArray.</summary>
    public static List<Xattr> ReadXattrs(ref Utf8JsonReader r)
    {
        if (r.TokenType != JsonTokenType.StartArray)
        {
            throw new JsonException("xattrs is not an array");
        }

        var list = new List<Xattr>();
        while (r.Read() && r.TokenType == JsonTokenType.StartObject)
        {
            byte[]? name = null, value = null;
            string? error = null;
            while (r.Read() && r.TokenType == JsonTokenType.PropertyName)
            {
                var property = r.GetString();
                r.Read();
                switch (property)
                {
                    case "name": name = r.GetBytesFromBase64(); break;
                    case "value": value = r.TokenType == JsonTokenType.Null ? null : r.GetBytesFromBase64(); break;
                    case "error": error = r.TokenType == JsonTokenType.Null ? null : r.GetString(); break;
                    default: r.Skip(); break;
                }
            }

            if (name is null || name.Length == 0)
            {
                throw new JsonException("an extended attribute without a name");
            }

            if (value is null && error is null)
            {
                throw new JsonException("an extended attribute with neither a value nor an error");
            }

            list.Add(new Xattr(name, value, error));
        }

        if (r.TokenType != JsonTokenType.EndArray)
        {
            throw new JsonException("xattrs is not an array of objects");
        }

        return list;
    }

    /// <summary>The answer of <c>xattrs</c>: <c>{"data":[…]}</c>.</summary>
    public static List<Xattr> ReadXattrsAnswer(ReadOnlySpan<byte> json)
    {
        var r = new Utf8JsonReader(json);
        Expect(ref r, JsonTokenType.StartObject);
        while (r.Read() && r.TokenType == JsonTokenType.PropertyName)
        {
            var property = r.GetString();
            r.Read();
            if (property == "data")
            {
                return ReadXattrs(ref r);
            }

            r.Skip();
        }

        throw new JsonException("the xattrs answer has no data");
    }

    /// <summary>The answer of <c>seek</c>: <c>{"data":{"offset":N}}</c>, N = -1 for ENXIO.</summary>
    public static long ReadSeekAnswer(ReadOnlySpan<byte> json)
    {
        using var doc = JsonDocument.Parse(json.ToArray());
        var offset = doc.RootElement.GetProperty("data").GetProperty("offset").GetInt64();
        if (offset < -1)
        {
            throw new JsonException($"seek answered a negative offset {offset}");
        }

        return offset;
    }

    private static DeviceNumber ReadDevice(ref Utf8JsonReader r)
    {
        if (r.TokenType != JsonTokenType.StartArray)
        {
            throw new JsonException("a device number is not [major, minor]");
        }

        r.Read();
        var major = r.GetUInt32();
        r.Read();
        var minor = r.GetUInt32();
        if (!r.Read() || r.TokenType != JsonTokenType.EndArray)
        {
            throw new JsonException("a device number is not [major, minor]");
        }

        return new DeviceNumber(major, minor);
    }

    private static uint ReadNanoseconds(ref Utf8JsonReader r)
    {
        var ns = r.GetUInt32();
        if (ns > 999_999_999)
        {
            throw new JsonException($"{ns} nanoseconds is not within a second");
        }

        return ns;
    }

    public static ArchiveEntry ReadEntry(ReadOnlySpan<byte> json)
    {
        var r = new Utf8JsonReader(json);
        Expect(ref r, JsonTokenType.StartObject);
        byte[] filePath = [], name = [];
        byte[]? target = null;
        var type = '?';
        var leaf = false;
        ulong? size = null;
        long? mtime = null;
        uint mode = 0, uid = 0, gid = 0;
        string? error = null;
        byte[]? content = null;
        List<FileExtent>? extents = null;
        uint? mtimeNs = null, nlink = null;
        long? atime = null, ctime = null, btime = null, next = null;
        uint atimeNs = 0, ctimeNs = 0, btimeNs = 0;
        DeviceNumber? dev = null, rdev = null;
        ulong? ino = null, blocks = null;
        List<Xattr>? xattrs = null;
        while (r.Read() && r.TokenType == JsonTokenType.PropertyName)
        {
            var property = r.GetString();
            r.Read();
            switch (property)
            {
                case "filepath": filePath = ReadBase64(ref r, "filepath"); break;
                case "name": name = ReadBase64(ref r, "name"); break;
                case "target": target = r.TokenType == JsonTokenType.Null ? null : ReadBase64(ref r, "target"); break;
                case "type": type = r.GetString() is { } t ? (t.Length > 0 ? t[0] : throw new JsonException("'type' is empty")) : '?'; break;
                case "leaf": leaf = r.GetBoolean(); break;
                case "size": size = r.TokenType == JsonTokenType.Null ? null : r.GetUInt64(); break;
                case "mtime": mtime = r.TokenType == JsonTokenType.Null ? null : r.GetInt64(); break;
                case "mode": mode = r.GetUInt32(); break;
                case "uid": uid = r.GetUInt32(); break;
                case "gid": gid = r.GetUInt32(); break;
                case "error": error = r.TokenType == JsonTokenType.Null ? null : r.GetString(); break;
                case "content": content = r.TokenType == JsonTokenType.Null ? null : r.GetBytesFromBase64(); break;
                case "extents": extents = r.TokenType == JsonTokenType.Null ? null : ReadExtents(ref r); break;
                case "mtime_ns": mtimeNs = ReadNanoseconds(ref r); break;
                case "atime": atime = r.GetInt64(); break;
                case "atime_ns": atimeNs = ReadNanoseconds(ref r); break;
                case "ctime": ctime = r.GetInt64(); break;
                case "ctime_ns": ctimeNs = ReadNanoseconds(ref r); break;
                case "btime": btime = r.GetInt64(); break;
                case "btime_ns": btimeNs = ReadNanoseconds(ref r); break;
                case "dev": dev = ReadDevice(ref r); break;
                case "rdev": rdev = ReadDevice(ref r); break;
                case "ino": ino = r.GetUInt64(); break;
                case "nlink": nlink = r.GetUInt32(); break;
                case "blocks": blocks = r.GetUInt64(); break;
                case "xattrs": xattrs = r.TokenType == JsonTokenType.Null ? null : ReadXattrs(ref r); break;
                case "next": next = r.GetInt64(); break;
                default: r.Skip(); break;
            }
        }

        if (name.Length == 0 && filePath.Length > 0)
        {
            var slash = Array.LastIndexOf(filePath, (byte)'/');
            name = filePath[(slash + 1)..];
        }

        return new ArchiveEntry(filePath, name, type, leaf, size, mtime, mode, uid, gid, target, error)
        {
            Content = content,
            Extents = extents,
            MTimeNs = mtimeNs,
            ATime = atime is { } a ? new Timestamp(a, atimeNs) : null,
            CTime = ctime is { } c ? new Timestamp(c, ctimeNs) : null,
            BTime = btime is { } b ? new Timestamp(b, btimeNs) : null,
            Dev = dev,
            RDev = rdev,
            Ino = ino,
            NLink = nlink,
            Blocks = blocks,
            Xattrs = xattrs,
            Next = next,
        };
    }

    private static List<FileExtent> ReadExtents(ref Utf8JsonReader r)
    {
        if (r.TokenType != JsonTokenType.StartArray)
        {
            throw new JsonException("extents is not an array");
        }

        var list = new List<FileExtent>();
        Span<long> v = stackalloc long[3];
        while (r.Read() && r.TokenType == JsonTokenType.StartArray)
        {
            for (var i = 0; i < 3; i++)
            {
                r.Read();
                v[i] = r.GetInt64();
                if (v[i] < 0)
                {
                    throw new JsonException($"negative number {v[i]} in an extent");
                }
            }

            if (!r.Read() || r.TokenType != JsonTokenType.EndArray)
            {
                throw new JsonException("an extent is not [logical, disk, length]");
            }

            list.Add(new FileExtent(v[0], v[1], v[2]));
        }

        if (r.TokenType != JsonTokenType.EndArray)
        {
            throw new JsonException("extents is not an array of [logical, disk, length]");
        }

        return list;
    }

    public static void WriteStatus(Utf8JsonWriter w, DaemonStatus s)
    {
        w.WriteStartObject();
        w.WriteNumber("uptime", s.Uptime);
        w.WriteNumber("timeout", s.Timeout);
        w.WriteStartArray("disks");
        foreach (var d in s.Disks)
        {
            w.WriteStartObject();
            w.WriteString("name", d.Name);
            w.WriteNumber("size", d.Size);
            w.WriteStartArray("volumes");
            foreach (var v in d.Volumes)
            {
                w.WriteStringValue(v);
            }

            w.WriteEndArray();
            if (d.Error is not null)
            {
                w.WriteString("error", d.Error);
            }

            w.WriteEndObject();
        }

        w.WriteEndArray();
        w.WriteStartArray("mounts");
        foreach (var m in s.Mounts)
        {
            w.WriteStartObject();
            w.WriteString("volume", m.Volume);
            w.WriteString("fstype", m.FsType);
            w.WriteString("mountpoint", m.MountPoint);
            if (m.Error is not null)
            {
                w.WriteString("error", m.Error);
            }

            w.WriteEndObject();
        }

        w.WriteEndArray();
        if (s.Boot is { } b)
        {
            w.WriteStartObject("boot");
            w.WriteNumber("init", b.Init);
            w.WriteNumber("modules", b.Modules);
            w.WriteNumber("daemon", b.Daemon);
            w.WriteNumber("listening", b.Listening);
            w.WriteNumber("scanned", b.Scanned);
            w.WriteNumber("now", b.Now);
            w.WriteEndObject();
        }

        w.WriteEndObject();
    }

    public static DaemonStatus ReadStatus(ReadOnlySpan<byte> json)
    {
        using var doc = JsonDocument.Parse(json.ToArray());
        var data = doc.RootElement.GetProperty("data");
        var disks = data.TryGetProperty("disks", out var ds)
            ? ds.EnumerateArray().Select(d => new DiskStatus(
                d.GetProperty("name").GetString() ?? "",
                d.GetProperty("size").GetUInt64(),
                d.GetProperty("volumes").EnumerateArray().Select(v => v.GetString() ?? "").ToList(),
                d.TryGetProperty("error", out var e) ? e.GetString() : null)).ToList()
            : [];
        var mounts = data.TryGetProperty("mounts", out var ms)
            ? ms.EnumerateArray().Select(m => new MountStatus(
                m.GetProperty("volume").GetString() ?? "",
                m.GetProperty("fstype").GetString() ?? "",
                m.GetProperty("mountpoint").GetString() ?? "",
                m.TryGetProperty("error", out var e) ? e.GetString() : null)).ToList()
            : [];
        BootTimes? boot = null;
        if (data.TryGetProperty("boot", out var b) && b.ValueKind == JsonValueKind.Object)
        {
            double Step(string name) => b.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : -1;
            boot = new BootTimes(Step("init"), Step("modules"), Step("daemon"), Step("listening"), Step("scanned"), Step("now"));
        }

        return new DaemonStatus(data.GetProperty("uptime").GetInt64(), data.GetProperty("timeout").GetInt64(), disks, mounts, boot);
    }

    /// <summary>A base64 string field; null, another token or bad base64 is a JsonException naming the field.</summary>
    private static byte[] ReadBase64(ref Utf8JsonReader r, string field) =>
        r.TokenType == JsonTokenType.String && r.TryGetBytesFromBase64(out var bytes)
            ? bytes
            : throw new JsonException($"'{field}' is not a base64 string ({r.TokenType})");

    private static void Expect(ref Utf8JsonReader r, JsonTokenType type)
    {
        if (!r.Read() || r.TokenType != type)
        {
            throw new InvalidDataException($"expected {type} in the restore daemon's JSON");
        }
    }
}

/// <summary>
/// Reads the entries of a streamed <c>{"data":[{…},{…}]}</c> answer one object at a time, so that a directory of
/// 100,000 entries is never held whole.
/// </summary>
public sealed class EntryStreamReader(Stream body)
{
    /// <summary>One entry (with inline content) may not need a larger buffer than this.</summary>
    public const int MaxEntryBytes = 64 << 20;

    private byte[] buffer = new byte[64 * 1024];
    private int start;
    private int end;
    private bool eof;
    private bool inArray;
    private bool finished;

    public async IAsyncEnumerable<ArchiveEntry> ReadAllAsync([System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct)
    {
        while (!finished)
        {
            var (entry, more) = TryNext();
            if (entry is not null)
            {
                yield return entry;
                continue;
            }

            if (!more)
            {
                yield break;
            }

            if (eof)
            {
                throw new IOException("the restore daemon's list answer is truncated");
            }

            await FillAsync(ct).ConfigureAwait(false);
        }
    }

    private async Task FillAsync(CancellationToken ct)
    {
        if (start > 0)
        {
            Buffer.BlockCopy(buffer, start, buffer, 0, end - start);
            end -= start;
            start = 0;
        }

        if (end == buffer.Length)
        {
            if (buffer.Length >= MaxEntryBytes)
            {
                throw new InvalidDataException($"an entry of the restore daemon's list answer is larger than {MaxEntryBytes} bytes");
            }

            Array.Resize(ref buffer, buffer.Length * 2);
        }

        var n = await body.ReadAsync(buffer.AsMemory(end), ct).ConfigureAwait(false);
        if (n == 0)
        {
            eof = true;
        }

        end += n;
    }

    /// <summary>An entry when a whole object is buffered; (null, true) when more bytes are needed; (null, false) at the end.</summary>
    private (ArchiveEntry? Entry, bool More) TryNext()
    {
        var span = buffer.AsSpan(start, end - start);
        var i = 0;
        if (!inArray)
        {
            // Skip to the '[' of "data" (the prefix is small and has no strings with brackets).
            var open = span.IndexOf((byte)'[');
            if (open < 0)
            {
                return (null, true);
            }

            start += open + 1;
            inArray = true;
            return TryNext();
        }

        while (i < span.Length && (span[i] is (byte)' ' or (byte)'\n' or (byte)'\r' or (byte)'\t' or (byte)','))
        {
            i++;
        }

        if (i == span.Length)
        {
            start += i;
            return (null, true);
        }

        if (span[i] == ']')
        {
            finished = true;
            return (null, false);
        }

        if (span[i] != '{')
        {
            throw new InvalidDataException("unexpected byte in the restore daemon's list answer");
        }

        var depth = 0;
        var inString = false;
        for (var j = i; j < span.Length; j++)
        {
            var b = span[j];
            if (inString)
            {
                if (b == '\\')
                {
                    j++;
                }
                else if (b == '"')
                {
                    inString = false;
                }

                continue;
            }

            if (b == '"')
            {
                inString = true;
            }
            else if (b == '{')
            {
                depth++;
            }
            else if (b == '}' && --depth == 0)
            {
                var entry = ApiJson.ReadEntry(span[i..(j + 1)]);
                start += j + 1;
                return (entry, true);
            }
        }

        start += i;
        return (null, true);
    }
}
