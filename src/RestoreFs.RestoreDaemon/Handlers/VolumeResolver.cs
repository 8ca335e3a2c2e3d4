using RestoreFs.RestoreDaemon.Disks;

namespace RestoreFs.RestoreDaemon.Handlers;

/// <summary>Resolves a request's path against the catalog's disks and mounts the volume it is in.</summary>
internal sealed class VolumeResolver(IVolumeCatalog catalog)
{
    public IVolumeCatalog Catalog => catalog;

    /// <summary>The parsed path and, when it is inside a volume, that volume's mount point.</summary>
    public async Task<(ApiPath Path, string? MountPoint)> ResolveAsync(byte[] raw, CancellationToken ct)
    {
        var disks = await catalog.GetDisksAsync(ct).ConfigureAwait(false);
        var path = ApiPath.Parse(raw, disks);
        if (path.Volume is null)
        {
            return (path, null);
        }

        return (path, await MountAsync(path.Volume, ct).ConfigureAwait(false));
    }

    /// <summary>Mounts a volume for a request; failing, the 400 answer names the volume and the reason.</summary>
    public async Task<string> MountAsync(VolumeInfo volume, CancellationToken ct)
    {
        try
        {
            return await catalog.MountAsync(volume, ct).ConfigureAwait(false);
        }
        catch (VolumeException e) when (!e.Message.Contains(volume.Id, StringComparison.Ordinal))
        {
            throw new BadRequestException($"{volume.Id}: {e.Message}");
        }
    }
}
