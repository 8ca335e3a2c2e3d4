using RestoreFs.RestoreApi;

namespace RestoreFs.RestoreDaemon.Handlers;

/// <summary><c>read?path=B64&amp;offset=N&amp;length=N</c>: up to <c>length</c> bytes of a regular file from <c>offset</c> (fewer at its end).</summary>
internal sealed class ReadHandler(VolumeResolver volumes, int maxReadBytes)
{
    public async Task HandleAsync(Stream stream, Http.Request request, CancellationToken ct)
    {
        var (path, mountPoint) = await volumes.ResolveAsync(RequestArgs.PathOf(request), ct).ConfigureAwait(false);
        if (mountPoint is null)
        {
            throw new BadRequestException("read needs a file inside a volume");
        }

        var offset = RequestArgs.Number(request, "offset", 0, long.MaxValue);
        var length = (int)RequestArgs.Number(request, "length", 0, maxReadBytes);
        using var file = VolumeFiles.OpenFile(mountPoint, path.Rest, out var st);
        var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(Math.Max(1, length));
        try
        {
            var n = offset >= (long)st.Size ? 0 : Native.LibC.PReadAll(file.Value, buffer.AsSpan(0, (int)Math.Min(length, (long)st.Size - offset)), offset);
            await stream.WriteAsync(Http.FormatResponseHead(200, "OK", "application/octet-stream", n), ct).ConfigureAwait(false);
            await stream.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
            await stream.FlushAsync(ct).ConfigureAwait(false);
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
