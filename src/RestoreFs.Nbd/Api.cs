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
