using RestoreFs.Datastore;

namespace RestoreFs.Pxar;

/// <summary>A pxar archive of a snapshot as one logical name: <c>root.pxar</c> for <c>root.pxar.didx</c> or the split pair.</summary>
public sealed record PxarArchiveInfo(string Name, string MetadataFile, string? PayloadFile)
{
    public bool IsSplit => PayloadFile is not null;
}

/// <summary>Finding and opening the pxar archives of a snapshot.</summary>
public static class SnapshotArchives
{
    /// <summary>
    /// The pxar archives a manifest lists, one per logical name (<c>X.pxar</c>): unified <c>X.pxar.didx</c>, or the split
    /// pair <c>X.mpxar.didx</c> + <c>X.ppxar.didx</c> (a metadata file without its payload file is left out).
    /// </summary>
    public static IReadOnlyList<PxarArchiveInfo> List(Manifest manifest)
    {
        var names = manifest.Files.Select(f => f.FileName).ToHashSet(StringComparer.Ordinal);
        var result = new List<PxarArchiveInfo>();
        foreach (var file in manifest.Files.Select(f => f.FileName).Order(StringComparer.Ordinal))
        {
            if (file.EndsWith(".pxar.didx", StringComparison.Ordinal))
            {
                result.Add(new PxarArchiveInfo(file[..^".didx".Length], file, null));
            }
            else if (file.EndsWith(".mpxar.didx", StringComparison.Ordinal))
            {
                var stem = file[..^".mpxar.didx".Length];
                if (names.Contains(stem + ".ppxar.didx"))
                {
                    result.Add(new PxarArchiveInfo(stem + ".pxar", file, stem + ".ppxar.didx"));
                }
            }
        }

        return result;
    }

    /// <summary>
    /// Opens a snapshot's archive by logical or file name (<c>root.pxar</c>, <c>root.pxar.didx</c>, <c>root.mpxar.didx</c>,
    /// <c>root.ppxar</c> …); indexes are checked against the manifest, chunks verified and cached.
    /// </summary>
    public static PxarArchive Open(DatastoreReader store, SnapshotInfo snapshot, string archive, CryptConfig? key,
        DynamicImageReaderOptions? readerOptions = null, PxarArchiveOptions? options = null)
    {
        var manifest = store.ReadManifest(snapshot, key);
        return Open(store, snapshot, Require(manifest, snapshot, archive), key, readerOptions, options, manifest: manifest);
    }

    /// <summary><see cref="Resolve"/>, or an <see cref="ArchiveNotFoundException"/> that lists the snapshot's archives.</summary>
    public static PxarArchiveInfo Require(Manifest manifest, SnapshotInfo snapshot, string archive) =>
        Resolve(manifest, archive) ?? throw new ArchiveNotFoundException(
            $"snapshot {snapshot.Name} has no pxar archive '{archive}' (it has: {string.Join(", ", List(manifest).Select(a => a.Name))})",
            snapshot.DirectoryPath);

    /// <summary>Opens an archive; <paramref name="payloadReaderOptions"/> tune the payload stream's reader of a split archive
    /// (default: <paramref name="readerOptions"/>). <paramref name="manifest"/>: the snapshot's, when the caller holds it (read
    /// with the same key); else it is read here, once for all the archive's indexes.</summary>
    public static PxarArchive Open(DatastoreReader store, SnapshotInfo snapshot, PxarArchiveInfo info, CryptConfig? key,
        DynamicImageReaderOptions? readerOptions = null, PxarArchiveOptions? options = null, DynamicImageReaderOptions? payloadReaderOptions = null,
        Manifest? manifest = null)
    {
        manifest ??= store.ReadManifest(snapshot, key);
        var meta = new DynamicIndexPxarSource(DynamicImageReader.Open(store, snapshot, info.MetadataFile, key, readerOptions, manifest));
        DynamicIndexPxarSource? payload = null;
        try
        {
            if (info.PayloadFile is not null)
            {
                payload = new DynamicIndexPxarSource(DynamicImageReader.Open(store, snapshot, info.PayloadFile, key, payloadReaderOptions ?? readerOptions, manifest));
                return PxarArchive.Open(meta, payload, options, meta, payload);
            }

            return PxarArchive.Open(meta, null, options, meta);
        }
        catch
        {
            meta.Dispose();
            payload?.Dispose();
            throw;
        }
    }

    /// <summary>Matches a logical or file name to an archive of the manifest; null when there is none.</summary>
    public static PxarArchiveInfo? Resolve(Manifest manifest, string archive)
    {
        var stem = archive.EndsWith(".didx", StringComparison.Ordinal) ? archive[..^".didx".Length] : archive;
        foreach (var suffix in new[] { ".pxar", ".mpxar", ".ppxar" })
        {
            if (stem.EndsWith(suffix, StringComparison.Ordinal))
            {
                stem = stem[..^suffix.Length];
                break;
            }
        }

        return List(manifest).FirstOrDefault(a => a.Name == stem + ".pxar");
    }

    /// <summary>The catalog of pxar snapshots (PBS writes one beside every unified archive).</summary>
    public const string CatalogFile = "catalog.pcat1.didx";

    /// <summary>
    /// Hard-link counts of an opened archive of a snapshot (see <see cref="PxarArchive.HardlinkCounts(CancellationToken)"/>):
    /// a unified archive's from the snapshot's catalog where it lists the archive — a few reads instead of a walk of the
    /// whole tree — else, and when the catalog cannot be read (<paramref name="catalogUnusable"/> hears why), from the
    /// archive itself.
    /// </summary>
    public static IReadOnlyDictionary<ulong, int> HardlinkCounts(DatastoreReader store, SnapshotInfo snapshot, Manifest manifest,
        PxarArchiveInfo info, CryptConfig? key, PxarArchive archive, Action<string>? catalogUnusable = null)
    {
        if (archive.FormatVersion == 1 && manifest.Files.Any(f => f.FileName == CatalogFile))
        {
            try
            {
                using var source = new DynamicIndexPxarSource(DynamicImageReader.Open(store, snapshot, CatalogFile, key,
                    new DynamicImageReaderOptions(CacheBytes: 16L << 20), manifest));
                var catalog = new PxarCatalog(source);
                if (catalog.ArchiveBlock(info.MetadataFile) is { } block)
                {
                    return archive.HardlinkCounts(catalog, block);
                }
            }
            catch (Exception e) when (e is PxarException or DatastoreException or IOException or InvalidDataException)
            {
                catalogUnusable?.Invoke(e.Message);
            }
        }

        return archive.HardlinkCounts();
    }
}
