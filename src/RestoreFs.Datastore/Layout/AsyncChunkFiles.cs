namespace RestoreFs.Datastore;

/// <summary>Checks and decodes a chunk's stored bytes (a DataBlob); throws <see cref="ChunkCorruptException"/> when they are not the chunk.</summary>
internal delegate void ChunkBlobDecoder(ReadOnlySpan<byte> blob);

/// <summary>
/// A store whose chunks are requests (object storage): the image reader's read-ahead fetches chunks through this
/// without holding a thread per request, and the store hands the fetched bytes straight to the reader's decoder
/// (which verifies them) instead of copying them into a file object. Bytes are kept (a local cache) only after the
/// decoder accepted them.
/// </summary>
internal interface IAsyncChunkFiles
{
    /// <summary>
    /// Fetches the chunk and runs <paramref name="decode"/> on its bytes. False when the chunk does not exist. A
    /// cached copy that <paramref name="decode"/> rejects is dropped and fetched again; fetched bytes it rejects fail
    /// the call with its exception (never kept).
    /// </summary>
    ValueTask<bool> ReadChunkAsync(string digestHex, ChunkBlobDecoder decode, CancellationToken ct = default);
}
