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
            try
            {
                if (name.EndsWith(".blob", StringComparison.Ordinal))
                {
                    output.Write(reader.ReadBlob(snap, name, key));
                }
                else if (name.EndsWith(".fidx", StringComparison.Ordinal))
                {
                    using var image = reader.OpenImage(snap, name, key, new ImageReaderOptions(CacheBytes: 64L << 20));
                    var buffer = new byte[image.ChunkSize];
                    for (long offset = 0; offset < image.Size;)
                    {
                        var n = image.Read(offset, buffer);
                        output.Write(buffer, 0, n);
                        offset += n;
                    }
                }
                else
                {
                    var (index, file) = reader.OpenDynamicIndex(snap, name, key);
                    for (var i = 0; i < index.ChunkCount; i++)
                    {
                        output.Write(reader.ReadDynamicChunk(index, i, key, file.CryptMode == CryptMode.Encrypt));
                    }
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

            return 0;
        }));
        return command;
    }
}
