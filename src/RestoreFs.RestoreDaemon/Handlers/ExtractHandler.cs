using RestoreFs.RestoreApi;
using RestoreFs.RestoreDaemon.Server;
using ZstdSharp;

namespace RestoreFs.RestoreDaemon.Handlers;

/// <summary>
/// <c>extract?path=B64&amp;format=tar|plain[&amp;zstd=1]</c>: a tree as tar or one file as it is, streamed; at most
/// <c>maxExtractions</c> at once (more are refused), and the watchdog does not expire while one runs.
/// </summary>
internal sealed class ExtractHandler(VolumeResolver volumes, int maxExtractions, Watchdog watchdog)
{
    private readonly SemaphoreSlim extractions = new(maxExtractions, maxExtractions);

    public async Task HandleAsync(Stream stream, Http.Request request, CancellationToken ct)
    {
        var (path, mountPoint) = await volumes.ResolveAsync(RequestArgs.PathOf(request), ct).ConfigureAwait(false);
        if (mountPoint is null)
        {
            throw new BadRequestException("extract needs a file or directory inside a volume, not a disk or volume level");
        }

        var format = request.Query.GetValueOrDefault("format") ?? "tar";
        if (format is not ("tar" or "plain"))
        {
            throw new BadRequestException($"format '{format}' is not supported (plain, tar)");
        }

        if (!extractions.Wait(0, CancellationToken.None))
        {
            throw new BadRequestException($"maximum concurrent extractions ({maxExtractions}) reached, try again later");
        }

        try
        {
            using var busy = watchdog.Busy();
            var (parent, name) = VolumeFiles.Resolve(mountPoint, path.Rest);
            using (parent)
            {
                var st = default(Native.StatInfo);
                if (name.Length > 0 && Native.LibC.Stat(parent.Value, name, out st) < 0)
                {
                    throw new BadRequestException($"{VolumeFiles.Show(path.Rest)}: no such file or directory");
                }

                if (format == "plain" && (name.Length == 0 || st.Kind != Native.LibC.S_IFREG))
                {
                    throw new BadRequestException("plain extraction needs a regular file; ask for tar for a directory");
                }

                await stream.WriteAsync(Http.FormatResponseHead(200, "OK", "application/octet-stream", null), ct).ConfigureAwait(false);
                var body = new ChunkedWriteStream(stream);
                var buffered = new BufferedStream(body, 256 * 1024);
                Stream sink = RequestArgs.Flag(request, "zstd") ? new CompressionStream(buffered, 3, leaveOpen: true) : buffered;
                if (format == "plain")
                {
                    using var file = VolumeFiles.OpenFile(mountPoint, path.Rest, out var fst);
                    var chunk = new byte[1 << 20];
                    for (long done = 0; done < (long)fst.Size;)
                    {
                        var n = Native.LibC.PReadAll(file.Value, chunk.AsSpan(0, (int)Math.Min(chunk.Length, (long)fst.Size - done)), done);
                        if (n == 0)
                        {
                            break;
                        }

                        await sink.WriteAsync(chunk.AsMemory(0, n), ct).ConfigureAwait(false);
                        done += n;
                    }
                }
                else
                {
                    var tar = new TarWriter(sink);
                    await tar.WriteTreeAsync(parent.Value, name, name.Length == 0 ? "."u8.ToArray() : name, ct).ConfigureAwait(false);
                    await tar.FinishAsync(ct).ConfigureAwait(false);
                }

                if (sink != buffered)
                {
                    await sink.DisposeAsync().ConfigureAwait(false);
                }

                await buffered.FlushAsync(ct).ConfigureAwait(false);
                await body.CompleteAsync(ct).ConfigureAwait(false);
            }
        }
        finally
        {
            extractions.Release();
        }
    }
}
