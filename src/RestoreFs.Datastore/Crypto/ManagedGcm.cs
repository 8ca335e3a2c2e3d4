using Org.BouncyCastle.Crypto;
using Org.BouncyCastle.Crypto.Engines;
using Org.BouncyCastle.Crypto.Modes;
using Org.BouncyCastle.Crypto.Parameters;

namespace RestoreFs.Datastore;

/// <summary>
/// AES-256-GCM through BouncyCastle: the fallback when libcrypto is missing or fails its self-test.
/// <see cref="AesUtilities.CreateEngine"/> picks BouncyCastle's AES-NI engine when the CPU has AES instructions.
/// </summary>
internal sealed class ManagedGcm : GcmCipher
{
    public static readonly ManagedGcm Instance = new();

    private ManagedGcm()
    {
    }

    public override GcmImplementation Implementation => GcmImplementation.Managed;

    /// <summary>Whether the engine is BouncyCastle's AES-NI one (else its portable table engine).</summary>
    public static bool UsesAesNi => AesUtilities.IsHardwareAccelerated;

    public override bool TryDecrypt(ReadOnlySpan<byte> key, ReadOnlySpan<byte> iv, ReadOnlySpan<byte> tag, ReadOnlySpan<byte> ciphertext, Span<byte> plaintext)
    {
        CheckArguments(key, iv, tag, ciphertext.Length, plaintext.Length);
        var gcm = Create(false, key, iv);
        try
        {
            var n = gcm.ProcessBytes(ciphertext, plaintext);
            n += gcm.ProcessBytes(tag, plaintext[n..]);
            n += gcm.DoFinal(plaintext[n..]);
            if (n == ciphertext.Length)
            {
                return true;
            }
        }
        catch (InvalidCipherTextException)
        {
        }

        plaintext.Clear();
        return false;
    }

    public override void Encrypt(ReadOnlySpan<byte> key, ReadOnlySpan<byte> iv, ReadOnlySpan<byte> plaintext, Span<byte> ciphertext, Span<byte> tag)
    {
        CheckArguments(key, iv, tag, plaintext.Length, ciphertext.Length);
        var gcm = Create(true, key, iv);
        var n = gcm.ProcessBytes(plaintext, ciphertext);

        // DoFinal writes what it still buffers (less than a few blocks) and then the tag.
        Span<byte> rest = stackalloc byte[gcm.GetOutputSize(0)];
        var m = gcm.DoFinal(rest);
        if (n + m != plaintext.Length + TagSize)
        {
            throw new InvalidOperationException($"GCM produced {n + m} bytes for {plaintext.Length} bytes of plaintext");
        }

        rest[..(m - TagSize)].CopyTo(ciphertext[n..]);
        rest.Slice(m - TagSize, TagSize).CopyTo(tag);
    }

    private static GcmBlockCipher Create(bool encrypt, ReadOnlySpan<byte> key, ReadOnlySpan<byte> iv)
    {
        var gcm = new GcmBlockCipher(AesUtilities.CreateEngine());
        gcm.Init(encrypt, new AeadParameters(new KeyParameter(key), TagSize * 8, iv.ToArray()));
        return gcm;
    }
}
