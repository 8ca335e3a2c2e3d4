namespace RestoreFs.Datastore;

/// <summary>
/// The chunk store <c>.chunks/</c>: one DataBlob per chunk at <c>.chunks/&lt;4 hex&gt;/&lt;64 hex&gt;</c>. Read through
/// the store's file seam: a chunk that is a symlink, FIFO or device, or larger than a chunk may be, is refused.
/// </summary>
public sealed class ChunkStore
{
    /// <summary>Piece size of a read with progress: small enough that work starts early, large enough to stay cheap.</summary>
    public const int ProgressPiece = 256 * 1024;

    private readonly Lazy<IStoreFiles> files;

    /// <summary>The chunk store of the datastore at <paramref name="basePath"/> (opened on first read).</summary>
    public ChunkStore(string basePath)
    {
        Directory = Path.Combine(Path.GetFullPath(basePath), ".chunks");
        var root = Path.GetFullPath(basePath);
        files = new Lazy<IStoreFiles>(() => new LocalStoreFiles(root));
    }

    internal ChunkStore(string basePath, IStoreFiles files)
    {
        Directory = Path.Combine(basePath, ".chunks");
        this.files = new Lazy<IStoreFiles>(files);
    }

    public string Directory { get; }

    public string PathOf(ReadOnlySpan<byte> digest)
    {
        var hex = Convert.ToHexStringLower(digest);
        return Path.Combine(Directory, hex[..4], hex);
    }

    /// <summary>The asynchronous chunk path of a store in object storage, null for a local directory.</summary>
    internal IAsyncChunkFiles? Remote => files.Value as IAsyncChunkFiles;

    /// <summary>
    /// Fetches a chunk from object storage and hands its bytes to <paramref name="decode"/> (which verifies them);
    /// <see cref="ChunkMissingException"/> when the chunk does not exist.
    /// </summary>
    internal async ValueTask DecodeRemoteAsync(IAsyncChunkFiles remote, byte[] digest, long imageOffset, ChunkBlobDecoder decode, CancellationToken ct = default)
    {
        var hex = Convert.ToHexStringLower(digest);
        if (!await remote.ReadChunkAsync(hex, decode, ct).ConfigureAwait(false))
        {
            throw new ChunkMissingException("chunk is missing from the chunk store", PathOf(digest), imageOffset, hex);
        }
    }

    /// <summary>Reads a chunk file into a new array; read-only, never touches the store otherwise.</summary>
    public byte[] Read(ReadOnlySpan<byte> digest, long imageOffset)
    {
        var rented = ReadRented(digest, imageOffset, out var length);
        try
        {
            return rented.AsSpan(0, length).ToArray();
        }
        finally
        {
            BlobBuffers.Pool.Return(rented);
        }
    }

    /// <summary>Reads a chunk file into an array rented from the shared pool (return it); <paramref name="length"/> bytes are valid.</summary>
    /// <param name="progress">When given, the file is read in pieces and told after each one (the bytes so far), so
    /// that work on the first pieces overlaps the disk's reading of the rest.</param>
    public byte[] ReadRented(ReadOnlySpan<byte> digest, long imageOffset, out int length, BlobProgress? progress = null)
    {
        var hex = Convert.ToHexStringLower(digest);
        IStoreFile? file;
        try
        {
            file = files.Value.TryOpenChunk(hex);
        }
        catch (DatastoreException e) when (e is not ChunkCorruptException and not S3.S3Exception)
        {
            throw new ChunkCorruptException($"cannot open chunk: {e.Message}", null, imageOffset, hex, e);
        }

        if (file is null)
        {
            throw new ChunkMissingException("chunk is missing from the chunk store", PathOf(digest), imageOffset, hex);
        }

        using (file)
        {
            var fileLength = file.Length;
            if (fileLength > StoreLimits.MaxChunkFile)
            {
                throw new ChunkCorruptException($"chunk file has {fileLength} bytes, more than the limit of {StoreLimits.MaxChunkFile} for a chunk",
                    PathOf(digest), imageOffset, hex);
            }

            var size = (int)fileLength;
            // Asynchronous read-ahead of the whole file at once. Read whole, one request: a cold chunk arrives in ~2.5 ms
            // instead of ~3 ms of 128 KiB synchronous windows. Read in pieces, one request per piece pair, so that the
            // pieces arrive one after another and the decoder works on the first while the disk reads the rest (one
            // request for the file delivers all of it at the end, measured on the project's machine).
            if (progress is null)
            {
                file.WillNeed(0, size);
            }
            else
            {
                for (long at = 0; at < size; at += 2 * ProgressPiece)
                {
                    file.WillNeed(at, Math.Min(2 * ProgressPiece, size - at));
                }
            }

            var bytes = BlobBuffers.Pool.Rent(Math.Max(1, size));
            var done = 0;
            try
            {
                while (done < size)
                {
                    var n = file.ReadAt(bytes.AsSpan(done, progress is null ? size - done : Math.Min(ProgressPiece, size - done)), done);
                    if (n == 0)
                    {
                        break;
                    }

                    done += n;
                    progress?.Invoke(bytes.AsSpan(0, done));
                }
            }
            catch (IOException e)
            {
                BlobBuffers.Pool.Return(bytes);
                throw new ChunkCorruptException($"cannot read chunk: {e.Message}", PathOf(digest), imageOffset, hex, e);
            }

            length = done;
            return bytes;
        }
    }
}

/// <summary>The first bytes of a chunk file have arrived (see <see cref="ChunkStore.ReadRented"/>).</summary>
public delegate void BlobProgress(Span<byte> received);
