namespace RestoreFs.Datastore;

/// <summary>What a directory entry of the datastore is (never followed: a symlink is a <see cref="Symlink"/>).</summary>
public enum StoreEntryKind
{
    File,
    Directory,
    Symlink,
    Other,
}

/// <summary>One entry of a datastore directory.</summary>
public readonly record struct StoreEntry(string Name, StoreEntryKind Kind);

/// <summary>
/// The one way the reader touches a datastore. Paths are relative to the store root, '/'-separated, without '.', '..'
/// or empty components (checked by <see cref="StorePath.Check"/>). Chunks are addressed by digest, as an object store
/// keeps them apart from the rest (<c>.chunks/&lt;4 hex&gt;/&lt;digest&gt;</c> locally). Anything that is not a
/// regular file (or a directory where one is listed) is refused with <see cref="StoreEntryRefusedException"/>.
/// </summary>
internal interface IStoreFiles
{
    /// <summary>A name for messages: the full local path or the object URL.</summary>
    string Describe(string relativePath);

    /// <summary>Opens a regular file; null when it does not exist.</summary>
    IStoreFile? TryOpen(string relativePath);

    /// <summary>Opens a chunk by its lower-case hex digest; null when it does not exist.</summary>
    IStoreFile? TryOpenChunk(string digestHex);

    /// <summary>Entries of a directory (unsorted); null when it does not exist.</summary>
    IReadOnlyList<StoreEntry>? ListDirectory(string relativePath);

    /// <summary>What is at the path (not followed), or null when nothing is.</summary>
    StoreEntryKind? Kind(string relativePath);
}

/// <summary>An open regular file of the store.</summary>
internal interface IStoreFile : IDisposable
{
    string RelativePath { get; }

    long Length { get; }

    /// <summary>Reads at most <paramref name="destination"/>.Length bytes at <paramref name="offset"/>; 0 at the end.</summary>
    int ReadAt(Span<byte> destination, long offset);

    /// <summary>Hints that these bytes will be read soon: the kernel starts reading them in the background (a no-op
    /// where it does not apply).</summary>
    void WillNeed(long offset, long length);
}

internal static class StoreFileExtensions
{
    /// <summary>Fills <paramref name="destination"/> from <paramref name="offset"/>; a short file is corrupt.</summary>
    public static void ReadExactlyAt(this IStoreFile file, Span<byte> destination, long offset, string describe)
    {
        var done = 0;
        while (done < destination.Length)
        {
            var n = file.ReadAt(destination[done..], offset + done);
            if (n == 0)
            {
                throw new DatastoreException($"file ended at {offset + done} bytes while {offset + destination.Length} were expected (it changed while read)", describe);
            }

            done += n;
        }
    }

    /// <summary>Reads a whole regular file of at most <paramref name="maxBytes"/> (else <see cref="StoreLimitException"/>); null when missing.</summary>
    public static byte[]? ReadFile(this IStoreFiles files, string relativePath, long maxBytes, string what)
    {
        using var file = files.TryOpen(relativePath);
        if (file is null)
        {
            return null;
        }

        var describe = files.Describe(relativePath);
        if (file.Length > maxBytes)
        {
            throw new StoreLimitException($"{what} has {file.Length} bytes, more than the limit of {maxBytes}", describe);
        }

        var bytes = new byte[file.Length];
        file.ReadExactlyAt(bytes, 0, describe);
        return bytes;
    }
}

/// <summary>Relative store paths.</summary>
internal static class StorePath
{
    public static string Join(params string[] parts) => string.Join('/', parts.Where(p => p.Length > 0));

    /// <summary>The components of a relative path; throws for anything that could leave the directory it names.</summary>
    public static string[] Check(string relativePath, string describe)
    {
        if (relativePath.Length == 0)
        {
            return [];
        }

        var parts = relativePath.Split('/');
        foreach (var part in parts)
        {
            if (part is "" or "." or ".." || part.Any(c => c < 0x20 || c == 0x7f))
            {
                throw new StoreEntryRefusedException($"unsafe datastore path '{Names.Printable(relativePath)}'", describe);
            }
        }

        return parts;
    }

    public static string ChunkPath(string digestHex) => $".chunks/{digestHex[..4]}/{digestHex}";
}
