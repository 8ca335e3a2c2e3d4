using RestoreFs.Datastore;

namespace RestoreFs.Pxar;

/// <summary>One directory to back up as <c>NAME.pxar</c> (e.g. <c>root.pxar</c>).</summary>
public sealed record PxarBackupSource(string ArchiveName, string Directory);

/// <summary>Options of <see cref="PxarBackup.Write"/>.</summary>
public sealed record PxarBackupOptions(bool Split = false, int AverageChunkSize = ContentChunker.DefaultAverage, DirectoryArchiverOptions? Archiver = null);

/// <summary>
/// Writes directories as pxar archives into a snapshot, as PBS's client does: unified <c>NAME.pxar.didx</c> (v1), or
/// with <see cref="PxarBackupOptions.Split"/> the pair <c>NAME.mpxar.didx</c> + <c>NAME.ppxar.didx</c> (v2); every
/// stream content-chunked, deduplicated and (with a key) encrypted. Unified archives get a <c>catalog.pcat1.didx</c>
/// (one directory per archive, named by its index file); split ones none, as PBS 3.3+ does.
/// </summary>
public static class PxarBackup
{
    public static IReadOnlyList<ManifestFile> Write(BackupWriter writer, IReadOnlyList<PxarBackupSource> sources, PxarBackupOptions? options = null)
    {
        options ??= new PxarBackupOptions();
        var files = new List<ManifestFile>();
        DynamicArchiveStream? catalogStream = null;
        PxarCatalogWriter? catalog = null;
        foreach (var source in sources)
        {
            var stem = source.ArchiveName.EndsWith(".pxar", StringComparison.Ordinal) ? source.ArchiveName[..^".pxar".Length] : source.ArchiveName;
            if (options.Split)
            {
                var meta = writer.BeginDynamicArchive(stem + ".mpxar", options.AverageChunkSize);
                var payload = writer.BeginDynamicArchive(stem + ".ppxar", options.AverageChunkSize);
                DirectoryArchiver.Write(source.Directory, meta, payload, null, options.Archiver);
                files.Add(meta.Finish());
                files.Add(payload.Finish());
            }
            else
            {
                catalogStream ??= writer.BeginDynamicArchive("catalog.pcat1", options.AverageChunkSize);
                catalog ??= new PxarCatalogWriter(catalogStream);
                var archive = writer.BeginDynamicArchive(stem + ".pxar", options.AverageChunkSize);
                catalog.BeginDirectory(System.Text.Encoding.UTF8.GetBytes(archive.FileName));
                DirectoryArchiver.Write(source.Directory, archive, null, catalog, options.Archiver);
                catalog.EndDirectory();
                files.Add(archive.Finish());
            }
        }

        if (catalog is not null)
        {
            catalog.Finish();
            files.Add(catalogStream!.Finish());
        }

        return files;
    }
}
