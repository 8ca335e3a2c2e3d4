using Microsoft.Win32.SafeHandles;

namespace RestoreFs.Datastore;

/// <summary>The chunk store <c>.chunks/</c>: one DataBlob per chunk at <c>.chunks/&lt;4 hex&gt;/&lt;64 hex&gt;</c>.</summary>
public sealed partial class ChunkStore(string basePath)
{
    public string Directory { get; } = Path.Combine(basePath, ".chunks");

    public string PathOf(ReadOnlySpan<byte> digest)
    {
        var hex = Convert.ToHexStringLower(digest);
        return Path.Combine(Directory, hex[..4], hex);
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
            System.Buffers.ArrayPool<byte>.Shared.Return(rented);
        }
    }

    private const int FadviseWillNeed = 3;

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "posix_fadvise")]
    private static partial int PosixFadvise(SafeFileHandle fd, long offset, long length, int advice);

    /// <summary>Reads a chunk file into an array rented from the shared pool (return it); <paramref name="length"/> bytes are valid.</summary>
    public byte[] ReadRented(ReadOnlySpan<byte> digest, long imageOffset, out int length)
    {
        var path = PathOf(digest);
        SafeFileHandle handle;
        try
        {
            handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new ChunkMissingException("chunk is missing from the chunk store", path, imageOffset, Convert.ToHexStringLower(digest));
        }
        catch (IOException e)
        {
            throw new ChunkCorruptException($"cannot open chunk: {e.Message}", path, imageOffset, Convert.ToHexStringLower(digest));
        }

        using (handle)
        {
            var fileLength = RandomAccess.GetLength(handle);
            if (fileLength > DataBlob.MaxBlobSize + DataBlob.EncryptedHeaderSize + 1024 * 1024)
            {
                throw new ChunkCorruptException($"chunk file has {fileLength} bytes, more than a blob may", path, imageOffset, Convert.ToHexStringLower(digest));
            }

            var size = (int)fileLength;
            // One asynchronous read-ahead of the whole file: a cold 4 MiB chunk arrives in ~2.5 ms instead of ~3 ms
            // of 128 KiB synchronous read-ahead windows (measured on the project's machine).
            _ = PosixFadvise(handle, 0, fileLength, FadviseWillNeed);
            var bytes = System.Buffers.ArrayPool<byte>.Shared.Rent(Math.Max(1, size));
            var done = 0;
            while (done < size)
            {
                var n = RandomAccess.Read(handle, bytes.AsSpan(done, size - done), done);
                if (n == 0)
                {
                    break;
                }

                done += n;
            }

            length = done;
            return bytes;
        }
    }
}
