using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using RestoreFs.Datastore;
using RestoreFs.Fuse.Protocol;
using RestoreFs.RestoreApi;

namespace RestoreFs.Fuzz;

/// <summary>
/// Writes the seed corpus (<c>dotnet run --project tests/RestoreFs.Fuzz -- --make-corpus DIR</c>) from what the
/// project itself produces: a snapshot written by <see cref="BackupWriter"/>, blobs, indexes, manifests and key files
/// from the writers, FUSE and NBD requests as the kernel and nbd clients send them, and daemon answers written by
/// the daemon's own JSON and HTTP writers.
/// </summary>
public static class CorpusMaker
{
    public static void Make(string root)
    {
        void Put(string target, string name, byte[] bytes)
        {
            Directory.CreateDirectory(Path.Combine(root, target));
            File.WriteAllBytes(Path.Combine(root, target, name), bytes);
        }

        // A real snapshot: one small image, encrypted and not.
        foreach (var (key, tag) in new[] { ((CryptConfig?)null, "plain"), (Targets.Key, "enc") })
        {
            var store = Directory.CreateTempSubdirectory("restorefs-corpus-").FullName;
            try
            {
                var image = new byte[3 << 20];
                for (var i = 0; i < 1 << 20; i++)
                {
                    image[i] = (byte)(i * 7 / 4096); // 1 MiB of compressible data (small chunk files), then zeros
                }
                using (var writer = BackupWriter.Create(store, new BackupGroup(BackupNamespace.Root, "vm", "100"), DateTimeOffset.FromUnixTimeSeconds(1700000000), key))
                {
                    writer.AddImage("drive-scsi0.img", new MemoryStream(image), image.Length);
                    writer.AddBlob("qemu-server.conf.blob", "memory: 512\n"u8);
                    writer.Finish();
                }

                var snapshot = Directory.GetDirectories(Path.Combine(store, "vm", "100")).Single();
                Put("fixed-index", $"snapshot-{tag}.fidx", File.ReadAllBytes(Path.Combine(snapshot, "drive-scsi0.img.fidx")));
                var manifestBlob = File.ReadAllBytes(Path.Combine(snapshot, "index.json.blob"));
                Put("blob", $"manifest-{tag}.blob", manifestBlob);
                Put("manifest", $"snapshot-{tag}.json", DataBlob.Decode(manifestBlob, null, "index.json.blob"));
                Put("blob", $"config-{tag}.blob", File.ReadAllBytes(Path.Combine(snapshot, "qemu-server.conf.blob")));
                var chunk = Directory.EnumerateFiles(Path.Combine(store, ".chunks"), "*", SearchOption.AllDirectories)
                    .OrderBy(f => new FileInfo(f).Length).ThenBy(f => f, StringComparer.Ordinal).First();
                Put("blob", $"chunk-{tag}.blob", File.ReadAllBytes(chunk));
            }
            finally
            {
                Directory.Delete(store, recursive: true);
            }
        }

        var text = "hello restorefs hello restorefs hello restorefs\n"u8.ToArray();
        Put("blob", "plain.blob", DataBlob.Encode(text, null, compress: false));
        Put("blob", "zstd.blob", DataBlob.Encode(text, null, compress: true));
        Put("blob", "encrypted.blob", DataBlob.Encode(text, Targets.Key, compress: false));
        Put("blob", "encrypted-zstd.blob", DataBlob.Encode(text, Targets.Key, compress: true));
        Put("blob", "empty.blob", DataBlob.Encode([], null, compress: false));

        var digests = Enumerable.Range(0, 3).Select(i => SHA256.HashData([(byte)i])).ToList();
        Put("fixed-index", "three-chunks.fidx", FixedIndex.Build(4096 * 2 + 100, 4096, digests, DateTimeOffset.FromUnixTimeSeconds(1700000000)));
        Put("fixed-index", "empty.fidx", FixedIndex.Build(0, 4096, [], DateTimeOffset.FromUnixTimeSeconds(1700000000)));

        Put("dynamic-index", "three-chunks.didx", DynamicIndexBytes([100, 5000, 5001], digests));
        Put("dynamic-index", "empty.didx", DynamicIndexBytes([], []));

        var files = new List<ManifestFile>
        {
            new("drive-scsi0.img.fidx", CryptMode.None, 3 << 20, Convert.ToHexStringLower(SHA256.HashData("x"u8))),
            new("qemu-server.conf.blob", CryptMode.None, 12, Convert.ToHexStringLower(SHA256.HashData("y"u8))),
        };
        Put("manifest", "unsigned.json", Manifest.Build("vm", "100", 1700000000, files, null));
        Put("manifest", "signed.json", Manifest.Build("vm", "100", 1700000000,
            files.Select(f => f with { CryptMode = CryptMode.Encrypt }), Targets.Key));

        Put("keyfile", "plain.key", Encoding.UTF8.GetBytes(KeyFile.Create(Targets.RawKey, KeyDerivation.None, null, "a hint")));
        Put("keyfile", "pbkdf2.key", Encoding.UTF8.GetBytes(KeyFile.Create(Targets.RawKey, KeyDerivation.Pbkdf2, Targets.Passphrase)));
        Put("keyfile", "scrypt.key", Encoding.UTF8.GetBytes(KeyFile.Create(Targets.RawKey, KeyDerivation.Scrypt, Targets.Passphrase)));

        MakeFuse(Put);
        MakeNbd(Put);
        MakeApi(Put);
    }

    private static byte[] DynamicIndexBytes(long[] ends, List<byte[]> digests)
    {
        var body = new byte[ends.Length * 40];
        for (var i = 0; i < ends.Length; i++)
        {
            BinaryPrimitives.WriteInt64LittleEndian(body.AsSpan(i * 40), ends[i]);
            digests[i].CopyTo(body.AsSpan(i * 40 + 8));
        }

        var bytes = new byte[DynamicIndex.HeaderSize + body.Length];
        DynamicIndex.Magic.CopyTo(bytes, 0);
        new Guid("0b1d6a9e-1c52-4a8e-9a43-3f5b3c2d1e0f").TryWriteBytes(bytes.AsSpan(8));
        BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan(24), 1700000000);
        SHA256.HashData(body).CopyTo(bytes, 32);
        body.CopyTo(bytes, DynamicIndex.HeaderSize);
        return bytes;
    }

    /// <summary>A kernel request: header (len, opcode, unique, nodeid, uid, gid, pid, padding) and argument.</summary>
    public static byte[] FuseRequest(FuseOpcode op, ulong node, ReadOnlySpan<byte> arg, uint uid = 0)
    {
        var b = new byte[FuseConstants.InHeaderSize + arg.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(b, (uint)b.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), (uint)op);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(8), 1);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(16), node);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(24), uid);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(28), uid);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(32), 77);
        arg.CopyTo(b.AsSpan(FuseConstants.InHeaderSize));
        return b;
    }

    private static void MakeFuse(Action<string, string, byte[]> put)
    {
        byte[] Arg(FuseOpcode op, Action<byte[]>? fill = null)
        {
            var a = new byte[Math.Max(0, Requests.FixedLength(op))];
            fill?.Invoke(a);
            return a;
        }

        var requests = new (string Name, byte[] Bytes)[]
        {
            ("getattr", FuseRequest(FuseOpcode.GetAttr, 1, Arg(FuseOpcode.GetAttr))),
            ("lookup", FuseRequest(FuseOpcode.Lookup, 1, "hello\0"u8)),
            ("lookup-dir", FuseRequest(FuseOpcode.Lookup, 1, "dir\0"u8)),
            ("open", FuseRequest(FuseOpcode.Open, 2, Arg(FuseOpcode.Open))),
            ("read", FuseRequest(FuseOpcode.Read, 2, Arg(FuseOpcode.Read, a => BinaryPrimitives.WriteUInt32LittleEndian(a.AsSpan(16), 4096)))),
            ("release", FuseRequest(FuseOpcode.Release, 2, Arg(FuseOpcode.Release))),
            ("opendir", FuseRequest(FuseOpcode.OpenDir, 1, Arg(FuseOpcode.OpenDir))),
            ("readdir", FuseRequest(FuseOpcode.ReadDir, 1, Arg(FuseOpcode.ReadDir, a => BinaryPrimitives.WriteUInt32LittleEndian(a.AsSpan(16), 4096)))),
            ("readdirplus", FuseRequest(FuseOpcode.ReadDirPlus, 1, Arg(FuseOpcode.ReadDirPlus, a => BinaryPrimitives.WriteUInt32LittleEndian(a.AsSpan(16), 4096)))),
            ("releasedir", FuseRequest(FuseOpcode.ReleaseDir, 1, Arg(FuseOpcode.ReleaseDir))),
            ("getxattr", FuseRequest(FuseOpcode.GetXattr, 1, [0, 1, 0, 0, 0, 0, 0, 0, .. "user.x\0"u8])),
            ("listxattr", FuseRequest(FuseOpcode.ListXattr, 1, [0, 1, 0, 0, 0, 0, 0, 0])),
            ("access", FuseRequest(FuseOpcode.Access, 1, [4, 0, 0, 0, 0, 0, 0, 0])),
            ("lseek", FuseRequest(FuseOpcode.Lseek, 2, Arg(FuseOpcode.Lseek, a => a[16] = 3))),
            ("statfs", FuseRequest(FuseOpcode.StatFs, 1, [])),
            ("flush", FuseRequest(FuseOpcode.Flush, 2, Arg(FuseOpcode.Flush))),
            ("readlink", FuseRequest(FuseOpcode.ReadLink, 2, [])),
            ("forget", FuseRequest(FuseOpcode.Forget, 2, [1, 0, 0, 0, 0, 0, 0, 0])),
            ("batchforget", FuseRequest(FuseOpcode.BatchForget, 0, [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])),
            ("interrupt", FuseRequest(FuseOpcode.Interrupt, 0, [5, 0, 0, 0, 0, 0, 0, 0])),
            ("write", FuseRequest(FuseOpcode.Write, 2, new byte[44])),
            ("init", FuseRequest(FuseOpcode.Init, 0, [7, 0, 0, 0, 39, 0, 0, 0, 0, 0, 2, 0, 0xff, 0xff, 0xff, 0x33, 0, 0, 0, 0, 0, 0, 0, 0, .. new byte[40]])),
        };
        foreach (var (name, bytes) in requests)
        {
            put("fuse", name + ".req", bytes);
        }
    }

    private static void MakeNbd(Action<string, string, byte[]> put)
    {
        static byte[] Option(uint option, ReadOnlySpan<byte> data)
        {
            var b = new byte[16 + data.Length];
            BinaryPrimitives.WriteUInt64BigEndian(b, 0x49484156454F5054);
            BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(8), option);
            BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(12), (uint)data.Length);
            data.CopyTo(b.AsSpan(16));
            return b;
        }

        static byte[] Name(string name, params ushort[] infos)
        {
            var b = new byte[4 + name.Length + 2 + 2 * infos.Length];
            BinaryPrimitives.WriteUInt32BigEndian(b, (uint)name.Length);
            Encoding.ASCII.GetBytes(name).CopyTo(b, 4);
            BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(4 + name.Length), (ushort)infos.Length);
            for (var i = 0; i < infos.Length; i++)
            {
                BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(6 + name.Length + 2 * i), infos[i]);
            }

            return b;
        }

        static byte[] Meta(string export, params string[] queries)
        {
            var list = new List<byte>();
            list.AddRange([.. BitConverter.GetBytes(BinaryPrimitives.ReverseEndianness((uint)export.Length))]);
            list.AddRange(Encoding.ASCII.GetBytes(export));
            list.AddRange(BitConverter.GetBytes(BinaryPrimitives.ReverseEndianness((uint)queries.Length)));
            foreach (var q in queries)
            {
                list.AddRange(BitConverter.GetBytes(BinaryPrimitives.ReverseEndianness((uint)q.Length)));
                list.AddRange(Encoding.ASCII.GetBytes(q));
            }

            return [.. list];
        }

        static byte[] Command(ushort type, ulong handle, ulong offset, uint length, ushort flags = 0)
        {
            var b = new byte[28];
            BinaryPrimitives.WriteUInt32BigEndian(b, 0x25609513);
            BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(4), flags);
            BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(6), type);
            BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(8), handle);
            BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(16), offset);
            BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(24), length);
            return b;
        }

        byte[] flags = [0, 0, 0, 3];
        byte[] read = Command(0, 1, 4096, 8192), status = Command(7, 2, 0, 2 << 20), disc = Command(2, 3, 0, 0);
        put("nbd", "go-read.bin", [.. flags, .. Option(7, Name("disk", 3, 0)), .. read, .. Command(4, 9, 0, 0) /* flush */, .. disc]);
        put("nbd", "structured-status.bin", [.. flags, .. Option(8, []), .. Option(10, Meta("disk", "base:allocation")),
            .. Option(7, Name("disk")), .. read, .. status, .. Command(0, 4, (3 << 20) - 10, 100) /* past the end */, .. disc]);
        put("nbd", "list-info-abort.bin", [.. flags, .. Option(3, []), .. Option(6, Name("other", 0, 1, 2, 3)),
            .. Option(9, Meta("disk", "base:")), .. Option(6, Name("missing")), .. Option(99, "x"u8), .. Option(2, [])]);
        put("nbd", "export-name.bin", [.. flags, .. Option(1, "disk"u8), .. read, .. Command(1, 5, 0, 512) /* write */, .. disc]);
        put("nbd", "starttls.bin", [.. flags, .. Option(5, []), .. Option(7, Name(""))]);
    }

    private static void MakeApi(Action<string, string, byte[]> put)
    {
        var entry = new ArchiveEntry("/drive-scsi0.img.fidx/part/1/etc/hostname"u8.ToArray(), "hostname"u8.ToArray(), EntryTypes.File, true,
            9, 1700000000, 0x81a4, 0, 0, null, null)
        {
            Content = "debian12\n"u8.ToArray(),
            Extents = [new FileExtent(0, 1 << 20, 4096)],
            Dev = new DeviceNumber(8, 1),
            Ino = 1234,
            NLink = 1,
            MTimeNs = 5,
            ATime = new Timestamp(1700000001, 7),
            Xattrs = [new Xattr("user.a"u8.ToArray(), "b"u8.ToArray()), new Xattr("security.x"u8.ToArray(), null, "too large")],
        };
        var link = new ArchiveEntry("/drive-scsi0.img.fidx/part/1/lib"u8.ToArray(), "lib"u8.ToArray(), EntryTypes.Symlink, true,
            null, null, 0xa1ff, 0, 0, "usr/lib"u8.ToArray(), null);
        var more = new ArchiveEntry("/x"u8.ToArray(), [], EntryTypes.More, true, null, null, 0, 0, 0, null, null) { Next = 42 };
        var status = new DaemonStatus(12, 600, [new DiskStatus("drive-scsi0.img.fidx", 3 << 20, ["part/1", "lvm/vg0/root"], null)],
            [new MountStatus("part/1", "ext4", "/mnt/1", null), new MountStatus("part/2", "xfs", "", "bad superblock")]);

        byte[] Json(Action<Utf8JsonWriter> write, bool wrap = true)
        {
            var buffer = new MemoryStream();
            using (var w = new Utf8JsonWriter(buffer))
            {
                if (wrap)
                {
                    w.WriteStartObject();
                    w.WritePropertyName("data");
                }

                write(w);
                if (wrap)
                {
                    w.WriteEndObject();
                }
            }

            return buffer.ToArray();
        }

        put("api-json", "entry.json", Json(w => ApiJson.WriteEntry(w, entry), wrap: false));
        put("api-json", "status.json", Json(w => ApiJson.WriteStatus(w, status), wrap: false));
        put("api-json", "status-answer.json", Json(w => ApiJson.WriteStatus(w, status)));
        put("api-json", "xattrs.json", Json(w => ApiJson.WriteXattrs(w, entry.Xattrs!)));
        put("api-json", "seek.json", Json(w => { w.WriteStartObject(); w.WriteNumber("offset", 4096); w.WriteEndObject(); }));
        var listing = Json(w =>
        {
            w.WriteStartArray();
            ApiJson.WriteEntry(w, entry);
            ApiJson.WriteEntry(w, link);
            ApiJson.WriteEntry(w, more);
            w.WriteEndArray();
        });
        put("listing", "list.json", listing);
        put("listing", "empty.json", "{\"data\":[]}"u8.ToArray());
        put("listing", "bare.json", Json(w => { w.WriteStartArray(); ApiJson.WriteEntry(w, link); w.WriteEndArray(); }, wrap: false));

        var request = Http.FormatRequest("/api2/json/list", [new("path", Convert.ToBase64String("/drive-scsi0.img.fidx"u8)), new("inline", "4096")], "PBS:ticket");
        put("http-request", "list.http", request);
        put("http-request", "two.http", [.. Http.FormatRequest("/api2/json/status", [], null), .. request]);
        put("http-request", "escaped.http", "GET /api2/json/read?path=L2E%2Bb%3D&offset=0&length=65536 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"u8.ToArray());

        var body = listing;
        put("http-response", "length.http", [.. Http.FormatResponseHead(200, "OK", "application/json", body.Length), .. body]);
        var chunked = new MemoryStream();
        chunked.Write(Http.FormatResponseHead(200, "OK", "application/json", null));
        var writer = new ChunkedWriteStream(chunked);
        writer.Write(body.AsSpan(0, body.Length / 2));
        writer.Write(body.AsSpan(body.Length / 2));
        writer.CompleteAsync(CancellationToken.None).GetAwaiter().GetResult();
        put("http-response", "chunked.http", chunked.ToArray());
        var error = "{\"errors\":\"no such file\"}"u8.ToArray();
        put("http-response", "error.http", [.. Http.FormatResponseHead(404, Http.ReasonOf(404), "application/json", error.Length), .. error]);

        static byte[] Frame(uint id, byte kind, ReadOnlySpan<byte> payload)
        {
            var b = new byte[MuxConnection.HeaderSize + payload.Length];
            MuxConnection.WriteHeader(b, id, kind, payload.Length);
            payload.CopyTo(b.AsSpan(MuxConnection.HeaderSize));
            return b;
        }

        byte[] hello = Frame(0, 0, [0, 0, 0, 0, 0, 0, 0x12, 0x34]);
        byte[] window = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(window, 65536);
        put("mux", "session.bin", [.. hello, .. Frame(1, 1, []), .. Frame(1, 2, request), .. Frame(1, 5, window), .. Frame(1, 3, []),
            .. Frame(3, 1, []), .. Frame(3, 4, [])]);
        put("mux", "rehello.bin", [.. hello, .. Frame(1, 1, []), .. Frame(1, 2, "GET /"u8), .. Frame(0, 0, [0, 0, 0, 0, 0, 0, 0x12, 0x35]), .. Frame(1, 2, "x"u8)]);
    }
}
