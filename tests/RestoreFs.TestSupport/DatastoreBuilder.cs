using RestoreFs.Datastore;

namespace RestoreFs.TestSupport;

/// <summary>
/// Makes test datastores with the real writer: images from byte arrays, optional key and blobs. Stores get only the
/// chunk directories they use (the writer's on-demand mode): making all 65536, as a real store has, costs seconds per
/// test; one round-trip test covers the full layout.
/// </summary>
public static class DatastoreBuilder
{
    public static SnapshotInfo Write(string store, string group, DateTimeOffset time, IReadOnlyDictionary<string, byte[]> images,
        CryptConfig? key = null, string? ns = null, IReadOnlyDictionary<string, byte[]>? blobs = null)
    {
        using var writer = BackupWriter.Create(store, BackupGroup.Parse(BackupNamespace.Parse(ns), group), time, key,
            precreateChunkDirectories: false);
        foreach (var (name, data) in images)
        {
            using var stream = new MemoryStream(data, writable: false);
            writer.AddImage(name, stream, data.Length);
        }

        foreach (var (name, data) in blobs ?? new Dictionary<string, byte[]>())
        {
            writer.AddBlob(name, data);
        }

        return writer.Finish();
    }

    /// <summary>Every byte of an image of a snapshot, read through the image reader.</summary>
    public static byte[] ReadImage(DatastoreReader reader, SnapshotInfo snapshot, string archive)
    {
        using var image = reader.OpenImage(snapshot, archive, null);
        var bytes = new byte[image.Size];
        for (var offset = 0; offset < bytes.Length;)
        {
            offset += image.Read(offset, bytes.AsSpan(offset));
        }

        return bytes;
    }

    /// <summary>Random bytes with a repeatable seed; <paramref name="zeroChunks"/> 4 MiB chunks cleared.</summary>
    public static byte[] Data(int length, int seed, params int[] zeroChunks)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        foreach (var chunk in zeroChunks)
        {
            var start = chunk * BackupWriter.DefaultChunkSize;
            Array.Clear(data, start, Math.Min(BackupWriter.DefaultChunkSize, length - start));
        }

        return data;
    }
}
