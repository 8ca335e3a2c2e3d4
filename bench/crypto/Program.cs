// Cipher throughput of each AES-256-GCM path on 4 MiB chunks (one thread), plus the keyed chunk digest and the
// blob encode/decode around it. Prints markdown table rows: | what | MB per CPU second | MB per wall second |.
//   dotnet CipherBench.dll [seconds-per-row]
using System.Diagnostics;
using System.Security.Cryptography;
using Org.BouncyCastle.Crypto.Engines;
using Org.BouncyCastle.Crypto.Modes;
using Org.BouncyCastle.Crypto.Parameters;
using System.Runtime.InteropServices;
using RestoreFs.Datastore;

var seconds = args.Length > 0 ? double.Parse(args[0], System.Globalization.CultureInfo.InvariantCulture) : 1.0;
var Size = args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 4 * 1024 * 1024;
var data = RandomNumberGenerator.GetBytes(Size);
var cipher = new byte[Size];
var plain = new byte[Size];
var tag = new byte[16];
var iv = RandomNumberGenerator.GetBytes(16);
var baseKey = CryptConfig.FromRawKey(RandomNumberGenerator.GetBytes(32));

void Row(string what, Action step)
{
    step();
    var n = 0;
    var cpu0 = ThreadCpuSeconds();
    var watch = Stopwatch.StartNew();
    while (watch.Elapsed.TotalSeconds < seconds || n < 3)
    {
        step();
        n++;
    }

    var wall = watch.Elapsed.TotalSeconds;
    var cpu = ThreadCpuSeconds() - cpu0;
    Console.WriteLine($"| {what} | {(double)n * Size / cpu / 1e6:F0} | {(double)n * Size / wall / 1e6:F0} |");
}

var paths = CryptConfig.OpenSslAvailable ? new[] { GcmImplementation.OpenSsl, GcmImplementation.Managed } : [GcmImplementation.Managed];
foreach (var path in paths)
{
    var key = baseKey.WithCipher(path);
    Row($"{path}: encrypt 4 MiB", () => key.Encrypt(iv, data, cipher, tag));
    Row($"{path}: decrypt 4 MiB (tag checked)", () =>
    {
        if (!key.TryDecrypt(iv, tag, cipher, plain))
        {
            throw new InvalidOperationException("tag did not verify");
        }
    });
    Row($"{path}: blob encode 4 MiB random (zstd tried, encrypt, CRC)", () => DataBlob.Encode(data, key, compress: true));
    var blob = DataBlob.Encode(data, key, compress: true);
    var digest = key.KeyedDigest(data);
    Row($"{path}: chunk decode 4 MiB random (CRC, decrypt, keyed digest)", () => DataBlob.DecodeChunk(blob, key, true, plain, digest, "bench", 0));
}

Row("keyed chunk digest SHA-256(data || id_key), 4 MiB", () => baseKey.KeyedDigest(data));
Row("plain SHA-256, 4 MiB", () => SHA256.HashData(data));

static double ThreadCpuSeconds()
{
    // CLOCK_THREAD_CPUTIME_ID: the time this thread ran, like `openssl speed` (which divides by CPU time, not wall time).
    Span<long> ts = stackalloc long[2];
    unsafe
    {
        fixed (long* p = ts)
        {
            if (Native.clock_gettime(3, p) != 0)
            {
                throw new InvalidOperationException("clock_gettime failed");
            }
        }
    }

    return ts[0] + ts[1] / 1e9;
}

// The former path, for reference: BouncyCastle's portable table engine.
var raw = RandomNumberGenerator.GetBytes(32);
var portableOut = new byte[Size + 16];
Row("BouncyCastle portable AesEngine (the former path): encrypt 4 MiB", () =>
{
    var gcm = new GcmBlockCipher(new AesEngine());
    gcm.Init(true, new AeadParameters(new KeyParameter(raw), 128, iv));
    var n = gcm.ProcessBytes(data, portableOut);
    gcm.DoFinal(portableOut.AsSpan(n));
});

internal static unsafe partial class Native
{
    [LibraryImport("libc")]
    internal static partial int clock_gettime(int clock, long* timespec);
}
