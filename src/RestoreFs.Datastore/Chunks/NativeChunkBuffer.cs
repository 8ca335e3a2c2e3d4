using System.Runtime.InteropServices;

namespace RestoreFs.Datastore;

/// <summary>
/// A decoded chunk's memory outside the managed heap: anonymous pages mapped for it and unmapped the moment it is
/// freed. A chunk buffer's life is known exactly (decoded, cached, evicted), so there is no reason to leave it to the
/// collector, which keeps dropped multi-MiB arrays resident until its next full collection — a walk of a large
/// archive piled up tens of MiB that way. Freed memory goes back to the system at once, and no collection is needed to
/// keep the heap small. Not thread-safe: its owner frees it only once nothing can read it any more
/// (<see cref="DynamicImageReader"/> copies out under its lock, <see cref="ImageReader"/> counts the readers of a
/// chunk). Huge pages were tried for the fixed 4 MiB chunks: a fresh buffer faulted in ten times faster on average,
/// but the first huge pages of a process took up to 13 ms on this kind of virtual machine (the host backs fresh guest
/// memory lazily), and a fresh mount's first read varied 5–16 ms instead of 6–8.
/// </summary>
public sealed unsafe partial class NativeChunkBuffer : IDisposable
{
    private const int ProtRead = 1;
    private const int ProtWrite = 2;
    private const int MapPrivate = 0x02;
    private const int MapAnonymous = 0x20;
    private const int MapPopulate = 0x8000;
    private const int MremapMayMove = 1;
    private static readonly nint MapFailed = -1;

    private byte* pointer;

    /// <summary>Maps <paramref name="length"/> bytes with their pages faulted in at once (one call into the kernel
    /// instead of a fault per page as the decoder first writes them). Throws <see cref="OutOfMemoryException"/> when the
    /// system refuses.</summary>
    public NativeChunkBuffer(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        var mapped = Mmap(0, (nuint)length, ProtRead | ProtWrite, MapPrivate | MapAnonymous | MapPopulate, -1, 0);
        if (mapped == MapFailed)
        {
            throw new OutOfMemoryException($"cannot map {length} bytes for a chunk buffer (errno {Marshal.GetLastPInvokeError()})");
        }

        pointer = (byte*)mapped;
        Length = length;
    }

    public int Length { get; private set; }

    private static NativeChunkBuffer? prepared;

    /// <summary>
    /// Maps one buffer of <paramref name="length"/> bytes with its pages faulted in, for <see cref="TakePrepared"/>: a
    /// mount does this on its start-up thread, beside the main thread's work, so that its first chunk decode does
    /// not fault in a fresh 4 MiB (about 1.5 ms here) on the first read's path. Replaces a buffer prepared before.
    /// </summary>
    public static void Prepare(int length)
    {
        var buffer = new NativeChunkBuffer(length);
        Interlocked.Exchange(ref prepared, buffer)?.Dispose();
    }

    /// <summary>The buffer <see cref="Prepare"/> made, resized to <paramref name="length"/> bytes (its pages stay), if
    /// nobody took it yet: a mount of container backups only takes it for its first archive chunk.</summary>
    public static NativeChunkBuffer? TakePrepared(int length)
    {
        var buffer = Interlocked.Exchange(ref prepared, null);
        if (buffer is not null && buffer.Length != length)
        {
            try
            {
                buffer.Resize(length);
            }
            catch (OutOfMemoryException)
            {
                buffer.Dispose();
                return null;
            }
        }

        return buffer;
    }

    /// <summary>Where the bytes are; valid until <see cref="Dispose"/>.</summary>
    public byte* Pointer
    {
        get
        {
            ObjectDisposedException.ThrowIf(pointer is null, this);
            return pointer;
        }
    }

    public Span<byte> Span => new(Pointer, Length);

    public Span<byte> Slice(int start, int count)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((long)start + count, Length);
        return new Span<byte>(Pointer + start, count);
    }

    /// <summary>
    /// Gives the buffer a new length, keeping its pages (and what they hold, up to the shorter length): growing maps
    /// only the pages added, shrinking unmaps the tail. A free buffer of another length is reused this way instead of
    /// being unmapped while a new one is mapped — each fresh page costs a fault and clearing the page on first use.
    /// </summary>
    public void Resize(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        var moved = Mremap((nint)Pointer, (nuint)Length, (nuint)length, MremapMayMove);
        if (moved == MapFailed)
        {
            throw new OutOfMemoryException($"cannot resize a chunk buffer from {Length} to {length} bytes (errno {Marshal.GetLastPInvokeError()})");
        }

        pointer = (byte*)moved;
        Length = length;
    }

    /// <summary>Unmaps the pages (their memory is the system's again at once). Idempotent.</summary>
    public void Dispose()
    {
        if (pointer is not null)
        {
            _ = Munmap((nint)pointer, (nuint)Length);
            pointer = null;
        }

        GC.SuppressFinalize(this);
    }

    // A buffer lost without Dispose (a bug, or a reader abandoned undisposed) is not leaked for good.
    ~NativeChunkBuffer()
    {
        if (pointer is not null)
        {
            _ = Munmap((nint)pointer, (nuint)Length);
        }
    }

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static partial nint Mmap(nint address, nuint length, int protection, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "mremap", SetLastError = true)]
    private static partial nint Mremap(nint address, nuint oldLength, nuint newLength, int flags);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    private static partial int Munmap(nint address, nuint length);
}
