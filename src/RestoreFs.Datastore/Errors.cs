namespace RestoreFs.Datastore;

/// <summary>Base of every datastore error; names the file and, where known, the image offset and chunk digest.</summary>
public class DatastoreException : Exception
{
    public DatastoreException(string message, string? filePath = null, long? offset = null, string? chunkDigest = null, Exception? inner = null)
        : base(Compose(message, filePath, offset, chunkDigest), inner)
    {
        FilePath = filePath;
        Offset = offset;
        ChunkDigest = chunkDigest;
    }

    public string? FilePath { get; }

    public long? Offset { get; }

    public string? ChunkDigest { get; }

    private static string Compose(string message, string? filePath, long? offset, string? digest)
    {
        var parts = new List<string> { message };
        if (digest is not null)
        {
            parts.Add($"chunk {digest}");
        }

        if (offset is not null)
        {
            parts.Add($"image offset {offset}");
        }

        if (filePath is not null)
        {
            parts.Add($"file {filePath}");
        }

        return string.Join("; ", parts);
    }
}

/// <summary>A chunk the index refers to is not in the chunk store.</summary>
public sealed class ChunkMissingException(string message, string? filePath, long? offset, string? digest)
    : DatastoreException(message, filePath, offset, digest);

/// <summary>A chunk or blob failed a check: size, magic, CRC, authentication tag, decompression or digest.</summary>
public sealed class ChunkCorruptException(string message, string? filePath, long? offset = null, string? digest = null, Exception? inner = null)
    : DatastoreException(message, filePath, offset, digest, inner);

/// <summary>An index file (.fidx/.didx) is malformed.</summary>
public sealed class IndexCorruptException(string message, string? filePath) : DatastoreException(message, filePath);

/// <summary>The manifest and an archive disagree (size, checksum) or the manifest is malformed or its signature is wrong.</summary>
public sealed class ManifestMismatchException(string message, string? filePath) : DatastoreException(message, filePath);

/// <summary>Encrypted or signed data was read without a key.</summary>
public sealed class KeyRequiredException(string message, string? filePath = null) : DatastoreException(message, filePath);

/// <summary>The key (or passphrase) does not fit the data.</summary>
public sealed class WrongKeyException(string message, string? filePath = null) : DatastoreException(message, filePath);

/// <summary>No such snapshot (or an unfinished one).</summary>
public sealed class SnapshotNotFoundException(string message, string? filePath = null) : DatastoreException(message, filePath);

/// <summary>No such archive in a snapshot.</summary>
public sealed class ArchiveNotFoundException(string message, string? filePath = null) : DatastoreException(message, filePath);

/// <summary>
/// Something in the datastore is not what the layout allows there: a symlink, FIFO, device or socket, a directory
/// where a file belongs, or a path that would leave the store. Never followed, never opened for reading.
/// </summary>
public sealed class StoreEntryRefusedException(string message, string? filePath) : DatastoreException(message, filePath);

/// <summary>A file is larger than the format allows (the message names the limit); refused before it is read.</summary>
public sealed class StoreLimitException(string message, string? filePath) : DatastoreException(message, filePath);

/// <summary>A name in the datastore (namespace, group, snapshot time, archive) breaks the naming rules.</summary>
public sealed class InvalidNameException(string message, string? filePath = null) : DatastoreException(message, filePath);

/// <summary>A key file is malformed or asks for unreasonable key-derivation parameters.</summary>
public sealed class KeyFileException(string message, string? filePath = null, Exception? inner = null)
    : DatastoreException(message, filePath, inner: inner);
