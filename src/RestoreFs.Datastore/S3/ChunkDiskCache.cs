using System.Globalization;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace RestoreFs.Datastore.S3;

/// <summary>Counters of a <see cref="ChunkDiskCache"/> (this instance only).</summary>
public sealed record ChunkDiskCacheStats(long Hits, long Misses, long Rejected, long Stored, long Evicted);

/// <summary>
/// Chunks (raw DataBlob bytes as stored) on local disk, keyed by digest: <c>DIR/chunks/&lt;4 hex&gt;/&lt;digest&gt;</c>.
/// Writes go to <c>DIR/tmp</c> and are renamed into place, so a reader sees a whole entry or none. Bounded by
/// <see cref="MaxBytes"/>: the bytes in use are kept in <c>DIR/usage</c>, changed only under an exclusive
/// <c>flock</c> on <c>DIR/lock</c>, so several processes (mounts) can share one directory and together stay within
/// the bound; when an entry would not fit, the least recently used ones (by access time, which every hit sets) go
/// first, down to 90 % of the bound. Entries are not trusted: <see cref="TryGet"/> runs the caller's check (digest,
/// CRC, decode) on every hit and drops an entry that fails it.
/// </summary>
public sealed unsafe partial class ChunkDiskCache : IDisposable
{
    private const int LockEx = 2;
    private const int LockUn = 8;
    private const int ORdOnly = 0;
    private const int OWrOnly = 1;
    private const int OCreat = 0x40;
    private const int OExcl = 0x80;
    private const int ODirect = 0x4000;
    private const int OCloExec = 0x80000;
    private const int ENoEnt = 2;
    private const int EIntr = 4;
    private const int EInval = 22;
    private const int Alignment = 4096;

    /// <summary>Room for the largest chunk file plus a page: a read that fills it means the entry is too large.</summary>
    private const int AlignedCapacity = ((int)StoreLimits.MaxChunkFile + (2 * Alignment) - 1) / Alignment * Alignment;

    private readonly string chunksDir;
    private readonly string tmpDir;
    private readonly SafeFileHandle lockHandle;
    private readonly SafeFileHandle usageHandle;
    private readonly Lock gate = new();
    private readonly Lock alignedGate = new();
    private readonly Lock bounceGate = new();
    private readonly Stack<AlignedBuffer> alignedPool = new();
    private AlignedBuffer? bounce;
    private bool directUnsupported;
    private bool disposed;
    private long hits, misses, rejected, stored, evicted;

    /// <param name="directory">Cache directory (created).</param>
    /// <param name="maxBytes">Bound for the bytes of all entries together.</param>
    public ChunkDiskCache(string directory, long maxBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxBytes);
        Directory = Path.GetFullPath(directory);
        MaxBytes = maxBytes;
        chunksDir = Path.Combine(Directory, "chunks");
        tmpDir = Path.Combine(Directory, "tmp");
        try
        {
            System.IO.Directory.CreateDirectory(chunksDir);
            System.IO.Directory.CreateDirectory(tmpDir);
            lockHandle = File.OpenHandle(Path.Combine(Directory, "lock"), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete);
            usageHandle = File.OpenHandle(Path.Combine(Directory, "usage"), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DatastoreException($"cannot use the chunk cache directory: {e.Message}", Directory, inner: e);
        }

        // Start from the truth: entries may have been added, removed or left half-written while no one counted.
        WithLock(() =>
        {
            WriteUsage(Scan(removeStale: true).Sum(e => e.Size));
            return 0;
        });
    }

    public string Directory { get; }

    public long MaxBytes { get; }

    public ChunkDiskCacheStats Stats => new(Interlocked.Read(ref hits), Interlocked.Read(ref misses), Interlocked.Read(ref rejected),
        Interlocked.Read(ref stored), Interlocked.Read(ref evicted));

    /// <summary>Bytes in use as recorded by all processes sharing the directory.</summary>
    public long UsedBytes => WithLock(ReadUsage);

    /// <summary>The bytes of all entries as found on disk now (a scan under the lock).</summary>
    public long MeasureBytes() => WithLock(() => Scan(removeStale: false).Sum(e => e.Size));

    /// <summary>
    /// The cached bytes of a chunk, or null. <paramref name="verify"/> (digest, CRC, decode — whatever the caller
    /// trusts) runs on every hit; an entry it rejects is deleted and the call answers null.
    /// </summary>
    public byte[]? TryGet(string digestHex, Func<byte[], bool>? verify = null)
    {
        var path = EntryPath(digestHex);
        byte[] data;
        try
        {
            data = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            Interlocked.Increment(ref misses);
            return null;
        }
        catch (IOException e)
        {
            throw new DatastoreException($"cannot read a cached chunk: {e.Message}", path, chunkDigest: digestHex, inner: e);
        }

        if (verify is not null && !verify(data))
        {
            Interlocked.Increment(ref rejected);
            Remove(digestHex);
            return null;
        }

        try
        {
            File.SetLastAccessTimeUtc(path, DateTime.UtcNow);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            // Evicted by another process meanwhile: the bytes read are still good.
        }

        Interlocked.Increment(ref hits);
        return data;
    }

    /// <summary>
    /// The cached bytes of a chunk, or null; dispose the answer when done with its bytes. Unchecked: the caller
    /// verifies them, then calls <see cref="Touch"/> (a good entry) or <see cref="Reject"/> (a bad one). Read past the
    /// page cache (O_DIRECT) where the file system allows: the entry goes from disk into an aligned buffer of the
    /// cache's own, and the caller decodes it there.
    /// </summary>
    public CachedChunk? TryRead(string digestHex, int maxBytes)
    {
        var path = EntryPath(digestHex);
        var fd = Open(path, ORdOnly | OCloExec | (Volatile.Read(ref directUnsupported) ? 0 : ODirect), 0);
        if (fd < 0 && Marshal.GetLastPInvokeError() == EInval)
        {
            Volatile.Write(ref directUnsupported, true);
            fd = Open(path, ORdOnly | OCloExec, 0);
        }

        if (fd < 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            if (errno == ENoEnt)
            {
                Interlocked.Increment(ref misses);
                return null;
            }

            throw new DatastoreException($"cannot read a cached chunk (errno {errno})", path, chunkDigest: digestHex);
        }

        var buffer = RentAligned();
        try
        {
            var done = 0L;
            while (true)
            {
                // Whole pages at page-aligned offsets, as O_DIRECT needs; a short read is the end of the file.
                var want = buffer.Capacity - done;
                if (want <= 0)
                {
                    break;
                }

                var n = PRead(fd, buffer.Pointer + (nint)done, (nuint)want, done);
                if (n < 0)
                {
                    var errno = Marshal.GetLastPInvokeError();
                    if (errno == EIntr)
                    {
                        continue;
                    }

                    throw new DatastoreException($"cannot read a cached chunk (errno {errno})", path, chunkDigest: digestHex);
                }

                done += n;
                if (n < want)
                {
                    break;
                }
            }

            if (done > maxBytes || done >= buffer.Capacity)
            {
                ReturnAligned(buffer);
                Reject(digestHex);
                return null;
            }

            return new CachedChunk(this, buffer, (int)done);
        }
        catch
        {
            ReturnAligned(buffer);
            throw;
        }
        finally
        {
            _ = Close(fd);
        }
    }

    /// <summary>Marks an entry as just used (its access time orders eviction) and counts the hit.</summary>
    public void Touch(string digestHex)
    {
        Interlocked.Increment(ref hits);
        try
        {
            File.SetLastAccessTimeUtc(EntryPath(digestHex), DateTime.UtcNow);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            // Evicted by another process meanwhile: the bytes read are still good.
        }
    }

    /// <summary>Counts an entry the caller rejected after <see cref="TryRead"/> (then removed).</summary>
    public void Reject(string digestHex)
    {
        Interlocked.Increment(ref rejected);
        Remove(digestHex);
    }

    /// <summary>Stores a chunk (skipped when present or larger than the whole bound); evicts what must go first.</summary>
    public void Put(string digestHex, ReadOnlySpan<byte> data)
    {
        var path = EntryPath(digestHex);
        if (data.Length > MaxBytes || File.Exists(path))
        {
            return;
        }

        var tmp = Path.Combine(tmpDir, $"{digestHex}.{Environment.ProcessId}.{Guid.NewGuid():N}");
        try
        {
            WriteEntry(tmp, data);

            var length = data.Length;
            WithLock(() =>
            {
                if (File.Exists(path))
                {
                    File.Delete(tmp);
                    return 0;
                }

                var usage = ReadUsage();
                if (usage + length > MaxBytes)
                {
                    usage = Evict(MaxBytes - length);
                }

                System.IO.Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                File.Move(tmp, path, overwrite: true);
                WriteUsage(usage + length);
                Interlocked.Increment(ref stored);
                return 0;
            });
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            TryDelete(tmp);
            throw new DatastoreException($"cannot write to the chunk cache: {e.Message}", path, chunkDigest: digestHex, inner: e);
        }
    }

    /// <summary>
    /// Writes a new file past the page cache (O_DIRECT through an aligned bounce buffer, then cut to its length) where
    /// the file system allows: a cache entry is read back rarely and then from disk, and writing it through the page
    /// cache costs more CPU than fetching it did. Buffered otherwise, or when the entry is larger than the buffer.
    /// </summary>
    private void WriteEntry(string path, ReadOnlySpan<byte> data)
    {
        if (!Volatile.Read(ref directUnsupported) && data.Length < AlignedCapacity)
        {
            var fd = Open(path, OWrOnly | OCreat | OExcl | OCloExec | ODirect, 0x1B6);
            if (fd < 0 && Marshal.GetLastPInvokeError() == EInval)
            {
                Volatile.Write(ref directUnsupported, true);
            }
            else if (fd < 0)
            {
                throw new IOException($"cannot create {path} (errno {Marshal.GetLastPInvokeError()})");
            }
            else
            {
                try
                {
                    lock (bounceGate)
                    {
                        bounce ??= RentAligned();
                        var padded = (data.Length + Alignment - 1) / Alignment * Alignment;
                        var target = new Span<byte>((void*)bounce.Pointer, padded);
                        data.CopyTo(target);
                        target[data.Length..].Clear();
                        var done = 0L;
                        while (done < padded)
                        {
                            var n = PWrite(fd, bounce.Pointer + (nint)done, (nuint)(padded - done), done);
                            if (n < 0 && Marshal.GetLastPInvokeError() == EIntr)
                            {
                                continue;
                            }

                            if (n <= 0)
                            {
                                throw new IOException($"cannot write {path} (errno {Marshal.GetLastPInvokeError()})");
                            }

                            done += n;
                        }
                    }

                    if (FTruncate(fd, data.Length) != 0)
                    {
                        throw new IOException($"cannot set the length of {path} (errno {Marshal.GetLastPInvokeError()})");
                    }
                }
                finally
                {
                    _ = Close(fd);
                }

                return;
            }
        }

        using var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.Write, FileShare.None);
        RandomAccess.Write(handle, data, 0);
    }

    private AlignedBuffer RentAligned()
    {
        lock (alignedGate)
        {
            if (alignedPool.Count > 0)
            {
                return alignedPool.Pop();
            }
        }

        return new AlignedBuffer((nint)NativeMemory.AlignedAlloc(AlignedCapacity, Alignment), AlignedCapacity);
    }

    internal void ReturnAligned(AlignedBuffer buffer)
    {
        lock (alignedGate)
        {
            if (!disposed && alignedPool.Count < 16)
            {
                alignedPool.Push(buffer);
                return;
            }
        }

        NativeMemory.AlignedFree((void*)buffer.Pointer);
    }

    /// <summary>Native memory aligned for O_DIRECT; pages are committed only where written.</summary>
    internal sealed record AlignedBuffer(nint Pointer, int Capacity);

    /// <summary>Drops an entry (a rejected or vanished chunk).</summary>
    public void Remove(string digestHex)
    {
        var path = EntryPath(digestHex);
        WithLock(() =>
        {
            var info = new FileInfo(path);
            if (info.Exists)
            {
                var size = info.Length;
                File.Delete(path);
                WriteUsage(Math.Max(0, ReadUsage() - size));
            }

            return 0;
        });
    }

    public void Dispose()
    {
        lockHandle.Dispose();
        usageHandle.Dispose();
        lock (alignedGate)
        {
            disposed = true;
            while (alignedPool.Count > 0)
            {
                NativeMemory.AlignedFree((void*)alignedPool.Pop().Pointer);
            }
        }

        lock (bounceGate)
        {
            if (bounce is not null)
            {
                NativeMemory.AlignedFree((void*)bounce.Pointer);
                bounce = null;
            }
        }
    }

    private string EntryPath(string digestHex)
    {
        if (digestHex.Length != 64 || !digestHex.All(c => c is (>= '0' and <= '9') or (>= 'a' and <= 'f')))
        {
            throw new ArgumentException($"'{digestHex}' is not a lower-case SHA-256 hex digest", nameof(digestHex));
        }

        return Path.Combine(chunksDir, digestHex[..4], digestHex);
    }

    /// <summary>Under the lock: deletes least recently used entries until at most <paramref name="target"/> bytes (and 90 % of the bound) remain.</summary>
    private long Evict(long target)
    {
        var goal = Math.Min(target, MaxBytes - (MaxBytes / 10));
        var entries = Scan(removeStale: true);
        var total = entries.Sum(e => e.Size);
        foreach (var entry in entries.OrderBy(e => e.Access))
        {
            if (total <= goal)
            {
                break;
            }

            if (TryDelete(entry.Path))
            {
                total -= entry.Size;
                Interlocked.Increment(ref evicted);
            }
        }

        return total;
    }

    private List<(string Path, long Size, DateTime Access)> Scan(bool removeStale)
    {
        var result = new List<(string, long, DateTime)>();
        foreach (var file in new DirectoryInfo(chunksDir).EnumerateFiles("*", new EnumerationOptions { RecurseSubdirectories = true, IgnoreInaccessible = true, AttributesToSkip = 0 }))
        {
            result.Add((file.FullName, file.Length, file.LastAccessTimeUtc));
        }

        if (removeStale)
        {
            // Temp files of writers that died (older than an hour; a live writer renames within seconds).
            foreach (var file in new DirectoryInfo(tmpDir).EnumerateFiles())
            {
                if (file.LastWriteTimeUtc < DateTime.UtcNow.AddHours(-1))
                {
                    TryDelete(file.FullName);
                }
            }
        }

        return result;
    }

    private static bool TryDelete(string path)
    {
        try
        {
            File.Delete(path);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private long ReadUsage()
    {
        Span<byte> buffer = stackalloc byte[32];
        var n = RandomAccess.Read(usageHandle, buffer, 0);
        return long.TryParse(buffer[..n].Trim((byte)' '), NumberStyles.None, CultureInfo.InvariantCulture, out var v) ? v : 0;
    }

    private void WriteUsage(long value)
    {
        // Fixed width, so a shorter number never leaves digits of a longer one behind.
        var text = value.ToString(CultureInfo.InvariantCulture).PadLeft(20);
        RandomAccess.Write(usageHandle, System.Text.Encoding.ASCII.GetBytes(text), 0);
    }

    private T WithLock<T>(Func<T> action)
    {
        // The in-process lock first: flock is per open file, so threads of one instance share it.
        lock (gate)
        {
            var fd = (int)lockHandle.DangerousGetHandle();
            while (Flock(fd, LockEx) != 0)
            {
                var errno = Marshal.GetLastPInvokeError();
                if (errno != 4)
                {
                    throw new DatastoreException($"cannot lock the chunk cache (errno {errno})", Path.Combine(Directory, "lock"));
                }
            }

            try
            {
                return action();
            }
            finally
            {
                _ = Flock(fd, LockUn);
            }
        }
    }

    [LibraryImport("libc", EntryPoint = "flock", SetLastError = true)]
    private static partial int Flock(int fd, int operation);

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "pread", SetLastError = true)]
    private static partial nint PRead(int fd, nint buffer, nuint count, long offset);

    [LibraryImport("libc", EntryPoint = "pwrite", SetLastError = true)]
    private static partial nint PWrite(int fd, nint buffer, nuint count, long offset);

    [LibraryImport("libc", EntryPoint = "ftruncate", SetLastError = true)]
    private static partial int FTruncate(int fd, long length);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int Close(int fd);
}

/// <summary>A cache entry read into the cache's aligned memory; dispose it when done with <see cref="Span"/>.</summary>
public sealed unsafe class CachedChunk : IDisposable
{
    private readonly ChunkDiskCache owner;
    private ChunkDiskCache.AlignedBuffer? buffer;

    internal CachedChunk(ChunkDiskCache owner, ChunkDiskCache.AlignedBuffer buffer, int length)
    {
        this.owner = owner;
        this.buffer = buffer;
        Length = length;
    }

    public int Length { get; }

    public ReadOnlySpan<byte> Span => buffer is { } b ? new ReadOnlySpan<byte>((void*)b.Pointer, Length) : throw new ObjectDisposedException(nameof(CachedChunk));

    public void Dispose()
    {
        if (Interlocked.Exchange(ref buffer, null) is { } b)
        {
            owner.ReturnAligned(b);
        }
    }
}
