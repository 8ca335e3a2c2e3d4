namespace RestoreFs.Datastore;

/// <summary>
/// Every size limit of reading a datastore, in one place. Each comes from the format (spec pbs-formats 2.6) with room
/// for real stores; a file over its limit is refused before it is read, naming the file and the limit.
/// </summary>
public static class StoreLimits
{
    /// <summary>Encrypted blob header (magic, CRC, IV, tag); the largest header a blob has.</summary>
    public const int BlobHeader = 48;

    /// <summary>Largest chunk plaintext: PBS's dynamic chunks reach 16 MiB, fixed ones are 4 MiB.</summary>
    public const int MaxChunkPlaintext = 16 * 1024 * 1024;

    /// <summary>Largest chunk file: an uncompressed 16 MiB chunk plus its header (PBS stores zstd only when smaller).</summary>
    public const long MaxChunkFile = MaxChunkPlaintext + BlobHeader;

    /// <summary>Largest snapshot *.blob file (config, log): PBS's documented blob limit plus header.</summary>
    public const long MaxBlobFile = 16L * 1024 * 1024 + BlobHeader;

    /// <summary>Largest plaintext of a snapshot *.blob once decompressed.</summary>
    public const int MaxBlobPlaintext = 16 * 1024 * 1024;

    /// <summary>Largest manifest file (index.json.blob): a few KiB in practice, notes included.</summary>
    public const long MaxManifestFile = 1024 * 1024;

    /// <summary>Largest manifest JSON once decompressed.</summary>
    public const int MaxManifestJson = 4 * 1024 * 1024;

    /// <summary>Largest key file (a few hundred bytes in practice).</summary>
    public const long MaxKeyFile = 64 * 1024;

    /// <summary>Largest index file (.fidx/.didx): 16 Mi entries (64 TiB of 4 MiB chunks in a fixed index).</summary>
    public const long MaxIndexFile = 4096 + 40L * 16 * 1024 * 1024;

    /// <summary>Deepest namespace (PBS: 7 levels below the root).</summary>
    public const int MaxNamespaceDepth = 7;

    /// <summary>Longest name of a namespace component, backup id or archive (PBS keeps them far shorter).</summary>
    public const int MaxNameLength = 128;

    /// <summary>Scrypt memory (128 × N × r × p bytes) a key file may ask for: PBS's default is 64 MiB.</summary>
    public const long MaxScryptMemory = 1L << 30;

    /// <summary>PBKDF2 iterations a key file may ask for: PBS's default is 65535.</summary>
    public const int MaxPbkdf2Iterations = 10_000_000;
}
