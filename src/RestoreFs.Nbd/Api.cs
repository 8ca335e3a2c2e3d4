namespace RestoreFs.Nbd;

/// <summary>What an NBD export serves: a read-only block image.</summary>
public interface IBlockSource
{
    long Size { get; }

    /// <summary>Fills <paramref name="destination"/> exactly from <paramref name="offset"/>.</summary>
    ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct);

    /// <summary>Zero and data runs covering [offset, offset+length), for <c>base:allocation</c>.</summary>
    IEnumerable<BlockExtent> GetExtents(long offset, long length);
}

/// <summary>A run of the image that is all zero (a hole) or data.</summary>
public readonly record struct BlockExtent(long Offset, long Length, bool IsZero);

/// <summary>Where the server listens: a unix socket (default) or TCP on 127.0.0.1.</summary>
public sealed record NbdServerOptions
{
    public string? UnixSocketPath { get; init; }

    /// <summary>TCP port on 127.0.0.1 (0 = pick one) when no unix socket is given.</summary>
    public int? TcpPort { get; init; }

    public int MaxRequestBytes { get; init; } = 32 * 1024 * 1024;

    /// <summary>Per connection: reply bytes read but not yet sent; over this the server reads no new requests.</summary>
    public long MaxInFlightBytes { get; init; } = 64L * 1024 * 1024;
}

/// <summary>An NBD protocol or attach failure.</summary>
public class NbdException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>An export that takes writes (NBD_CMD_WRITE); the server then offers it without the read-only flag.</summary>
public interface IWritableBlockSource : IBlockSource
{
    /// <summary>Writes <paramref name="data"/> at <paramref name="offset"/> (inside the export, checked by the server).</summary>
    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken ct);
}

/// <summary>A write that does not fit into an overlay's bound (answered ENOSPC).</summary>
public sealed class NbdOverlayFullException(string message) : NbdException(message);
