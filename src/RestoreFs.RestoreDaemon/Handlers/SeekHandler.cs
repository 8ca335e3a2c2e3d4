using RestoreFs.RestoreApi;

namespace RestoreFs.RestoreDaemon.Handlers;

/// <summary><c>seek?path=B64&amp;offset=N&amp;whence=data|hole</c>: lseek(SEEK_DATA/SEEK_HOLE) on a regular file;
/// <c>{"data":{"offset":N}}</c>, -1 when the kernel answers ENXIO (no data/hole at or after the offset).</summary>
internal sealed class SeekHandler(VolumeResolver volumes)
{
    public async Task HandleAsync(Stream stream, Http.Request request, CancellationToken ct)
    {
        var (path, mountPoint) = await volumes.ResolveAsync(RequestArgs.PathOf(request), ct).ConfigureAwait(false);
        if (mountPoint is null)
        {
            throw new BadRequestException("seek needs a file inside a volume");
        }

        var offset = RequestArgs.Number(request, "offset", 0, long.MaxValue);
        var whence = request.Query.GetValueOrDefault("whence") switch
        {
            "data" => Native.LibC.SEEK_DATA,
            "hole" => Native.LibC.SEEK_HOLE,
            var other => throw new BadRequestException($"whence '{other}' is not data or hole"),
        };
        long found;
        using (var file = VolumeFiles.OpenFile(mountPoint, path.Rest, out _))
        {
            found = Native.LibC.LSeek(file.Value, offset, whence);
            if (found < 0)
            {
                var errno = Native.LibC.Errno;
                if (errno != Native.LibC.ENXIO)
                {
                    throw new BadRequestException($"{VolumeFiles.Show(path.Rest)}: lseek: {Native.LibC.StrError(errno)}");
                }

                found = -1;
            }
        }

        await Answers.JsonAsync(stream, w =>
        {
            w.WriteStartObject();
            w.WriteNumber("offset", found);
            w.WriteEndObject();
        }, ct).ConfigureAwait(false);
    }
}
