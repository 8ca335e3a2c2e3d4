using System.CommandLine;
using System.Text;
using RestoreFs.Datastore;
using RestoreFs.Pxar;

namespace RestoreFs.Cli.Commands;

/// <summary>The pxar parts of <c>restore</c> (extract to a directory or a tar stream) and <c>backup</c> (NAME.pxar=DIR).</summary>
public static class PxarCli
{
    public static Option<string?> PathOption() =>
        new("--path") { Description = "For a pxar archive: restore only this directory (its contents into the target) or file (into the target directory under its own name) of it, e.g. etc/ssh or etc/passwd." };

    public static Option<bool> SplitOption() =>
        new("--split-archive") { Description = "Write NAME.pxar=DIR as a split archive (format v2: NAME.mpxar + NAME.ppxar), as PBS 3.3+ can." };

    /// <summary>True when <paramref name="archive"/> names a pxar archive (<c>root.pxar</c>) to restore as files, not as raw bytes.</summary>
    public static bool IsPxar(string archive) => archive.EndsWith(".pxar", StringComparison.Ordinal);

    /// <summary>
    /// <c>restore STORE SNAPSHOT root.pxar DIR|-</c>: extracts the archive (or <paramref name="path"/> of it) with all
    /// metadata (owners and device nodes only as root), or writes it to stdout as a PAX tar stream.
    /// </summary>
    public static int Restore(DatastoreReader reader, SnapshotInfo snapshot, string archive, CryptConfig? key, string target, string? path)
    {
        var manifest = reader.ReadManifest(snapshot, key);
        var info = SnapshotArchives.Require(manifest, snapshot, archive);
        using var pxar = SnapshotArchives.Open(reader, snapshot, info, key, new DynamicImageReaderOptions(CacheBytes: 64L << 20), manifest: manifest);
        var entry = path is null ? pxar.Root : pxar.LookupPath(path.Trim('/'))
            ?? throw new ArgumentException($"archive {archive} of {snapshot.Name} has no path '{path}'");
        if (target == "-")
        {
            using var stdout = Console.OpenStandardOutput();
            using var buffered = new BufferedStream(stdout, 1 << 20);
            var links = SnapshotArchives.HardlinkCounts(reader, snapshot, manifest, info, key, pxar,
                reason => Console.Error.WriteLine($"restorefs: the catalog of {snapshot.Name} cannot be used ({reason}); counting hard links from the archive"));
            var damaged = PxarTarWriter.Write(pxar, entry, buffered, links);
            buffered.Flush();
            foreach (var problem in damaged)
            {
                Console.Error.WriteLine($"restorefs: {problem}");
            }

            if (damaged.Count > 0)
            {
                Console.Error.WriteLine($"restorefs: {archive} is damaged in {damaged.Count} {(damaged.Count == 1 ? "place" : "places")} (above); " +
                                        "the tar stream holds everything else");
                return 1;
            }

            return 0;
        }

        Directory.CreateDirectory(target);
        var root = Hosting.NativeMethods.GetEuid() == 0;
        var options = new ExtractorOptions(RestoreOwners: root, RestoreDevices: root);
        IReadOnlyList<ExtractFailure> failures;
        if (entry.IsDirectory)
        {
            if (Directory.EnumerateFileSystemEntries(target).Any())
            {
                throw new ArgumentException($"{target} is not empty");
            }

            failures = Extractor.Extract(pxar, entry, target, options);
        }
        else
        {
            // One file (symlink, device…): it goes into the target directory under its own name.
            var name = Path.Combine(target, Encoding.UTF8.GetString(entry.Name));
            if (Path.Exists(name) || new FileInfo(name).LinkTarget is not null)
            {
                throw new ArgumentException($"{name} exists already");
            }

            failures = Extractor.ExtractEntry(pxar, entry, target, options);
        }

        foreach (var failure in failures)
        {
            Console.Error.WriteLine($"restorefs: not restored: {failure}");
        }

        if (failures.Count > 0)
        {
            Console.Error.WriteLine($"restorefs: {failures.Count} {(failures.Count == 1 ? "entry" : "entries")} of {archive} could not be read and " +
                                    $"{(failures.Count == 1 ? "was" : "were")} not restored; everything else was");
            return 1;
        }

        return 0;
    }

    /// <summary>Writes the <c>NAME.pxar=DIR</c> pairs as pxar archives (with a catalog for unified ones); returns the bytes archived.</summary>
    public static long Backup(BackupWriter writer, IEnumerable<(string Name, string Path)> pairs, bool split)
    {
        var sources = pairs.Where(p => IsPxar(p.Name)).Select(p =>
        {
            if (!Directory.Exists(p.Path))
            {
                throw new ArgumentException($"{p.Name}={p.Path}: not a directory");
            }

            return new PxarBackupSource(p.Name, p.Path);
        }).ToList();
        if (sources.Count == 0)
        {
            return 0;
        }

        var files = PxarBackup.Write(writer, sources, new PxarBackupOptions(Split: split));
        return files.Where(f => !f.FileName.StartsWith("catalog.", StringComparison.Ordinal)).Sum(f => (long)f.Size);
    }
}
