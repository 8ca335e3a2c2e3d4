using RestoreFs.RestoreApi;

namespace RestoreFs.RestoreDaemon.Handlers;

/// <summary><c>xattrs?path=B64</c>: every extended attribute of one entry (a symlink's own; the volume root for a
/// volume path), values exact or error entries (see <see cref="XattrReader"/>).</summary>
internal sealed class XattrsHandler(VolumeResolver volumes)
{
    public async Task HandleAsync(Stream stream, Http.Request request, CancellationToken ct)
    {
        var (path, mountPoint) = await volumes.ResolveAsync(RequestArgs.PathOf(request), ct).ConfigureAwait(false);
        if (mountPoint is null)
        {
            throw new BadRequestException("xattrs needs a path inside a volume (or a volume itself)");
        }

        var (parent, name) = VolumeFiles.Resolve(mountPoint, path.Rest);
        List<Xattr> xattrs;
        using (parent)
        {
            if (name.Length > 0 && Native.LibC.Stat(parent.Value, name, out _) is var r and < 0)
            {
                throw new BadRequestException($"{VolumeFiles.Show(path.Rest)}: {VolumeFiles.Reason(-r)}");
            }

            try
            {
                xattrs = XattrReader.Read(parent.Value, name)!;
            }
            catch (IOException e)
            {
                throw new BadRequestException($"{VolumeFiles.Show(path.Rest)}: {e.Message}");
            }
        }

        await Answers.JsonAsync(stream, w => ApiJson.WriteXattrs(w, xattrs), ct).ConfigureAwait(false);
    }
}
