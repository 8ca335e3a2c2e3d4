using System.Collections.Concurrent;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;

namespace RestoreFs.Datastore;

/// <summary>
/// A PBS encryption key and what derives from it (spec 6.3/6.4): the AES-256-GCM key, the id key used for keyed chunk
/// digests and manifest signatures, and the fingerprint. GCM uses PBS's 16-byte IVs, which .NET's AesGcm refuses:
/// the cipher is OpenSSL's EVP AES-256-GCM through P/Invoke when libcrypto passes a self-test, else BouncyCastle
/// (<see cref="GcmImplementation"/>; <c>RESTOREFS_CRYPTO=openssl|managed</c> forces one).
/// </summary>
public sealed class CryptConfig
{
    /// <summary>SHA-256("Proxmox Backup Encryption Key Fingerprint").</summary>
    public static readonly byte[] FingerprintInput = SHA256.HashData("Proxmox Backup Encryption Key Fingerprint"u8);

    private readonly byte[] encKey;
    private readonly byte[] idKey;
    private readonly GcmCipher cipher;

    private CryptConfig(byte[] key, GcmCipher cipher)
    {
        encKey = key;
        this.cipher = cipher;
        idKey = Rfc2898DeriveBytes.Pbkdf2(key, "_id_key"u8.ToArray(), 10, HashAlgorithmName.SHA256, 32);
        FingerprintBytes = KeyedDigest(FingerprintInput);
        Fingerprint = FormatFingerprint(FingerprintBytes);
        ShortFingerprint = Fingerprint[..23];
    }

    /// <summary>The process-wide AES-GCM choice (OpenSSL unless unusable or <c>RESTOREFS_CRYPTO</c> says otherwise).</summary>
    public static GcmImplementation DefaultCipherImplementation => GcmCiphers.Default.Implementation;

    /// <summary>Whether libcrypto loaded and passed its self-test.</summary>
    public static bool OpenSslAvailable => GcmCiphers.OpenSsl is not null;

    /// <summary>The AES-GCM implementation this key uses.</summary>
    public GcmImplementation CipherImplementation => cipher.Implementation;

    public byte[] FingerprintBytes { get; }

    /// <summary>The full colon form, 32 hex pairs.</summary>
    public string Fingerprint { get; }

    /// <summary>The first 8 bytes in colon form ("key ID").</summary>
    public string ShortFingerprint { get; }

    internal ReadOnlySpan<byte> IdKey => idKey;

    public static CryptConfig FromRawKey(ReadOnlySpan<byte> key32)
    {
        if (key32.Length != 32)
        {
            throw new ArgumentException($"an encryption key has 32 bytes, not {key32.Length}");
        }

        return new CryptConfig(key32.ToArray(), GcmCiphers.Default);
    }

    /// <summary>The same key on a given AES-GCM implementation (tests, benchmarks); throws when OpenSSL is asked for and unusable.</summary>
    public CryptConfig WithCipher(GcmImplementation implementation) => new(encKey, GcmCiphers.Get(implementation));

    /// <summary>Logs at debug level, once per process, which AES-GCM implementation is in use and why.</summary>
    public static void LogCipherChoice(ILogger log) => GcmCiphers.LogChoice(log);

    public static CryptConfig FromKeyFile(string path, Func<string>? passphrase) =>
        FromRawKey(KeyFile.Load(path).Unwrap(passphrase, path));

    public static string FormatFingerprint(ReadOnlySpan<byte> bytes) =>
        string.Join(':', Convert.ToHexStringLower(bytes).Chunk(2).Select(c => new string(c)));

    /// <summary>Normalises a fingerprint given with or without colons.</summary>
    public static string NormalizeFingerprint(string text) => text.Replace(":", string.Empty, StringComparison.Ordinal).ToLowerInvariant();

    /// <summary>The digest of a chunk: SHA-256 of its content, or <see cref="KeyedDigest"/> when the chunk is encrypted
    /// with <paramref name="key"/>.</summary>
    public static byte[] ChunkDigest(CryptConfig? key, ReadOnlySpan<byte> data) => key is null ? SHA256.HashData(data) : key.KeyedDigest(data);

    /// <summary>
    /// The digest <see cref="ChunkDigest"/> gives an all-zero chunk of <paramref name="length"/> bytes (the unused part
    /// of most disks), computed once per length and key without a buffer of that size; the plain digest of PBS's 4 MiB
    /// chunk is a known constant. The array is shared: never change it.
    /// </summary>
    public static byte[] ZeroChunkDigest(CryptConfig? key, int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        return (key?.zeroDigests ?? PlainZeroDigests).GetOrAdd(length, static (n, k) => HashZeros(k, n), key);
    }

    private static byte[] HashZeros(CryptConfig? key, int length)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        for (var left = length; left > 0; left -= ZeroBlock.Length)
        {
            hash.AppendData(ZeroBlock, 0, Math.Min(left, ZeroBlock.Length));
        }

        if (key is not null)
        {
            hash.AppendData(key.idKey);
        }

        return hash.GetHashAndReset();
    }

    private static readonly byte[] ZeroBlock = new byte[64 * 1024];

    /// <summary>SHA-256 of 4 MiB of zeros: the digest every PBS datastore has for the empty chunk of a disk.</summary>
    private static readonly ConcurrentDictionary<int, byte[]> PlainZeroDigests = new()
    {
        [4 * 1024 * 1024] = Convert.FromHexString("bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8"),
    };

    private readonly ConcurrentDictionary<int, byte[]> zeroDigests = new();

    /// <summary>SHA-256(data || id_key): the digest of an encrypted chunk.</summary>
    public byte[] KeyedDigest(ReadOnlySpan<byte> data)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(data);
        hash.AppendData(idKey);
        return hash.GetHashAndReset();
    }

    /// <summary>HMAC-SHA256 with the id key (manifest signatures).</summary>
    public byte[] Sign(ReadOnlySpan<byte> data) => HMACSHA256.HashData(idKey, data);

    /// <summary>Whether <see cref="TryDecrypt"/> may decrypt a ciphertext where it lies.</summary>
    public bool DecryptsInPlace => cipher.DecryptsInPlace;

    /// <summary>A piecewise decryption with this key (see <see cref="GcmCipher.BeginDecrypt"/>); null where unsupported.</summary>
    internal GcmDecryption? BeginDecrypt(ReadOnlySpan<byte> iv) => cipher.BeginDecrypt(encKey, iv);

    /// <summary>
    /// AES-256-GCM decrypt into <paramref name="plaintext"/> (as long as the ciphertext); false, with the buffer
    /// cleared, when the tag does not verify (wrong key or damage).
    /// </summary>
    public bool TryDecrypt(ReadOnlySpan<byte> iv, ReadOnlySpan<byte> tag, ReadOnlySpan<byte> ciphertext, Span<byte> plaintext) =>
        cipher.TryDecrypt(encKey, iv, tag, ciphertext, plaintext);

    internal static bool TryDecrypt(byte[] key, ReadOnlySpan<byte> iv, ReadOnlySpan<byte> tag, ReadOnlySpan<byte> ciphertext, Span<byte> plaintext) =>
        GcmCiphers.Default.TryDecrypt(key, iv, tag, ciphertext, plaintext);

    /// <summary>AES-256-GCM encrypt with the given 16-byte IV; writes the tag.</summary>
    public void Encrypt(ReadOnlySpan<byte> iv, ReadOnlySpan<byte> plaintext, Span<byte> ciphertext, Span<byte> tag) =>
        cipher.Encrypt(encKey, iv, plaintext, ciphertext, tag);

    internal static void Encrypt(byte[] key, ReadOnlySpan<byte> iv, ReadOnlySpan<byte> plaintext, Span<byte> ciphertext, Span<byte> tag) =>
        GcmCiphers.Default.Encrypt(key, iv, plaintext, ciphertext, tag);
}
