using System.Security.Cryptography;
using RestoreFs.Datastore;
using RestoreFs.TestSupport;

namespace RestoreFs.Datastore.Tests;

/// <summary>Every kind of bad input gets its own error naming what is wrong, and reading never changes the store.</summary>
public sealed class ErrorTests : IDisposable
{
    private const int Chunk = BackupWriter.DefaultChunkSize;
    private static readonly DateTimeOffset T0 = DateTimeOffset.Parse("2026-01-02T03:04:05Z");
    private readonly TempDirectory dir = new("restorefs-err");
    private readonly CryptConfig key = CryptConfig.FromRawKey(Enumerable.Repeat((byte)9, 32).ToArray());
    private readonly byte[] data = DatastoreBuilder.Data(3 * Chunk + 100, 3);
    private readonly SnapshotInfo plain;
    private readonly SnapshotInfo encrypted;

    public ErrorTests()
    {
        plain = DatastoreBuilder.Write(Store, "vm/1", T0, new Dictionary<string, byte[]> { ["d"] = data });
        encrypted = DatastoreBuilder.Write(Store, "vm/2", T0, new Dictionary<string, byte[]> { ["d"] = data }, key);
    }

    private string Store => dir.Combine("store");

    private DatastoreReader Reader => DatastoreReader.Open(Store);

    private string Fidx(SnapshotInfo s) => Path.Combine(s.DirectoryPath, "d.img.fidx");

    private string ChunkFile(SnapshotInfo s, int i)
    {
        var index = FixedIndex.Open(Fidx(s));
        return Reader.Chunks.PathOf(index.Digest(i));
    }

    private T ReadFails<T>(SnapshotInfo s, long offset, CryptConfig? k = null)
        where T : Exception
    {
        var before = Hash();
        var e = Assert.Throws<T>(() =>
        {
            using var image = Reader.OpenImage(s, "d", k);
            image.Read(offset, new byte[4096]);
        });
        Assert.Equal(before, Hash());
        return e;
    }

    private string Hash()
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var file in Directory.EnumerateFiles(Store, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
        {
            hash.AppendData(System.Text.Encoding.UTF8.GetBytes(file + File.GetLastWriteTimeUtc(file).Ticks));
            hash.AppendData(File.ReadAllBytes(file));
        }

        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    private void Mutate(string path, Action<byte[]> change)
    {
        var bytes = File.ReadAllBytes(path);
        change(bytes);
        File.WriteAllBytes(path, bytes);
    }

    [Fact]
    public void Crc_mismatch_names_the_chunk_and_only_fails_its_reads()
    {
        var path = ChunkFile(plain, 1);
        Mutate(path, b => b[^1] ^= 1);
        var e = ReadFails<ChunkCorruptException>(plain, Chunk + 5);
        Assert.Contains("CRC", e.Message);
        Assert.Equal(Path.GetFileName(path), e.ChunkDigest);
        Assert.Contains(Path.GetFileName(path), e.Message);
        using var image = Reader.OpenImage(plain, "d", null);
        var ok = new byte[100];
        image.Read(2 * Chunk, ok);
        Assert.Equal(data.AsSpan(2 * Chunk, 100).ToArray(), ok);
    }

    [Fact]
    public void Truncated_blob_and_wrong_magic()
    {
        File.WriteAllBytes(ChunkFile(plain, 0), [1, 2, 3]);
        Assert.Contains("truncated", ReadFails<ChunkCorruptException>(plain, 0).Message);
        Mutate(ChunkFile(plain, 2), b => b[0] ^= 0xFF);
        Assert.Contains("magic", ReadFails<ChunkCorruptException>(plain, 2L * Chunk).Message);
    }

    [Fact]
    public void Digest_mismatch_when_a_valid_blob_holds_other_data()
    {
        var other = DataBlob.Encode(new byte[Chunk].Select((_, i) => (byte)i).ToArray(), null, compress: true);
        File.WriteAllBytes(ChunkFile(plain, 0), other);
        Assert.Contains("digest mismatch", ReadFails<ChunkCorruptException>(plain, 0).Message);
    }

    [Fact]
    public void Missing_chunk()
    {
        var path = ChunkFile(plain, 1);
        File.Delete(path);
        var e = ReadFails<ChunkMissingException>(plain, Chunk);
        Assert.Equal(Path.GetFileName(path), e.ChunkDigest);
        Assert.Equal(Chunk, e.Offset);
    }

    [Fact]
    public void Truncated_index_and_checksum_mismatch()
    {
        Mutate(Fidx(plain), b => b[^1] ^= 1);
        Assert.Contains("checksum", ReadFails<IndexCorruptException>(plain, 0).Message);
        File.WriteAllBytes(Fidx(plain), File.ReadAllBytes(Fidx(plain))[..^10]);
        Assert.Contains("bytes", ReadFails<IndexCorruptException>(plain, 0).Message);
    }

    [Fact]
    public void Manifest_csum_mismatch()
    {
        var other = DatastoreBuilder.Write(Store, "vm/3", T0, new Dictionary<string, byte[]> { ["d"] = DatastoreBuilder.Data(3 * Chunk + 100, 4) });
        File.Copy(Fidx(other), Fidx(plain), overwrite: true);
        Assert.Contains("manifest", ReadFails<ManifestMismatchException>(plain, 0).Message);
    }

    [Fact]
    public void A_manifest_the_caller_holds_is_not_read_again()
    {
        foreach (var (snapshot, k) in new[] { (plain, (CryptConfig?)null), (encrypted, key) })
        {
            var reader = Reader;
            var manifest = reader.ReadManifest(snapshot, k);
            Mutate(Path.Combine(snapshot.DirectoryPath, "index.json.blob"), b => b[^1] ^= 1);

            // Without the caller's manifest the damaged file is read (and refused); with it, it is not read at all.
            Assert.ThrowsAny<DatastoreException>(() => reader.OpenImage(snapshot, "d", k).Dispose());
            Assert.ThrowsAny<DatastoreException>(() => reader.OpenFixedIndex(snapshot, "d", k));
            using var image = reader.OpenImage(snapshot, "d", k, manifest: manifest);
            var buffer = new byte[8192];
            Assert.Equal(buffer.Length, image.Read(Chunk - 4096, buffer));
            Assert.Equal(data.AsSpan(Chunk - 4096, buffer.Length).ToArray(), buffer);
            Assert.Equal(data.Length, reader.OpenFixedIndex(snapshot, "d.img.fidx", k, manifest).Index.Size);

            // The manifest given still decides: an archive it does not list is refused.
            Assert.Throws<ArchiveNotFoundException>(() => reader.OpenFixedIndex(snapshot, "other.img", k, manifest));
        }
    }

    [Fact]
    public void Encrypted_without_key_with_wrong_key_and_with_the_right_key()
    {
        ReadFails<KeyRequiredException>(encrypted, 0);
        var wrong = CryptConfig.FromRawKey(Enumerable.Repeat((byte)8, 32).ToArray());
        var e = ReadFails<WrongKeyException>(encrypted, 0, wrong);
        Assert.Contains(key.Fingerprint, e.Message);
        Assert.Contains(wrong.Fingerprint, e.Message);
        using var image = Reader.OpenImage(encrypted, "d", key);
        var buffer = new byte[1000];
        image.Read(Chunk - 500, buffer);
        Assert.Equal(data.AsSpan(Chunk - 500, 1000).ToArray(), buffer);
    }

    [Fact]
    public void Wrong_passphrase_and_key_file_round_trip()
    {
        var raw = RandomNumberGenerator.GetBytes(32);
        var path = dir.Combine("key.json");
        File.WriteAllText(path, KeyFile.Create(raw, KeyDerivation.Pbkdf2, "correct horse"));
        Assert.Equal(CryptConfig.FromRawKey(raw).Fingerprint, CryptConfig.FromKeyFile(path, () => "correct horse").Fingerprint);
        Assert.Throws<WrongKeyException>(() => CryptConfig.FromKeyFile(path, () => "wrong horse"));
        Assert.Throws<KeyRequiredException>(() => CryptConfig.FromKeyFile(path, null));
    }

    [Fact]
    public void Tampered_signed_manifest_is_refused_with_key()
    {
        var manifestPath = Path.Combine(encrypted.DirectoryPath, "index.json.blob");
        var json = System.Text.Encoding.UTF8.GetString(DataBlob.Decode(File.ReadAllBytes(manifestPath), null, manifestPath));
        File.WriteAllBytes(manifestPath, DataBlob.Encode(System.Text.Encoding.UTF8.GetBytes(json.Replace("\"d.img.fidx\"", "\"e.img.fidx\"")), null, true));
        Assert.Throws<ManifestMismatchException>(() => Reader.ReadManifest(encrypted, key));
    }

    public void Dispose() => dir.Dispose();
}
