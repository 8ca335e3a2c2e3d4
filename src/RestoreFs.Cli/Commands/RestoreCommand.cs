using System.CommandLine;
using RestoreFs.Datastore;

namespace RestoreFs.Cli.Commands;

/// <summary><c>restorefs restore STORE SNAPSHOT ARCHIVE TARGET|-</c>: writes one archive back out.</summary>
public static class RestoreCommand
{
    public static Command Create()
    {
        var store = new Argument<string>("STORE") { Description = "The datastore directory, or s3://BUCKET/STORE." };
        var snapshot = new Argument<string>("SNAPSHOT") { Description = "e.g. vm/100/2024-05-01T10:00:00Z" };
        var archive = new Argument<string>("ARCHIVE") { Description = "e.g. drive-scsi0.img, qemu-server.conf.blob, root.pxar" };
        var target = new Argument<string>("TARGET") { Description = "File to write, or - for stdout; for a pxar archive a directory to extract into (with its metadata), or - for a tar stream." };
        var command = new Command("restore", "Write one archive of a snapshot to a file or stdout, or extract a pxar archive to a directory or as a tar stream.") { store, snapshot, archive, target };
        KeyOptions.AddTo(command);
        KeyOptions.AddNamespace(command);
        StoreOptions.AddTo(command);
        var pxarPath = PxarCli.PathOption();
        command.Add(pxarPath);
        var keepGoing = new Option<bool>("--keep-going")
        {
            Description = "Disk images and raw streams: where a chunk cannot be read (damaged, missing), write zeros in its place, name it and go on (exit status 1). Without it the restore stops there and removes the partial file. pxar archives always go on.",
        };
        command.Add(keepGoing);
        command.SetAction(parse => CliErrors.Run(() =>
        {
            StoreOptions.Apply(parse);
            var reader = DatastoreReader.Open(StoreOptions.Resolve(parse.GetValue(store)!));
            var snap = reader.GetSnapshot(KeyOptions.GetNamespace(parse), parse.GetValue(snapshot)!);
            var key = KeyOptions.LoadKey(parse);
            if (PxarCli.IsPxar(parse.GetValue(archive)!))
            {
                return PxarCli.Restore(reader, snap, parse.GetValue(archive)!, key, parse.GetValue(target)!, parse.GetValue(pxarPath));
            }

            var name = DatastoreReader.ArchiveFileName(parse.GetValue(archive)!);
            var to = parse.GetValue(target)!;
            var output = to == "-" ? Console.OpenStandardOutput() : new FileStream(to, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
            long unreadable = 0;
            try
            {
                if (name.EndsWith(".blob", StringComparison.Ordinal))
                {
                    output.Write(reader.ReadBlob(snap, name, key));
                }
                else if (name.EndsWith(".fidx", StringComparison.Ordinal))
                {
                    using var image = reader.OpenImage(snap, name, key, new ImageReaderOptions(CacheBytes: 64L << 20));
                    unreadable = WriteImage(image, output, sparse: IsRegularFile(output), parse.GetValue(keepGoing), name);
                }
                else
                {
                    var (index, file) = reader.OpenDynamicIndex(snap, name, key);
                    unreadable = WriteStream(reader, index, file.CryptMode == CryptMode.Encrypt, key, output, parse.GetValue(keepGoing), name);
                }
            }
            catch
            {
                if (to != "-")
                {
                    output.Dispose();
                    File.Delete(to);
                }

                throw;
            }
            finally
            {
                output.Dispose();
            }

            if (unreadable > 0)
            {
                Console.Error.WriteLine($"restorefs: {name}: {unreadable} bytes could not be read and were written as zeros (see above); the rest is exact");
                return 1;
            }

            return 0;
        }));
        return command;
    }

    /// <summary>Writes the image chunk by chunk; all-zero chunks become holes when <paramref name="sparse"/> (a file
    /// target: as sparse as the image, and no zeros written). Returns the bytes written as zeros because their chunk could
    /// not be read (only with <paramref name="keepGoing"/>; otherwise the first such chunk ends the restore).</summary>
    private static long WriteImage(ImageReader image, Stream output, bool sparse, bool keepGoing, string name)
    {
        var buffer = new byte[image.ChunkSize];
        long unreadable = 0;
        using var progress = new CliProgress(name, image.Size, logWhenRedirected: false);
        for (var chunk = 0; chunk < image.ChunkCount; chunk++)
        {
            var offset = (long)chunk * image.ChunkSize;
            progress.Report(offset);
            var length = (int)Math.Min(image.ChunkSize, image.Size - offset);
            if (sparse && image.IsZeroChunk(chunk))
            {
                output.Seek(length, SeekOrigin.Current);
                continue;
            }

            try
            {
                image.Read(offset, buffer.AsSpan(0, length));
            }
            catch (DatastoreException e)
            {
                if (!keepGoing)
                {
                    throw Stopped(e);
                }

                Unreadable(name, offset, length, e);
                unreadable += length;
                Array.Clear(buffer, 0, length);
            }

            output.Write(buffer, 0, length);
        }

        if (sparse)
        {
            output.SetLength(image.Size); // a hole at the end has no byte written
        }

        progress.Report(image.Size);
        return unreadable;
    }

    /// <summary>Writes a dynamic index's stream (a pxar archive as it is stored, a catalog) chunk by chunk.</summary>
    private static long WriteStream(DatastoreReader reader, DynamicIndex index, bool encrypted, CryptConfig? key, Stream output, bool keepGoing, string name)
    {
        long unreadable = 0;
        using var progress = new CliProgress(name, index.Size, logWhenRedirected: false);
        for (var i = 0; i < index.ChunkCount; i++)
        {
            progress.Report(index.ChunkStart(i));
            try
            {
                output.Write(reader.ReadDynamicChunk(index, i, key, encrypted));
            }
            catch (DatastoreException e)
            {
                if (!keepGoing)
                {
                    throw Stopped(e);
                }

                var length = (int)(index.ChunkEnd(i) - index.ChunkStart(i));
                Unreadable(name, index.ChunkStart(i), length, e);
                unreadable += length;
                output.Write(new byte[length]);
            }
        }

        progress.Report(index.Size);
        return unreadable;
    }

    /// <summary>Holes only in a regular file: skipping a zero chunk on a block device (or anything else) would leave its old
    /// bytes there.</summary>
    private static bool IsRegularFile(Stream output) =>
        output is FileStream file && Hosting.NativeMethods.FStat((int)file.SafeFileHandle.DangerousGetHandle(), out var st) == 0
        && (st.Mode & 0xF000) == 0x8000;

    private static DatastoreException Stopped(DatastoreException e) =>
        new($"{e.Message} (--keep-going restores the rest, with zeros where chunks cannot be read)", inner: e);

    private static void Unreadable(string name, long offset, long length, DatastoreException e) =>
        Console.Error.WriteLine($"restorefs: {name}: bytes {offset}-{offset + length - 1} could not be read and are zeros: {e.Message}");
}
