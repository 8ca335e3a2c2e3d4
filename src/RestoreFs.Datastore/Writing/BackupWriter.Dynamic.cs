namespace RestoreFs.Datastore;

public sealed partial class BackupWriter
{
    /// <summary>
    /// Starts a dynamic-index archive (<c>NAME.didx</c>, e.g. <c>root.pxar.didx</c>, <c>catalog.pcat1.didx</c>): write
    /// the stream into the returned object, then call its <see cref="DynamicArchiveStream.Finish"/>.
    /// </summary>
    public DynamicArchiveStream BeginDynamicArchive(string name, int averageChunkSize = ContentChunker.DefaultAverage)
    {
        var archive = name.EndsWith(".didx", StringComparison.Ordinal) ? name : name + ".didx";
        return new DynamicArchiveStream(archive, averageChunkSize, StoreChunk, FinishDynamic);
    }

    private ManifestFile FinishDynamic(DynamicArchiveStream stream)
    {
        if (stream.Chunks.Count == 0)
        {
            throw new DatastoreException($"archive {stream.FileName} is empty");
        }

        var indexBytes = DynamicIndexWriter.Build(stream.Chunks, DateTimeOffset.UtcNow);
        var tmp = Path.Combine(workDir, stream.FileName.Replace(".didx", ".tmp_didx", StringComparison.Ordinal));
        File.WriteAllBytes(tmp, indexBytes);
        File.Move(tmp, Path.Combine(workDir, stream.FileName));
        var file = new ManifestFile(stream.FileName, key is null ? CryptMode.None : CryptMode.Encrypt, (ulong)stream.Length,
            Convert.ToHexStringLower(indexBytes.AsSpan(32, 32)));
        files.Add(file);
        return file;
    }
}
