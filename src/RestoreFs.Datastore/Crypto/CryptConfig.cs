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
