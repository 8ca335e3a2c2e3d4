using System.Diagnostics;
using RestoreFs.Datastore;

// Sequential read of one image through ImageReader (cold chunk cache): ReaderBench STORE SNAPSHOT ARCHIVE [READ_KiB]
var reader = DatastoreReader.Open(args[0]);
var snapshot = reader.GetSnapshot(BackupNamespace.Root, args[1]);
var blockKiB = args.Length > 3 ? int.Parse(args[3]) : 1024;
using var image = reader.OpenImage(snapshot, args[2], null, new ImageReaderOptions(CacheBytes: 64L << 20, ReadAheadChunks: 4));
var buffer = new byte[blockKiB * 1024];
var clock = Stopwatch.StartNew();
long total = 0;
for (long offset = 0; offset < image.Size;)
{
    var n = image.Read(offset, buffer);
    offset += n;
    total += n;
}

clock.Stop();
Console.WriteLine($"{total / 1e6 / clock.Elapsed.TotalSeconds:0} MB/s ({total} bytes in {clock.Elapsed.TotalSeconds:0.00} s, {blockKiB} KiB reads; decoded {image.Stats.DecodedBytes} bytes, read-ahead {image.Stats.ReadAheads})");
