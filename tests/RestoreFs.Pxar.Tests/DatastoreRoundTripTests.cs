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
}
