using Microsoft.Win32.SafeHandles;

namespace RestoreFs.Nbd;

/// <summary>
/// A throwaway copy-on-write layer over a read-only <see cref="IBlockSource"/>: writes land in the overlay (in blocks of
/// <see cref="BlockSize"/> bytes, a partly written block is first filled from the base), reads of written blocks come
/// from it, everything else from the base, which is never written. The overlay lives in a temporary file (deleted on
/// open, so it disappears with the process) or, without one, in memory; it holds at most <c>maxBytes</c> and refuses
/// writes beyond with <see cref="NbdOverlayFullException"/>. Thread-safe; <see cref="Dispose"/> frees it.
/// </summary>
public sealed class OverlayBlockSource : IWritableBlockSource, IDisposable
{
    public const int BlockSize = 4096;

    private readonly IBlockSource baseSource;
    private readonly long maxBytes;
    private readonly SafeFileHandle? file;
    private readonly FileStream? stream;
    private readonly Dictionary<long, long> slots = new(); // block index → slot in the overlay
    private readonly List<byte[]> memory = [];
    private readonly SemaphoreSlim writeGate = new(1, 1);
    private readonly ReaderWriterLockSlim map = new();
    private long used;
    private bool disposed;

    /// <param name="file">Where the overlay's bytes go (created 0600, removed from the directory at once); null: memory.</param>
    public OverlayBlockSource(IBlockSource baseSource, string? file, long maxBytes)
    {
        this.baseSource = baseSource;
        this.maxBytes = maxBytes;
        if (file is not null)
        {
            stream = new FileStream(file, new FileStreamOptions
            {
                Mode = FileMode.CreateNew, Access = FileAccess.ReadWrite, Share = FileShare.None,
                UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
            });
            this.file = stream.SafeFileHandle;
            File.Delete(file);
        }
    }

    public long Size => baseSource.Size;

    /// <summary>Bytes held by the overlay (written blocks × block size).</summary>
    public long WrittenBytes => Interlocked.Read(ref used);

    /// <summary>True when any byte of [offset, offset+length) lies in a written block.</summary>
    public bool Touches(long offset, long length)
    {
        if (length <= 0)
        {
            return false;
        }

        map.EnterReadLock();
        try
        {
            if (slots.Count == 0)
            {
                return false;
            }

            var first = offset / BlockSize;
            var last = (offset + length - 1) / BlockSize;
            if (last - first + 1 > slots.Count)
            {
                return slots.Keys.Any(b => b >= first && b <= last);
            }

            for (var b = first; b <= last; b++)
            {
                if (slots.ContainsKey(b))
                {
                    return true;
                }
            }

            return false;
        }
        finally
        {
            map.ExitReadLock();
        }
    }

    public async ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct)
    {
        var position = offset;
        var end = offset + destination.Length;
        while (position < end)
        {
            var block = position / BlockSize;
            var slot = SlotOf(block);
            // A run: consecutive blocks that are all written (or all not).
            var runEnd = Math.Min(end, (block + 1) * BlockSize);
            while (runEnd < end && (SlotOf(runEnd / BlockSize) >= 0) == (slot >= 0))
            {
                runEnd = Math.Min(end, runEnd + BlockSize);
            }

            if (slot < 0)
            {
                await baseSource.ReadAsync(position, destination.Slice((int)(position - offset), (int)(runEnd - position)), ct).ConfigureAwait(false);
                position = runEnd;
                continue;
            }

            while (position < runEnd)
            {
                var b = position / BlockSize;
                var within = (int)(position - b * BlockSize);
                var n = (int)Math.Min(runEnd - position, BlockSize - within);
                ReadSlot(SlotOf(b), within, destination.Span.Slice((int)(position - offset), n));
                position += n;
            }
        }
    }

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        if (offset < 0 || offset > Size || data.Length > Size - offset)
        {
            throw new NbdException($"write of {offset}+{data.Length} is outside the {Size}-byte export");
        }

        await writeGate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            var position = offset;
            var end = offset + data.Length;
            var whole = new byte[BlockSize];
            while (position < end)
            {
                var block = position / BlockSize;
                var within = (int)(position - block * BlockSize);
                var n = (int)Math.Min(end - position, BlockSize - within);
                var slot = SlotOf(block);
                if (slot < 0)
                {
                    if (used + BlockSize > maxBytes)
                    {
                        throw new NbdOverlayFullException($"the overlay is full ({maxBytes} bytes): write at {position} refused");
                    }

                    // A new block: its bytes outside this write come from the base.
                    var start = block * BlockSize;
                    var length = (int)Math.Min(BlockSize, Size - start);
                    Array.Clear(whole);
                    if (n < length)
                    {
                        await baseSource.ReadAsync(start, whole.AsMemory(0, length), ct).ConfigureAwait(false);
                    }

                    data.Span.Slice((int)(position - offset), n).CopyTo(whole.AsSpan(within));
                    slot = used / BlockSize;
                    WriteSlot(slot, 0, whole);
                    map.EnterWriteLock();
                    try
                    {
                        slots[block] = slot;
                        used += BlockSize;
                    }
                    finally
                    {
                        map.ExitWriteLock();
                    }
                }
                else
                {
                    WriteSlot(slot, within, data.Span.Slice((int)(position - offset), n));
                }

                position += n;
            }
        }
        finally
        {
            writeGate.Release();
        }
    }

    /// <summary>Written blocks are data; the rest is as the base says.</summary>
    public IEnumerable<BlockExtent> GetExtents(long offset, long length)
    {
        foreach (var x in baseSource.GetExtents(offset, length))
        {
            yield return x.IsZero && Touches(x.Offset, x.Length) ? x with { IsZero = false } : x;
        }
    }

    private long SlotOf(long block)
    {
        map.EnterReadLock();
        try
        {
            return slots.TryGetValue(block, out var slot) ? slot : -1;
        }
        finally
        {
            map.ExitReadLock();
        }
    }

    private void ReadSlot(long slot, int within, Span<byte> target)
    {
        if (file is null)
        {
            lock (memory)
            {
                memory[(int)slot].AsSpan(within, target.Length).CopyTo(target);
            }

            return;
        }

        var done = 0;
        while (done < target.Length)
        {
            var n = RandomAccess.Read(file, target[done..], slot * BlockSize + within + done);
            if (n <= 0)
            {
                throw new IOException($"the overlay file ended inside block slot {slot}");
            }

            done += n;
        }
    }

    private void WriteSlot(long slot, int within, ReadOnlySpan<byte> bytes)
    {
        if (file is null)
        {
            lock (memory)
            {
                while (memory.Count <= slot)
                {
                    memory.Add(new byte[BlockSize]);
                }

                bytes.CopyTo(memory[(int)slot].AsSpan(within));
            }

            return;
        }

        RandomAccess.Write(file, bytes, slot * BlockSize + within);
    }

    public void Dispose()
    {
        writeGate.Wait();
        try
        {
            if (disposed)
            {
                return;
            }

            disposed = true;
            stream?.Dispose();
            lock (memory)
            {
                memory.Clear();
            }

            map.EnterWriteLock();
            slots.Clear();
            used = 0;
            map.ExitWriteLock();
        }
        finally
        {
            writeGate.Release();
        }
    }
}
