using System.Diagnostics;
using RestoreFs.Datastore;

// ReaderBench STORE SNAPSHOT ARCHIVE [READ_KiB]          sequential read through ImageReader (cold chunk cache)
// ReaderBench STORE SNAPSHOT ARCHIVE random               one 4 KiB read in every chunk, shuffled: cold-miss latency
var reader = DatastoreReader.Open(args[0]);
var snapshot = reader.GetSnapshot(BackupNamespace.Root, args[1]);
if (args.Length > 3 && args[3] == "random")
{
    using var image = reader.OpenImage(snapshot, args[2], null, new ImageReaderOptions(CacheBytes: 64L << 20, ReadAheadChunks: 0));
    var chunkSize = 4L << 20;
    var chunks = (int)((image.Size + chunkSize - 1) / chunkSize);
    var random = new Random(7);
    var order = Enumerable.Range(0, chunks).OrderBy(_ => random.Next()).ToList();
    var samples = new List<double>();
    var small = new byte[4096];
    foreach (var chunk in order)
    {
        var offset = chunk * chunkSize + random.Next(0, (int)Math.Min(chunkSize, image.Size - chunk * chunkSize) - 4096) / 4096 * 4096;
        var clock = Stopwatch.StartNew();
        image.Read(offset, small);
        samples.Add(clock.Elapsed.TotalMilliseconds);
    }

    samples.Sort();
    Console.WriteLine($"p50 {samples[samples.Count / 2]:0.000} ms  p99 {samples[(int)(samples.Count * 0.99)]:0.000} ms ({samples.Count} chunks, one 4 KiB read each)");
    return;
}

var blockKiB = args.Length > 3 ? int.Parse(args[3]) : 1024;
using (var image = reader.OpenImage(snapshot, args[2], null, new ImageReaderOptions(CacheBytes: 64L << 20, ReadAheadChunks: 4)))
{
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
}
