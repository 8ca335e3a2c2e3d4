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

    [ThreadStatic]
    private static byte[]? pieceBuffer;

    /// <summary>
    /// Reads a chunk file in pieces of <see cref="ProgressPiece"/> bytes through one small buffer of this thread and
    /// hands each to <paramref name="piece"/>, in order; returns the file's length. Nothing of the file is kept: for a
    /// consumer that needs each byte once (<see cref="StreamedChunkDecoder"/>), a chunk costs no chunk-sized array.
    /// </summary>
    public int ReadPieces(ReadOnlySpan<byte> digest, long imageOffset, BlobProgress piece)
    {
        var hex = Convert.ToHexStringLower(digest);
        using var file = OpenChunk(digest, imageOffset, hex);
        var size = (int)file.Length;
        AskInPieces(file, size);
        var buffer = pieceBuffer ??= GC.AllocateUninitializedArray<byte>(ProgressPiece);
        var done = 0;
        try
        {
            while (done < size)
            {
                var n = file.ReadAt(buffer.AsSpan(0, Math.Min(ProgressPiece, size - done)), done);
                if (n == 0)
                {
                    break;
                }

                done += n;
                piece(buffer.AsSpan(0, n));
            }
        }
        catch (IOException e)
        {
            throw new ChunkCorruptException($"cannot read chunk: {e.Message}", PathOf(digest), imageOffset, hex, e);
        }

        return done;
    }

    /// <summary>Asks the kernel for the file one request per two pieces, so that pieces arrive one after another.</summary>
    private static void AskInPieces(IStoreFile file, int size)
    {
        for (long at = 0; at < size; at += 2 * ProgressPiece)
        {
            file.WillNeed(at, Math.Min(2 * ProgressPiece, size - at));
        }
    }

    /// <summary>Opens a chunk file for reading; missing, unopenable or oversized chunks throw, naming the chunk.</summary>
    private IStoreFile OpenChunk(ReadOnlySpan<byte> digest, long imageOffset, string hex)
    {
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

        if (file.Length > StoreLimits.MaxChunkFile)
        {
            var length = file.Length;
            file.Dispose();
            throw new ChunkCorruptException($"chunk file has {length} bytes, more than the limit of {StoreLimits.MaxChunkFile} for a chunk",
                PathOf(digest), imageOffset, hex);
        }

        return file;
    }

    /// <summary>Reads a chunk file into an array rented from the shared pool (return it); <paramref name="length"/> bytes are valid.</summary>
    /// <param name="progress">When given, the file is read in pieces and told after each one (the bytes so far), so
    /// that work on the first pieces overlaps the disk's reading of the rest.</param>
    public byte[] ReadRented(ReadOnlySpan<byte> digest, long imageOffset, out int length, BlobProgress? progress = null)
    {
        var hex = Convert.ToHexStringLower(digest);
        using (var file = OpenChunk(digest, imageOffset, hex))
        {
            var size = (int)file.Length;
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
                AskInPieces(file, size);
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

/// <summary>The first bytes of a chunk file have arrived (see <see cref="ChunkStore.ReadRented"/>), or the next piece
/// of it (see <see cref="ChunkStore.ReadPieces"/>).</summary>
public delegate void BlobProgress(Span<byte> received);
