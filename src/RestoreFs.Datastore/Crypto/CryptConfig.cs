using System.Security.Cryptography;
using Org.BouncyCastle.Crypto.Engines;
using Org.BouncyCastle.Crypto.Modes;
using Org.BouncyCastle.Crypto.Parameters;

namespace RestoreFs.Datastore;

/// <summary>
/// A PBS encryption key and what derives from it (spec 6.3/6.4): the AES-256-GCM key, the id key used for keyed chunk
/// digests and manifest signatures, and the fingerprint. GCM uses PBS's 16-byte IVs, which .NET's AesGcm refuses,
/// so BouncyCastle does the cipher.
/// </summary>
public sealed class CryptConfig
{
    /// <summary>SHA-256("Proxmox Backup Encryption Key Fingerprint").</summary>
    public static readonly byte[] FingerprintInput = SHA256.HashData("Proxmox Backup Encryption Key Fingerprint"u8);

    private readonly byte[] encKey;
    private readonly byte[] idKey;

    private CryptConfig(byte[] key)
    {
        encKey = key;
        idKey = Rfc2898DeriveBytes.Pbkdf2(key, "_id_key"u8.ToArray(), 10, HashAlgorithmName.SHA256, 32);
        FingerprintBytes = KeyedDigest(FingerprintInput);
        Fingerprint = FormatFingerprint(FingerprintBytes);
        ShortFingerprint = Fingerprint[..23];
    }

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

        return new CryptConfig(key32.ToArray());
    }

    public static CryptConfig FromKeyFile(string path, Func<string>? passphrase) =>
        FromRawKey(KeyFile.Load(path).Unwrap(passphrase, path));

    public static string FormatFingerprint(ReadOnlySpan<byte> bytes) =>
        string.Join(':', Convert.ToHexStringLower(bytes).Chunk(2).Select(c => new string(c)));

    /// <summary>Normalises a fingerprint given with or without colons.</summary>
    public static string NormalizeFingerprint(string text) => text.Replace(":", string.Empty, StringComparison.Ordinal).ToLowerInvariant();

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

    /// <summary>AES-256-GCM decrypt; false when the tag does not verify (wrong key or damage).</summary>
    public bool TryDecrypt(ReadOnlySpan<byte> iv, ReadOnlySpan<byte> tag, ReadOnlySpan<byte> ciphertext, Span<byte> plaintext) =>
        TryDecrypt(encKey, iv, tag, ciphertext, plaintext);

    internal static bool TryDecrypt(byte[] key, ReadOnlySpan<byte> iv, ReadOnlySpan<byte> tag, ReadOnlySpan<byte> ciphertext, Span<byte> plaintext)
    {
        var gcm = new GcmBlockCipher(new AesEngine());
        gcm.Init(false, new AeadParameters(new KeyParameter(key), 128, iv.ToArray()));
        try
        {
            var n = gcm.ProcessBytes(ciphertext, plaintext);
            n += gcm.ProcessBytes(tag, plaintext[n..]);
            n += gcm.DoFinal(plaintext[n..]);
            return n == ciphertext.Length;
        }
        catch (Org.BouncyCastle.Crypto.InvalidCipherTextException)
        {
            plaintext.Clear();
            return false;
        }
    }

    /// <summary>AES-256-GCM encrypt with the given 16-byte IV; writes the tag.</summary>
    public void Encrypt(ReadOnlySpan<byte> iv, ReadOnlySpan<byte> plaintext, Span<byte> ciphertext, Span<byte> tag) =>
        Encrypt(encKey, iv, plaintext, ciphertext, tag);

    internal static void Encrypt(byte[] key, ReadOnlySpan<byte> iv, ReadOnlySpan<byte> plaintext, Span<byte> ciphertext, Span<byte> tag)
    {
        var gcm = new GcmBlockCipher(new AesEngine());
        gcm.Init(true, new AeadParameters(new KeyParameter(key), 128, iv.ToArray()));
        var output = new byte[plaintext.Length + 16];
        var n = gcm.ProcessBytes(plaintext, output);
        gcm.DoFinal(output.AsSpan(n));
        output.AsSpan(0, plaintext.Length).CopyTo(ciphertext);
        output.AsSpan(plaintext.Length, 16).CopyTo(tag);
    }
}
