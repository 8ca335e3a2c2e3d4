using System.Diagnostics;
using System.Text;
using RestoreFs.Datastore;
using RestoreFs.TestSupport;

namespace RestoreFs.Datastore.Tests;

/// <summary>
/// A datastore written by a malicious machine: FIFOs, symlinks out of the store and to /dev/zero, huge or malformed
/// manifests, overflowing indexes, names with control characters, bad key files. Each case finishes in seconds with a
/// typed error naming the file, allocates little, and the good snapshot of the same store still lists and reads.
/// </summary>
[Collection(OpenModeCollection.Name)]
public sealed class HostileStoreTests : IDisposable
{
    private const int Chunk = BackupWriter.DefaultChunkSize;
    private static readonly DateTimeOffset T0 = DateTimeOffset.Parse("2026-01-02T03:04:05Z");
    private static readonly DateTimeOffset T1 = DateTimeOffset.Parse("2026-01-03T03:04:05Z");
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(10);
    private readonly TempDirectory dir = new("restorefs-hostile");
    private readonly byte[] good = DatastoreBuilder.Data(2 * Chunk + 77, 5);
    private readonly byte[] other = DatastoreBuilder.Data(Chunk + 5, 6);
    private readonly SnapshotInfo goodSnapshot;
    private readonly SnapshotInfo bad;

    public HostileStoreTests()
    {
        goodSnapshot = DatastoreBuilder.Write(Store, "vm/1", T0, new Dictionary<string, byte[]> { ["d"] = good },
            blobs: new Dictionary<string, byte[]> { ["qemu-server.conf"] = "memory: 512\n"u8.ToArray() });
        bad = DatastoreBuilder.Write(Store, "vm/2", T0, new Dictionary<string, byte[]> { ["d"] = other });
    }

    private string Store => dir.Combine("store");

    private string Outside => dir.Combine("outside");

    private DatastoreReader Reader => DatastoreReader.Open(Store);

    private string BadFile(string name) => Path.Combine(bad.DirectoryPath, name);

    public void Dispose() => dir.Dispose();

    /// <summary>Runs <paramref name="body"/> with a deadline, returns its result and the bytes it allocated.</summary>
    private static (T Result, long Allocated) Bounded<T>(Func<T> body)
    {
        var task = Task.Run(() =>
        {
            var before = GC.GetAllocatedBytesForCurrentThread();
            var result = body();
            return (result, GC.GetAllocatedBytesForCurrentThread() - before);
        });
        Assert.True(task.Wait(Deadline), $"did not finish within {Deadline}");
        return task.Result;
    }

    private static T FailsBounded<T>(Action body, long maxAllocated = 64L << 20)
        where T : Exception
    {
        var (e, allocated) = Bounded(() => Record.Exception(body));
        var typed = Assert.IsAssignableFrom<T>(e);
        Assert.True(allocated < maxAllocated, $"allocated {allocated} bytes");
        return typed;
    }

    /// <summary>The good snapshot still lists (exactly once) and reads byte-exact, its blob too.</summary>
    private void GoodSnapshotStillWorks()
    {
        var (snapshots, _) = Bounded(() =>
        {
            var reader = Reader;
            return reader.ListNamespaces().SelectMany(reader.ListGroups).SelectMany(reader.ListSnapshots).Select(s => s.Name).ToList();
        });
        Assert.Single(snapshots, s => s == goodSnapshot.Name);
        var reader = Reader;
        var snap = reader.GetSnapshot(BackupNamespace.Root, goodSnapshot.Name);
        Assert.Equal(good, DatastoreBuilder.ReadImage(reader, snap, "d"));
        Assert.Equal("memory: 512\n"u8.ToArray(), reader.ReadBlob(snap, "qemu-server.conf.blob", null));
    }

    private static void MakeFifo(string path)
    {
        File.Delete(path);
        ProcessRunner.Run("mkfifo", [path]).EnsureSuccess("mkfifo");
    }

    private void Replace(string path, Action<string> make)
    {
        if (File.Exists(path))
        {
            File.Delete(path);
        }

        make(path);
    }

    private void WriteManifest(string json) =>
        File.WriteAllBytes(BadFile("index.json.blob"), DataBlob.Encode(Encoding.UTF8.GetBytes(json), null, compress: true));

    private string ValidManifestJson(string fileName = "d.img.fidx")
    {
        var real = Reader.ReadManifest(bad, null).Files.Single();
        return $$$"""{"backup-type":"vm","backup-id":"2","backup-time":{{{T0.ToUnixTimeSeconds()}}},"files":[{"crypt-mode":"none","csum":"{{{real.Csum}}}","filename":"{{{fileName}}}","size":{{{real.Size}}}}],"signature":null,"unprotected":{}}""";
    }

    private void ReadBadImage()
    {
        var reader = Reader;
        using var image = reader.OpenImage(reader.GetSnapshot(BackupNamespace.Root, bad.Name), "d", null);
        image.Read(0, new byte[4096]);
    }

    [Fact]
    public void A_fifo_as_manifest_is_refused_at_once_and_listed_as_an_error()
    {
        MakeFifo(BadFile("index.json.blob"));
        var reader = Reader;
        var listed = Bounded(() => reader.ListSnapshots(new BackupGroup(BackupNamespace.Root, "vm", "2"))).Result;
        var e = FailsBounded<StoreEntryRefusedException>(() => reader.ReadManifest(listed.Single(), null));
        Assert.Contains("FIFO", e.Message);
        Assert.Contains("index.json.blob", e.Message);
        GoodSnapshotStillWorks();
    }

    [Fact]
    public void A_fifo_as_index_is_refused_at_once()
    {
        MakeFifo(BadFile("d.img.fidx"));
        var e = FailsBounded<StoreEntryRefusedException>(ReadBadImage);
        Assert.Contains("d.img.fidx", e.Message);
        GoodSnapshotStillWorks();
    }

    [Fact]
    public void A_fifo_as_chunk_fails_that_read_with_a_chunk_error()
    {
        var digest = FixedIndex.Open(BadFile("d.img.fidx")).DigestHex(0);
        MakeFifo(Path.Combine(Store, ".chunks", digest[..4], digest));
        var e = FailsBounded<ChunkCorruptException>(ReadBadImage);
        Assert.Contains("FIFO", e.Message);
        Assert.Equal(digest, e.ChunkDigest);
        GoodSnapshotStillWorks();
    }

    [Fact]
    public void A_manifest_linked_to_dev_zero_is_refused_without_reading()
    {
        Replace(BadFile("index.json.blob"), p => File.CreateSymbolicLink(p, "/dev/zero"));
        var e = FailsBounded<StoreEntryRefusedException>(() => Reader.ReadManifest(bad, null), 1 << 20);
        Assert.Contains("symbolic link", e.Message);
        GoodSnapshotStillWorks();
    }

    [Fact]
    public void A_small_blob_holding_100_MiB_of_json_stops_at_the_json_limit()
    {
        var json = new byte[100 << 20];
        Array.Fill(json, (byte)' ');
        json[0] = (byte)'{';
        json[^1] = (byte)'}';
        File.WriteAllBytes(BadFile("index.json.blob"), DataBlob.Encode(json, null, compress: true));
        Assert.True(new FileInfo(BadFile("index.json.blob")).Length < 1 << 20);
        var e = FailsBounded<ChunkCorruptException>(() => Reader.ReadManifest(bad, null), 48L << 20);
        Assert.Contains($"limit of {StoreLimits.MaxManifestJson}", e.Message);
        GoodSnapshotStillWorks();
    }

    [Fact]
    public void A_manifest_file_over_its_limit_is_refused_before_reading()
    {
        File.WriteAllBytes(BadFile("index.json.blob"), new byte[StoreLimits.MaxManifestFile + 1]);
        var e = FailsBounded<StoreLimitException>(() => Reader.ReadManifest(bad, null), 1 << 20);
        Assert.Contains($"limit of {StoreLimits.MaxManifestFile}", e.Message);
        Assert.Contains("index.json.blob", e.Message);
        GoodSnapshotStillWorks();
    }

    [Fact]
    public void Namespace_symlink_loops_are_not_followed()
    {
        var ns = Path.Combine(Store, "ns");
        Directory.CreateDirectory(Path.Combine(ns, "real"));
        for (var i = 0; i < 10; i++)
        {
            File.CreateSymbolicLink(Path.Combine(ns, $"a{i}"), "..");
        }

        var stopwatch = Stopwatch.StartNew();
        var reader = Reader;
        var namespaces = Bounded(() => reader.ListNamespaces()).Result;
        Assert.Equal(["", "real"], namespaces.Select(n => n.Path));
        Assert.True(stopwatch.Elapsed < TimeSpan.FromSeconds(2), $"took {stopwatch.Elapsed}");
        Assert.Equal(10, reader.Skipped.Count(s => s.Contains("ns/a", StringComparison.Ordinal)));
        Assert.Throws<StoreEntryRefusedException>(() => reader.ListGroups(BackupNamespace.Parse("a1")));
        GoodSnapshotStillWorks();
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Both_ways_of_opening_refuse_symlinks_fifos_and_escapes(bool openat2)
    {
        Directory.CreateDirectory(Outside);
        File.WriteAllText(Path.Combine(Outside, "secret"), "secret");
        MakeFifo(Path.Combine(Store, "fifo"));
        File.CreateSymbolicLink(Path.Combine(Store, "link"), Path.Combine(Outside, "secret"));
        File.CreateSymbolicLink(Path.Combine(Store, "dirlink"), Outside);
        File.WriteAllText(Path.Combine(Store, "plain"), "plain");
        var before = LocalStoreFiles.UseOpenat2;
        LocalStoreFiles.UseOpenat2 = openat2;
        try
        {
            var files = new LocalStoreFiles(Store);
            Assert.Equal("plain"u8.ToArray(), Bounded(() => files.ReadFile("plain", 100, "test")).Result);
            Assert.Null(files.ReadFile("missing", 100, "test"));
            Assert.Null(files.ReadFile("plain/below", 100, "test"));
            Assert.Contains("FIFO", FailsBounded<StoreEntryRefusedException>(() => files.ReadFile("fifo", 100, "test")).Message);
            Assert.Contains("symbolic link", FailsBounded<StoreEntryRefusedException>(() => files.ReadFile("link", 100, "test")).Message);
            Assert.Contains("symbolic link", FailsBounded<StoreEntryRefusedException>(() => files.ReadFile("dirlink/secret", 100, "test")).Message);
            Assert.Throws<StoreEntryRefusedException>(() => files.ListDirectory("dirlink"));
            Assert.Throws<StoreEntryRefusedException>(() => files.ListDirectory("plain"));
            Assert.Throws<StoreEntryRefusedException>(() => files.ReadFile("../outside/secret", 100, "test"));
            Assert.Throws<StoreEntryRefusedException>(() => files.ReadFile("vm//1", 100, "test"));
            Assert.Throws<StoreLimitException>(() => files.ReadFile("plain", 4, "test"));
            Assert.Equal(StoreEntryKind.Symlink, files.Kind("link"));
            Assert.Equal(StoreEntryKind.Other, files.Kind("fifo"));
            Assert.Null(files.Kind("missing"));
            var entries = files.ListDirectory(string.Empty)!.ToDictionary(e => e.Name, e => e.Kind);
            Assert.Equal(StoreEntryKind.Symlink, entries["dirlink"]);
            Assert.Equal(StoreEntryKind.Other, entries["fifo"]);
            Assert.Equal(StoreEntryKind.Directory, entries[".chunks"]);
            GoodSnapshotStillWorks();
        }
        finally
        {
            LocalStoreFiles.UseOpenat2 = before;
        }
    }

    [Fact]
    public void Namespaces_deeper_than_seven_levels_are_ignored()
    {
        var path = Store;
        for (var i = 0; i < 9; i++)
        {
            path = Path.Combine(path, "ns", $"n{i}");
        }

        Directory.CreateDirectory(path);
        var namespaces = Reader.ListNamespaces();
        Assert.Equal(8, namespaces.Count);
        Assert.Equal(7, namespaces.Max(n => n.Depth));
    }

    [Fact]
    public void Symlinks_out_of_the_store_are_refused_at_every_level()
    {
        // A copy of the bad snapshot's group and chunks outside the store, reached by symlinks from inside.
        Directory.CreateDirectory(Outside);
        ProcessRunner.Run("cp", ["-a", Path.Combine(Store, "vm", "2"), Path.Combine(Outside, "group")]).EnsureSuccess("cp");
        File.CreateSymbolicLink(Path.Combine(Store, "vm", "3"), Path.Combine(Outside, "group"));
        File.CreateSymbolicLink(Path.Combine(Store, "vm", "1", Names.FormatTime(T1)), Path.Combine(Outside, "group", Names.FormatTime(T0)));
        var digest = FixedIndex.Open(BadFile("d.img.fidx")).DigestHex(0);
        var chunkDir = Path.Combine(Store, ".chunks", digest[..4]);
        ProcessRunner.Run("mv", [chunkDir, Path.Combine(Outside, "chunkdir")]).EnsureSuccess("mv");
        File.CreateSymbolicLink(chunkDir, Path.Combine(Outside, "chunkdir"));

        var reader = Reader;
        Assert.DoesNotContain(reader.ListGroups(BackupNamespace.Root), g => g.Id == "3");
        Assert.Single(reader.ListSnapshots(new BackupGroup(BackupNamespace.Root, "vm", "1")));
        Assert.Contains(reader.Skipped, s => s.StartsWith("vm/3:", StringComparison.Ordinal));
        Assert.Throws<StoreEntryRefusedException>(() => reader.GetSnapshot(BackupNamespace.Root, $"vm/1/{Names.FormatTime(T1)}"));
        var e = FailsBounded<ChunkCorruptException>(ReadBadImage);
        Assert.Contains("symbolic link", e.Message);

        // Even a datastore whose .chunks is a symlink is refused.
        var other = dir.Combine("store2");
        Directory.CreateDirectory(other);
        File.CreateSymbolicLink(Path.Combine(other, ".chunks"), Path.Combine(Store, ".chunks"));
        Assert.Throws<StoreEntryRefusedException>(() => DatastoreReader.Open(other));
        GoodSnapshotStillWorks();
    }

    [Theory]
    [InlineData("../../../outside.img.fidx")]
    [InlineData("sub/d.img.fidx")]
    [InlineData("..")]
    [InlineData("d\n.img.fidx")]
    [InlineData("d.img.fidx\n")]
    [InlineData(".hidden.img.fidx")]
    [InlineData("d.img")]
    [InlineData("")]
    public void A_manifest_with_a_bad_archive_name_is_malformed(string name)
    {
        WriteManifest(ValidManifestJson(System.Text.Json.JsonEncodedText.Encode(name).ToString()));
        var e = FailsBounded<ManifestMismatchException>(() => Reader.ReadManifest(bad, null));
        Assert.Contains("index.json.blob", e.Message);
        Assert.DoesNotContain("\n", e.Message);
        GoodSnapshotStillWorks();
    }

    [Theory]
    [InlineData("{\"backup-type\":\"vm\",\"backup-type\":\"ct\",\"backup-id\":\"2\",\"backup-time\":1,\"files\":[]}")]
    [InlineData("{\"backup-type\":\"vm\",\"backup-id\":\"2\",\"backup-time\":1,\"files\":[{\"filename\":\"a.blob\",\"filename\":\"b.blob\",\"csum\":\"\",\"size\":1}]}")]
    [InlineData("{\"backup-type\":\"vm\",\"backup-id\":\"2\",\"backup-time\":1,\"files\":{}}")]
    [InlineData("{\"backup-type\":\"vm\",\"backup-id\":\"2\",\"backup-time\":1,\"files\":[7]}")]
    [InlineData("{\"backup-type\":\"vm\",\"backup-id\":\"2\",\"backup-time\":\"x\",\"files\":[]}")]
    [InlineData("{\"backup-type\":\"vm\",\"backup-id\":\"2\\n\",\"backup-time\":1,\"files\":[]}")]
    [InlineData("[1,2]")]
    [InlineData("{\"backup-type\":null}")]
    [InlineData("not json")]
    public void Malformed_manifests_are_typed_errors(string json)
    {
        WriteManifest(json);
        FailsBounded<ManifestMismatchException>(() => Reader.ReadManifest(bad, null));
        GoodSnapshotStillWorks();
    }

    [Fact]
    public void A_manifest_listing_an_archive_twice_is_malformed()
    {
        var one = ValidManifestJson();
        var files = one[(one.IndexOf('[') + 1)..one.IndexOf(']')];
        WriteManifest(one.Replace(files, files + "," + files, StringComparison.Ordinal));
        Assert.Contains("twice", FailsBounded<ManifestMismatchException>(() => Reader.ReadManifest(bad, null)).Message);
    }

    private static byte[] FixedHeader(long size, long chunkSize, int count)
    {
        var bytes = new byte[FixedIndex.HeaderSize + 32 * count];
        FixedIndex.Magic.CopyTo(bytes, 0);
        System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan(64), size);
        System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan(72), chunkSize);
        System.Security.Cryptography.SHA256.HashData(bytes.AsSpan(FixedIndex.HeaderSize), bytes.AsSpan(32, 32));
        return bytes;
    }

    [Theory]
    [InlineData(1L << 59, 1L, 1)] // 4096 + 32 × 2^59 wraps to 4096 + 32 in 64 bits
    [InlineData(long.MaxValue, 1L, 0)]
    [InlineData(1L << 62, 4L << 20, 1)]
    [InlineData(4096L, 64L << 20, 1)]
    public void Index_sizes_that_overflow_or_exceed_the_limit_are_refused(long size, long chunkSize, int count)
    {
        File.WriteAllBytes(BadFile("d.img.fidx"), FixedHeader(size, chunkSize, count));
        var e = FailsBounded<DatastoreException>(() => FixedIndex.Open(BadFile("d.img.fidx")), 1 << 20);
        Assert.True(e is IndexCorruptException or StoreLimitException, e.GetType().Name);
        Assert.Contains("d.img.fidx", e.Message);
        Assert.Throws(e.GetType(), () => FixedIndex.Parse(FixedHeader(size, chunkSize, count), "x"));
        Assert.ThrowsAny<DatastoreException>(ReadBadImage);
        GoodSnapshotStillWorks();
    }

    [Fact]
    public void An_index_larger_than_its_limit_is_refused_before_reading()
    {
        using (var f = File.Create(BadFile("d.img.fidx")))
        {
            f.SetLength(StoreLimits.MaxIndexFile + 1);
        }

        var e = FailsBounded<StoreLimitException>(() => FixedIndex.Open(BadFile("d.img.fidx")), 1 << 20);
        Assert.Contains($"limit of {StoreLimits.MaxIndexFile}", e.Message);
    }

    [Fact]
    public void A_chunk_larger_than_any_chunk_is_refused_before_reading()
    {
        var digest = FixedIndex.Open(BadFile("d.img.fidx")).DigestHex(0);
        using (var f = File.OpenWrite(Path.Combine(Store, ".chunks", digest[..4], digest)))
        {
            f.SetLength(StoreLimits.MaxChunkFile + 1);
        }

        var e = FailsBounded<ChunkCorruptException>(ReadBadImage, 16L << 20);
        Assert.Contains($"limit of {StoreLimits.MaxChunkFile}", e.Message);
    }

    [Fact]
    public void Names_with_a_trailing_newline_or_control_characters_are_not_listed()
    {
        Directory.CreateDirectory(Path.Combine(Store, "vm", "100\n"));
        Directory.CreateDirectory(Path.Combine(Store, "vm", "1", Names.FormatTime(T1) + "\n"));
        File.WriteAllBytes(Path.Combine(Store, "vm", "1", Names.FormatTime(T1) + "\n", "index.json.blob"), []);
        Directory.CreateDirectory(Path.Combine(Store, "ns", "a\u001b[2J"));
        var reader = Reader;
        Assert.Equal(["1", "2"], reader.ListGroups(BackupNamespace.Root).Select(g => g.Id));
        Assert.Single(reader.ListSnapshots(new BackupGroup(BackupNamespace.Root, "vm", "1")));
        Assert.Equal([""], reader.ListNamespaces().Select(n => n.Path));
        Assert.All(reader.Skipped, s => Assert.DoesNotContain(s, c => c < 0x20));
        Assert.Throws<SnapshotNotFoundException>(() => reader.GetSnapshot(BackupNamespace.Root, $"vm/100\n/{Names.FormatTime(T0)}"));
        Assert.Throws<SnapshotNotFoundException>(() => reader.GetSnapshot(BackupNamespace.Root, $"vm/1/{Names.FormatTime(T1)}\n"));
        Assert.Throws<InvalidNameException>(() => BackupNamespace.Parse("a\n"));
        GoodSnapshotStillWorks();
    }

    [Theory]
    [InlineData("100", true)]
    [InlineData("web-01.example_2", true)]
    [InlineData("100\n", false)]
    [InlineData("1\n00", false)]
    [InlineData("\n", false)]
    [InlineData("a\r", false)]
    [InlineData("a\t", false)]
    [InlineData("a\u0000", false)]
    [InlineData("a\u007f", false)]
    [InlineData("a/b", false)]
    [InlineData("..", false)]
    [InlineData(".", false)]
    [InlineData(".x", false)]
    [InlineData("", false)]
    [InlineData("ä", false)]
    [InlineData("１", false)]
    public void Id_and_namespace_names_are_checked_anchored(string name, bool valid)
    {
        Assert.Equal(valid, Names.IsBackupId(name));
        Assert.Equal(valid, Names.IsNamespaceComponent(name));
        Assert.Equal(valid && name.Length > 0, Names.IsArchiveName(name + ".blob"));
    }

    [Theory]
    [InlineData("2026-01-02T03:04:05Z", true)]
    [InlineData("2026-01-02T03:04:05Z\n", false)]
    [InlineData("2026-01-02T03:04:05z", false)]
    [InlineData("2026-13-02T03:04:05Z", false)]
    [InlineData("２026-01-02T03:04:05Z", false)]
    [InlineData("2026-01-02T03:04:05+00:00", false)]
    public void Snapshot_times_are_checked_anchored(string name, bool valid) => Assert.Equal(valid, Names.IsSnapshotTime(name));

    [Theory]
    [InlineData("vm", true)]
    [InlineData("ct", true)]
    [InlineData("host", true)]
    [InlineData("vm\n", false)]
    [InlineData("VM", false)]
    [InlineData("qemu", false)]
    public void Backup_types_are_checked(string name, bool valid) => Assert.Equal(valid, Names.IsBackupType(name));

    [Theory]
    [InlineData("drive-scsi0.img.fidx", true)]
    [InlineData("root.pxar.didx", true)]
    [InlineData("qemu-server.conf.blob", true)]
    [InlineData("drive-scsi0.img", false)]
    [InlineData("a..b.blob", false)]
    [InlineData("x/../y.blob", false)]
    [InlineData("y.blob\n", false)]
    [InlineData("y\u0085.blob", false)]
    public void Archive_names_are_checked(string name, bool valid) => Assert.Equal(valid, Names.IsArchiveName(name));

    private const string Salt = "\"salt\":\"AAAAAAAAAAAAAAAAAAAAAA==\"";
    private const string Data = "\"data\":\"AAAA\"";

    [Theory]
    [InlineData("{\"kdf\":{\"PBKDF2\":{\"iter\":65535}}," + Data + "}", "no salt")]
    [InlineData("{\"kdf\":{\"PBKDF2\":{\"iter\":0," + Salt + "}}," + Data + "}", "iter")]
    [InlineData("{\"kdf\":{\"PBKDF2\":{\"iter\":-5," + Salt + "}}," + Data + "}", "iter")]
    [InlineData("{\"kdf\":{\"PBKDF2\":{\"iter\":99999999999," + Salt + "}}," + Data + "}", "iter")]
    [InlineData("{\"kdf\":{\"Scrypt\":{\"n\":3,\"r\":8,\"p\":1," + Salt + "}}," + Data + "}", "power of two")]
    [InlineData("{\"kdf\":{\"Scrypt\":{\"n\":0,\"r\":8,\"p\":1," + Salt + "}}," + Data + "}", "power of two")]
    [InlineData("{\"kdf\":{\"Scrypt\":{\"n\":1073741824,\"r\":8,\"p\":1," + Salt + "}}," + Data + "}", "out of range")]
    [InlineData("{\"kdf\":{\"Scrypt\":{\"n\":65536,\"r\":0,\"p\":1," + Salt + "}}," + Data + "}", "out of range")]
    [InlineData("{\"kdf\":{\"Scrypt\":{\"n\":65536,\"r\":8,\"p\":4096," + Salt + "}}," + Data + "}", "out of range")]
    [InlineData("{\"kdf\":{\"Scrypt\":{\"r\":8,\"p\":1," + Salt + "}}," + Data + "}", "lack 'n'")]
    [InlineData("{\"kdf\":{\"Scrypt\":{\"n\":65536,\"r\":8,\"p\":1,\"salt\":\"QQ==\"}}," + Data + "}", "salt")]
    [InlineData("{\"kdf\":null," + Data + "," + Data + "}", "malformed")]
    [InlineData("{\"kdf\":7," + Data + "}", "not an object")]
    [InlineData("{\"kdf\":null,\"data\":\"%%%\"}", "malformed")]
    [InlineData("[]", "not a JSON object")]
    public void Bad_key_files_are_typed_errors(string json, string expected)
    {
        var path = dir.Combine("bad.key");
        File.WriteAllText(path, json);
        var e = FailsBounded<KeyFileException>(() => KeyFile.Load(path).Unwrap(() => "a passphrase", path));
        Assert.Contains(expected, e.Message);
        Assert.Contains("bad.key", e.Message);
    }

    [Fact]
    public void A_fifo_or_huge_key_file_is_refused_at_once()
    {
        var fifo = dir.Combine("fifo.key");
        MakeFifo(fifo);
        Assert.Contains("regular file", FailsBounded<KeyFileException>(() => KeyFile.Load(fifo)).Message);
        var huge = dir.Combine("huge.key");
        File.WriteAllBytes(huge, new byte[StoreLimits.MaxKeyFile + 1]);
        Assert.Contains($"limit of {StoreLimits.MaxKeyFile}", FailsBounded<KeyFileException>(() => KeyFile.Load(huge)).Message);
        Assert.Contains("regular file", FailsBounded<KeyFileException>(() => KeyFile.Load("/dev/zero")).Message);
    }

    [Fact]
    public void An_unfinished_backup_leaves_no_temporaries_and_a_dead_ones_are_swept()
    {
        // Interrupted by an error: the work directory goes with the writer.
        using (var writer = BackupWriter.Create(Store, BackupGroup.Parse(BackupNamespace.Root, "vm/9"), T1, null, precreateChunkDirectories: false))
        {
            using var failing = new FailingStream(Chunk + 10, Chunk / 2);
            Assert.Throws<IOException>(() => writer.AddImage("d", failing, Chunk + 10));
        }

        Assert.Empty(Temporaries());

        // Cancelled: the same.
        using (var cts = new CancellationTokenSource())
        using (var writer = BackupWriter.Create(Store, BackupGroup.Parse(BackupNamespace.Root, "vm/9"), T1, null, precreateChunkDirectories: false))
        {
            cts.Cancel();
            Assert.ThrowsAny<OperationCanceledException>(() => writer.AddImage("d", new MemoryStream(other), other.Length, null, cts.Token));
        }

        Assert.Empty(Temporaries());

        // What a killed process left: a marker, chunk temporaries and a work directory of a pid that is gone.
        const int deadPid = 999_999_999;
        File.WriteAllText(Path.Combine(Store, $"{BackupWriter.MarkerPrefix}{deadPid}"), $"{Environment.MachineName}\nvm/9\n");
        var digest = FixedIndex.Open(BadFile("d.img.fidx")).DigestHex(0);
        File.WriteAllBytes(Path.Combine(Store, ".chunks", digest[..4], $"{digest}.tmp_{deadPid}_7"), [1, 2, 3]);
        Directory.CreateDirectory(Path.Combine(Store, "vm", "9", $".{Names.FormatTime(T1)}.tmp-{deadPid}"));
        var alive = Path.Combine(Store, "vm", "9", $".{Names.FormatTime(T0)}.tmp-{Environment.ProcessId}");
        Directory.CreateDirectory(alive);
        Assert.Equal(3, Temporaries().Count(t => t.Contains(deadPid.ToString(), StringComparison.Ordinal)));

        DatastoreBuilder.Write(Store, "vm/9", T1, new Dictionary<string, byte[]> { ["d"] = other });
        Assert.Equal([alive], Temporaries());
        Directory.Delete(alive);
        GoodSnapshotStillWorks();
    }

    private List<string> Temporaries() =>
        Directory.EnumerateFileSystemEntries(Store, "*", SearchOption.AllDirectories)
            .Where(p => p.Contains(".tmp_", StringComparison.Ordinal) || p.Contains(".tmp-", StringComparison.Ordinal) ||
                        Path.GetFileName(p).StartsWith(BackupWriter.MarkerPrefix, StringComparison.Ordinal))
            .ToList();

    /// <summary>A source that fails after <paramref name="failAt"/> bytes, like a disk that goes away.</summary>
    private sealed class FailingStream(long length, long failAt) : Stream
    {
        private long position;

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => length;

        public override long Position { get => position; set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count)
        {
            if (position >= failAt)
            {
                throw new IOException("the source went away");
            }

            var n = (int)Math.Min(count, failAt - position);
            position += n;
            return n;
        }

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
