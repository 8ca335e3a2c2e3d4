using System.Text;
using RestoreFs.Fuse;

namespace RestoreFs.Fuse.Tests;

/// <summary>A small in-memory filesystem for mount tests: directories, files from byte arrays, symlinks, a failing file.</summary>
internal sealed class MemDir(ulong ino, bool immutable = true, bool failListing = false) : FuseNode, IFuseDirectory
{
    public readonly Dictionary<string, FuseNode> Children = new(StringComparer.Ordinal);
    public int Lookups;
    public int Listings;

    public TimeSpan NegativeTimeout => TimeSpan.FromSeconds(30);

    public bool ListingIsImmutable => immutable;

    public override FuseAttributes GetAttributes() => new(ino, 0, 0x416D, 0, 0, DateTimeOffset.FromUnixTimeSeconds(1700000000), 2);

    public ValueTask<FuseNode?> LookupAsync(ReadOnlyMemory<byte> name, FuseRequestContext ctx, CancellationToken ct)
    {
        Interlocked.Increment(ref Lookups);
        return ValueTask.FromResult(Children.GetValueOrDefault(Encoding.UTF8.GetString(name.Span)));
    }

    public ValueTask<IReadOnlyList<FuseDirectoryEntry>> ListAsync(FuseRequestContext ctx, CancellationToken ct)
    {
        Interlocked.Increment(ref Listings);
        if (failListing)
        {
            throw new FuseException(5, "this listing always fails"); // EIO
        }

        return ValueTask.FromResult<IReadOnlyList<FuseDirectoryEntry>>(Children.Select(c => new FuseDirectoryEntry(Encoding.UTF8.GetBytes(c.Key), c.Value)).ToList());
    }
}

internal sealed class MemFile(ulong ino, byte[] data, bool fail = false) : FuseNode, IFuseFile
{
    /// <summary>What a read of <paramref name="data"/> at <paramref name="offset"/> returns: the bytes copied, 0 at or past the end.</summary>
    public static int CopyAt(byte[] data, long offset, Span<byte> buffer)
    {
        if (offset >= data.Length)
        {
            return 0;
        }

        var n = (int)Math.Min(buffer.Length, data.Length - offset);
        data.AsSpan((int)offset, n).CopyTo(buffer);
        return n;
    }

    public override FuseAttributes GetAttributes() => new(ino, (ulong)data.Length, 0x8124, 0, 0, DateTimeOffset.FromUnixTimeSeconds(1700000000));

    public ValueTask<IFuseFileHandle> OpenAsync(FuseOpenFlags flags, FuseRequestContext ctx, CancellationToken ct) =>
        ValueTask.FromResult<IFuseFileHandle>(new Handle(data, fail));

    private sealed class Handle(byte[] data, bool fail) : IFuseFileHandle
    {
        public bool KeepCache => true;

        public bool DirectIo => false;

        public async ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct)
        {
            if (fail)
            {
                throw new FuseException(5, "this file always fails");
            }

            if (offset % 3 == 0)
            {
                await Task.Yield(); // some replies come from another thread
            }

            return CopyAt(data, offset, buffer.Span);
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}

internal sealed class MemLink(ulong ino, string target) : FuseNode, IFuseSymlink
{
    public override FuseAttributes GetAttributes() => new(ino, (ulong)target.Length, 0xA1FF, 0, 0, DateTimeOffset.FromUnixTimeSeconds(1700000000));

    public ValueTask<byte[]> ReadLinkAsync(FuseRequestContext ctx, CancellationToken ct) => ValueTask.FromResult(Encoding.UTF8.GetBytes(target));
}

/// <summary>A file whose reads block their thread until <paramref name="gate"/> opens, as a read that waits on storage
/// in node code that is not asynchronous does (a pxar chunk decoded in place).</summary>
internal sealed class BlockingFile(ulong ino, byte[] data, ManualResetEventSlim gate) : FuseNode, IFuseFile
{
    private readonly byte[] data = data;
    private readonly ManualResetEventSlim gate = gate;
    private int entered;

    /// <summary>Reads that have started (and block until the gate opens).</summary>
    public int Entered => Volatile.Read(ref entered);

    public override FuseAttributes GetAttributes() => new(ino, (ulong)data.Length, 0x8124, 0, 0, DateTimeOffset.FromUnixTimeSeconds(1700000000));

    public ValueTask<IFuseFileHandle> OpenAsync(FuseOpenFlags flags, FuseRequestContext ctx, CancellationToken ct) =>
        ValueTask.FromResult<IFuseFileHandle>(new Handle(this));

    private sealed class Handle(BlockingFile file) : IFuseFileHandle
    {
        public bool KeepCache => true;

        public bool DirectIo => false;

        public ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct)
        {
            Interlocked.Increment(ref file.entered);
            file.gate.Wait(TimeSpan.FromMinutes(1));
            return ValueTask.FromResult(MemFile.CopyAt(file.data, offset, buffer.Span));
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}

/// <summary>A file whose reads sometimes block their thread for a few milliseconds (0–4 ms, by offset and a seed), as
/// node code that decodes a chunk in place does now and then.</summary>
internal sealed class JitteryFile(ulong ino, byte[] data) : FuseNode, IFuseFile
{
    private readonly byte[] data = data;

    public override FuseAttributes GetAttributes() => new(ino, (ulong)data.Length, 0x8124, 0, 0, DateTimeOffset.FromUnixTimeSeconds(1700000000));

    public ValueTask<IFuseFileHandle> OpenAsync(FuseOpenFlags flags, FuseRequestContext ctx, CancellationToken ct)
    {
        if (ino % 7 == 0)
        {
            Thread.Sleep((int)(ino % 3)); // some opens block too
        }

        return ValueTask.FromResult<IFuseFileHandle>(new Handle(this));
    }

    private sealed class Handle(JitteryFile file) : IFuseFileHandle
    {
        public bool KeepCache => true;

        public bool DirectIo => false;

        public ValueTask<int> ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct)
        {
            var pause = (int)(((file.GetAttributes().Ino * 2654435761UL) + (ulong)offset) % 8);
            if (pause < 5)
            {
                Thread.Sleep(pause);
            }

            return ValueTask.FromResult(MemFile.CopyAt(file.data, offset, buffer.Span));
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
