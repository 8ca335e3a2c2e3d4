using RestoreFs.Datastore;

namespace RestoreFs.Pxar;

/// <summary>A random-access byte stream holding an archive (a pxar stream, a payload stream or a catalog).</summary>
public interface IPxarSource
{
    /// <summary>Name used in errors (e.g. the index file).</summary>
    string Name { get; }

    long Length { get; }

    /// <summary>Reads min(dst.Length, Length − offset) bytes; 0 at or past the end.</summary>
    int Read(long offset, Span<byte> dst);

    /// <summary>A hint: bytes at <paramref name="offset"/> will be read soon (a source may start fetching them).</summary>
    void Prefetch(long offset)
    {
    }
}

/// <summary>An archive held in memory (tests, small catalogs).</summary>
public sealed class MemoryPxarSource(byte[] bytes, string name = "memory") : IPxarSource
{
    public string Name { get; } = name;

    public long Length => bytes.Length;

    public int Read(long offset, Span<byte> dst)
    {
        if (offset < 0 || offset >= bytes.Length)
        {
            return 0;
        }

        var n = (int)Math.Min(dst.Length, bytes.Length - offset);
        bytes.AsSpan((int)offset, n).CopyTo(dst);
        return n;
    }
}

/// <summary>An archive in a plain file (e.g. written by another tool).</summary>
public sealed class FilePxarSource : IPxarSource, IDisposable
{
    private readonly Microsoft.Win32.SafeHandles.SafeFileHandle handle;

    public FilePxarSource(string path)
    {
        Name = path;
        handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        Length = RandomAccess.GetLength(handle);
    }

    public string Name { get; }

    public long Length { get; }

    public int Read(long offset, Span<byte> dst)
    {
        var done = 0;
        while (done < dst.Length && offset + done < Length)
        {
            var n = RandomAccess.Read(handle, dst[done..], offset + done);
            if (n == 0)
            {
                break;
            }

            done += n;
        }

        return done;
    }

    public void Dispose() => handle.Dispose();
}

/// <summary>The stream a dynamic index reassembles (verified, cached chunks); chunk errors pass through as <see cref="DatastoreException"/>.</summary>
public sealed class DynamicIndexPxarSource(DynamicImageReader reader, bool ownsReader = true) : IPxarSource, IDisposable
{
    public DynamicImageReader Reader { get; } = reader;

    public string Name => Reader.IndexPath;

    public long Length => Reader.Size;

    public int Read(long offset, Span<byte> dst) => Reader.Read(offset, dst);

    public void Prefetch(long offset) => Reader.Prefetch(offset);

    public void Dispose()
    {
        if (ownsReader)
        {
            Reader.Dispose();
        }
    }
}
