using RestoreFs.Datastore;
using RestoreFs.TestSupport;

namespace RestoreFs.Pxar.Tests;

/// <summary>Torture tree → BackupWriter (content-defined chunks, plain and encrypted, v1 and split) → DatastoreReader → pxar reader.</summary>
[Collection("torture")]
public class DatastoreRoundTripTests(TortureTree tree)
{
    private static readonly BackupGroup Group = new(BackupNamespace.Root, "ct", "100");

    private static SnapshotInfo Backup(string store, TortureTree tree, bool split, CryptConfig? key, int second)
    {
        using var writer = BackupWriter.Create(store, Group, DateTimeOffset.FromUnixTimeSeconds(1_700_000_000 + second), key, precreateChunkDirectories: false);
        PxarBackup.Write(writer, [new PxarBackupSource("root.pxar", tree.Root)], new PxarBackupOptions(split, AverageChunkSize: 64 * 1024));
        return writer.Finish();
    }

    [Fact]
    public void BackupsReadBackThroughTheDatastoreOnEveryField()
    {
        using var store = new TempDirectory("pxar-store");
        var expected = tree.ExpectedListing();
        var expectedXattrs = tree.ExpectedXattrs();
        var key = CryptConfig.FromRawKey(Enumerable.Range(1, 32).Select(i => (byte)i).ToArray());
        var second = 0;
        foreach (var split in new[] { false, true })
        {
            foreach (var k in new[] { null, key })
            {
                var snapshot = Backup(store.Path, tree, split, k, second++);
                var reader = DatastoreReader.Open(store.Path);
                var manifest = reader.ReadManifest(snapshot, k);
                var info = Assert.Single(SnapshotArchives.List(manifest));
                Assert.Equal(("root.pxar", split), (info.Name, info.IsSplit));
                Assert.Equal(split ? ["root.mpxar.didx", "root.ppxar.didx"] : ["root.pxar.didx", "catalog.pcat1.didx"],
                    manifest.Files.Select(f => f.FileName));
                Assert.All(manifest.Files, f => Assert.Equal(k is null ? CryptMode.None : CryptMode.Encrypt, f.CryptMode));

                using var a = SnapshotArchives.Open(reader, snapshot, split ? "root.mpxar.didx" : "root.pxar", k);
                var listing = new SortedDictionary<string, string>(StringComparer.Ordinal);
                var xattrs = new SortedDictionary<string, string>(StringComparer.Ordinal);
                var entries = new Dictionary<string, PxarEntry>();
                RoundTripTests.Collect(a, a.Root, "", listing, xattrs, [], entries);
                xattrs["."] = string.Join(",", a.Root.AllXattrs().Select(v => System.Text.Encoding.Latin1.GetString(v.Name) + "=" + Convert.ToHexStringLower(v.Value)).Order(StringComparer.Ordinal));
                Assert.Equal(expected, listing);
                Assert.Equal(expectedXattrs, xattrs);
                Assert.Equal(File.ReadAllBytes(Path.Combine(tree.Root, "bigfile")), Vectors.ReadAll(a, entries["bigfile"]));

                if (!split)
                {
                    using var catalogReader = DynamicImageReader.Open(reader, snapshot, "catalog.pcat1", k);
                    var catalog = new PxarCatalog(new DynamicIndexPxarSource(catalogReader, ownsReader: false));
                    var top = Assert.Single(catalog.Root);
                    Assert.Equal(("root.pxar.didx", PxarCatalogEntryType.Directory), (top.NameText, top.Type));
                    Assert.Equal(a.List(a.Root).Count, catalog.ReadBlock(top.ChildBlockOffset).Count);
                }
            }
        }

        // The same tree again: every chunk is already in the store.
        var before = Directory.GetFiles(Path.Combine(store.Path, ".chunks"), "*", SearchOption.AllDirectories).Length;
        Backup(store.Path, tree, split: true, key: null, second++);
        Assert.Equal(before, Directory.GetFiles(Path.Combine(store.Path, ".chunks"), "*", SearchOption.AllDirectories).Length);
    }

    [Fact]
    public void ADamagedPayloadChunkFailsOnlyTheReadsOfItsFile()
    {
        using var store = new TempDirectory("pxar-store");
        var snapshot = Backup(store.Path, tree, split: true, key: null, 0);
        var reader = DatastoreReader.Open(store.Path);
        using var a = SnapshotArchives.Open(reader, snapshot, "root.pxar", null);
        var big = a.LookupPath("bigfile")!;
        var index = DynamicIndex.Open(Path.Combine(snapshot.DirectoryPath, "root.ppxar.didx"));
        var chunk = index.ChunkAt(big.ContentOffset + big.Size / 2);
        Assert.True(index.ChunkStart(chunk) > big.ContentOffset && index.ChunkEnd(chunk) < big.ContentOffset + big.Size, "chunk inside the file");
        var path = reader.Chunks.PathOf(index.Digest(chunk));
        var bytes = File.ReadAllBytes(path);
        bytes[bytes.Length / 2] ^= 0x55;
        File.WriteAllBytes(path, bytes);

        using var fresh = SnapshotArchives.Open(reader, snapshot, "root.pxar", null);
        var walk = Vectors.Walk(fresh, fresh.LookupPath("sub")!);
        Assert.NotEmpty(walk);
        Assert.Equal("hello\n"u8.ToArray(), Vectors.ReadAll(fresh, fresh.LookupPath("a.txt")!));
        var file = fresh.LookupPath("bigfile")!;
        var error = Assert.ThrowsAny<DatastoreException>(() => Vectors.ReadAll(fresh, file));
        Assert.Contains(Convert.ToHexStringLower(index.Digest(chunk)), error.Message);
        var head = new byte[4096];
        Assert.Equal(4096, fresh.Read(file, 0, head));
        Assert.Equal(File.ReadAllBytes(Path.Combine(tree.Root, "bigfile"))[..4096], head);
    }

    /// <summary>
    /// A lookup told that the name is a directory (the mount knows it from the catalog) starts decoding the chunk that
    /// holds the directory's goodbye table while the directory's entry decodes; the table is then read from the cache.
    /// A damaged goodbye chunk fails the hint silently and the read that needs it reports the chunk.
    /// </summary>
    [Fact]
    public void ALookupOfADirectoryFetchesItsGoodbyeTableAheadAndDamageStillNamesTheChunk()
    {
        using var store = new TempDirectory("pxar-store");
        var snapshot = Backup(store.Path, tree, split: false, key: null, 0);
        var reader = DatastoreReader.Open(store.Path);
        var index = DynamicIndex.Open(Path.Combine(snapshot.DirectoryPath, "root.pxar.didx"));

        // A directory whose goodbye table lies in another chunk than its entry (the torture tree has several).
        byte[]? parentPath = null;
        PxarEntry? target = null;
        long tableOffset = 0, tableEnd = 0;
        using (var scan = SnapshotArchives.Open(reader, snapshot, "root.pxar", null))
        {
            var queue = new Queue<(PxarEntry Dir, byte[] Path)>([(scan.Root, [])]);
            while (target is null && queue.Count > 0)
            {
                var (dir, dirPath) = queue.Dequeue();
                foreach (var child in scan.List(dir).Where(c => c.IsDirectory))
                {
                    // The GOODBYE item: a header, a record per child and the tail record (which a lookup reads first).
                    var table = scan.GoodbyeOffset(child);
                    var end = table + 16 + (24L * (scan.GoodbyeRecords(child).Count + 1));
                    if (target is null && index.ChunkAt(child.EntryOffset) != index.ChunkAt(end - 1))
                    {
                        (parentPath, target, tableOffset, tableEnd) = (dirPath, child, table, end);
                    }

                    queue.Enqueue((child, dirPath.Length == 0 ? child.Name : [.. dirPath, (byte)'/', .. child.Name]));
                }
            }
        }

        Assert.NotNull(target);
        PxarEntry Fresh(PxarArchive archive) => archive.LookupPath(parentPath.AsSpan())!;

        using (var source = DynamicImageReader.Open(reader, snapshot, "root.pxar", null))
        using (var archive = PxarArchive.Open(new DynamicIndexPxarSource(source, ownsReader: false)))
        {
            var from = Fresh(archive);
            Assert.Equal(target!.EntryOffset, archive.Lookup(from, target.Name)!.EntryOffset);
            Assert.Equal(0, source.Prefetches); // no hint, no fetch ahead

            var found = archive.Lookup(from, target.Name, directoryExpected: true)!;
            Assert.Equal(target.EntryOffset, found.EntryOffset);
        }

        using (var source = DynamicImageReader.Open(reader, snapshot, "root.pxar", null))
        using (var archive = PxarArchive.Open(new DynamicIndexPxarSource(source, ownsReader: false)))
        {
            var from = Fresh(archive);
            var found = archive.Lookup(from, target.Name, directoryExpected: true)!;
            Assert.Equal(1, source.Prefetches);
            var misses = source.Stats.Misses;
            Assert.Equal(tableOffset, archive.GoodbyeOffset(found));
            Assert.NotEmpty(archive.GoodbyeRecords(found));
            // The tail's chunk came from the fetch ahead; only the chunks before it that the table spans were read now.
            Assert.Equal(misses + index.ChunkAt(tableEnd - 1) - index.ChunkAt(tableOffset), source.Stats.Misses);
        }

        // Damage the goodbye table's chunk: the hint fails quietly, the table read names the chunk.
        var digest = index.Digest(index.ChunkAt(tableEnd - 1));
        var path = reader.Chunks.PathOf(digest);
        var bytes = File.ReadAllBytes(path);
        bytes[bytes.Length / 2] ^= 0x55;
        File.WriteAllBytes(path, bytes);
        using (var source = DynamicImageReader.Open(reader, snapshot, "root.pxar", null))
        using (var archive = PxarArchive.Open(new DynamicIndexPxarSource(source, ownsReader: false)))
        {
            var from = Fresh(archive);
            var found = archive.Lookup(from, target.Name, directoryExpected: true)!;
            var error = Assert.ThrowsAny<DatastoreException>(() => archive.GoodbyeRecords(found));
            Assert.Contains(Convert.ToHexStringLower(digest), error.Message);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Opening_for_a_walk_fetches_the_roots_goodbye_table_ahead_and_lists_the_same(bool split)
    {
        using var store = new TempDirectory("pxar-store");
        var snapshot = Backup(store.Path, tree, split, key: null, 0);
        var reader = DatastoreReader.Open(store.Path);
        var info = SnapshotArchives.Require(reader.ReadManifest(snapshot, null), snapshot, "root.pxar");
        var meta = DynamicIndex.Open(Path.Combine(snapshot.DirectoryPath, info.MetadataFile));
        Assert.True(meta.ChunkCount > 1, "the root's table must lie in another chunk than its entry");

        List<string> Listing(PxarArchive archive) => [.. archive.List(archive.Root).Select(e => System.Text.Encoding.UTF8.GetString(e.Name))];

        using var plainPayload = split ? Payload() : null;
        using var plainSource = DynamicImageReader.Open(reader, snapshot, info.MetadataFile, null);
        using var plain = PxarArchive.Open(new DynamicIndexPxarSource(plainSource, ownsReader: false), plainPayload);
        Assert.Equal(0, plainSource.Prefetches);

        using var aheadPayload = split ? Payload() : null;
        using var aheadSource = DynamicImageReader.Open(reader, snapshot, info.MetadataFile, null);
        using var ahead = PxarArchive.Open(new DynamicIndexPxarSource(aheadSource, ownsReader: false), aheadPayload,
            new PxarArchiveOptions { FetchRootTableAhead = true });
        Assert.Equal(1, aheadSource.Prefetches);
        Assert.Equal(Listing(plain), Listing(ahead));

        DynamicIndexPxarSource Payload() => new(DynamicImageReader.Open(reader, snapshot, info.PayloadFile!, null));
    }
}
