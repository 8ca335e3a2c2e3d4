// Where a cold random 4 KiB read of a plain fixed-index image goes, step by step, for bench/peers (issue 16): for N
// chunks that hold data, each chunk file is dropped from the page cache, then read whole (disk I/O), summed (CRC),
// decompressed (libzstd, as the mount does) and hashed (SHA-256, the digest check), each step timed on its own.
// The mount runs these steps overlapped (the file in pieces, the hash on a helper thread), so a cold read costs at
// least the slowest of them: that floor is printed next to their sum. Markdown rows: | step | median ms | p90 ms |.
//   dotnet ChunkSplit.dll STORE INDEX.fidx DATA.map N SEED
using System.Diagnostics;
using System.IO.Hashing;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using RestoreFs.Datastore;

var store = args[0];
var index = FixedIndex.Open(args[1]);
var chunks = new ChunkStore(store);
var withData = File.ReadLines(args[2]).Select(l => (int)(long.Parse(l) / index.ChunkSize)).Distinct().Order().ToList();
var n = Math.Min(int.Parse(args[3]), withData.Count);
var picked = new Random(int.Parse(args[4])).GetItems(withData.ToArray(), withData.Count).Distinct().Take(n).ToList();
var blob = new byte[index.ChunkSize + 4096];
var chunk = new byte[index.ChunkSize];
var steps = new Dictionary<string, List<double>>
{
    ["io"] = [], ["crc"] = [], ["zstd"] = [], ["sha"] = [], ["sum"] = [], ["floor"] = [],
};
long compressedBytes = 0;
foreach (var c in picked)
{
    var path = chunks.PathOf(index.Digest(c));
    using (var handle = File.OpenHandle(path))
    {
        Native.posix_fadvise(handle.DangerousGetHandle().ToInt32(), 0, 0, 4); // POSIX_FADV_DONTNEED
    }

    var watch = Stopwatch.StartNew();
    int length;
    using (var handle = File.OpenHandle(path))
    {
        length = RandomAccess.Read(handle, blob, 0);
    }

    var io = watch.Elapsed.TotalMilliseconds;
    watch.Restart();
    var crc = Crc32.HashToUInt32(blob.AsSpan(DataBlob.PlainHeaderSize, length - DataBlob.PlainHeaderSize));
    var crcMs = watch.Elapsed.TotalMilliseconds;
    GC.KeepAlive(crc);
    var size = index.ChunkLength(c);
    watch.Restart();
    int written;
    if (DataBlob.KindOf(blob.AsSpan(0, length)) == BlobKind.Compressed)
    {
        written = Native.Decompress(blob.AsSpan(DataBlob.PlainHeaderSize, length - DataBlob.PlainHeaderSize), chunk);
    }
    else
    {
        blob.AsSpan(DataBlob.PlainHeaderSize, length - DataBlob.PlainHeaderSize).CopyTo(chunk);
        written = length - DataBlob.PlainHeaderSize;
    }

    var zstd = watch.Elapsed.TotalMilliseconds;
    watch.Restart();
    var digest = SHA256.HashData(chunk.AsSpan(0, size));
    var sha = watch.Elapsed.TotalMilliseconds;
    if (written != size || !digest.AsSpan().SequenceEqual(index.Digest(c)))
    {
        Console.Error.WriteLine($"chunk {c} did not decode to its digest (an encrypted store?)");
        return 1;
    }

    compressedBytes += length;
    steps["io"].Add(io);
    steps["crc"].Add(crcMs);
    steps["zstd"].Add(zstd);
    steps["sha"].Add(sha);
    steps["sum"].Add(io + crcMs + zstd + sha);
    steps["floor"].Add(Math.Max(io, Math.Max(crcMs + zstd, sha)));
}

double Quantile(List<double> v, double q)
{
    var s = v.Order().ToList();
    return s[(int)Math.Min(s.Count - 1, Math.Round(q * (s.Count - 1)))];
}

var names = new Dictionary<string, string>
{
    ["io"] = $"read the chunk file, page cache dropped (disk I/O; {compressedBytes / picked.Count / 1e6:F1} MB a chunk on average)",
    ["crc"] = "CRC-32 of the blob",
    ["zstd"] = $"zstd decompression to {index.ChunkSize >> 20} MiB (libzstd)",
    ["sha"] = $"SHA-256 of the {index.ChunkSize >> 20} MiB chunk (digest check)",
    ["sum"] = "all steps one after another",
    ["floor"] = "the slowest step (disk, CRC + zstd, SHA-256): the floor when overlapped",
};
foreach (var (key, values) in steps)
{
    Console.WriteLine($"| {names[key]} | {Quantile(values, 0.5):F2} | {Quantile(values, 0.9):F2} |");
}

return 0;

internal static unsafe partial class Native
{
    [LibraryImport("libc", SetLastError = true)]
    internal static partial int posix_fadvise(int fd, long offset, long length, int advice);

    [LibraryImport("libzstd.so.1")]
    private static partial nuint ZSTD_decompress(byte* dst, nuint dstCapacity, byte* src, nuint srcSize);

    [LibraryImport("libzstd.so.1")]
    private static partial uint ZSTD_isError(nuint code);

    internal static int Decompress(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        fixed (byte* s = source)
        fixed (byte* d = destination)
        {
            var r = ZSTD_decompress(d, (nuint)destination.Length, s, (nuint)source.Length);
            return ZSTD_isError(r) != 0 ? throw new InvalidDataException("zstd error") : (int)r;
        }
    }
}
