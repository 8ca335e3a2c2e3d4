namespace RestoreFs.Datastore;

/// <summary>Which AES-256-GCM implementation a <see cref="CryptConfig"/> uses.</summary>
public enum GcmImplementation
{
    /// <summary>The system's OpenSSL libcrypto (libcrypto.so.3) through P/Invoke: AES-NI/VAES with carry-less multiply.</summary>
    OpenSsl,

    /// <summary>BouncyCastle in managed code, with its AES-NI engine where the CPU has one.</summary>
    Managed,
}

/// <summary>
/// AES-256-GCM with PBS's 16-byte IVs and 16-byte tags. Decryption writes into the caller's buffer and only returns
/// true once the tag has verified; on a bad tag the buffer is cleared and false returned.
/// </summary>
internal abstract class GcmCipher
{
    public const int IvSize = 16;
    public const int TagSize = 16;
    public const int KeySize = 32;

    public abstract GcmImplementation Implementation { get; }

    /// <summary>Whether <see cref="TryDecrypt"/> accepts the ciphertext and the plaintext in the same memory.</summary>
    public virtual bool DecryptsInPlace => false;

    /// <summary>
    /// A decryption fed piece by piece (in place allowed), so that it can run while the rest of the ciphertext is still
    /// being read; null where the implementation has none. Nothing it wrote may be used before <see cref="GcmDecryption.Finish"/>
    /// returned true. It must be used on the calling thread only, and finished before that thread decrypts anything else.
    /// </summary>
    public virtual GcmDecryption? BeginDecrypt(ReadOnlySpan<byte> key, ReadOnlySpan<byte> iv) => null;

    public abstract bool TryDecrypt(ReadOnlySpan<byte> key, ReadOnlySpan<byte> iv, ReadOnlySpan<byte> tag, ReadOnlySpan<byte> ciphertext, Span<byte> plaintext);

    public abstract void Encrypt(ReadOnlySpan<byte> key, ReadOnlySpan<byte> iv, ReadOnlySpan<byte> plaintext, Span<byte> ciphertext, Span<byte> tag);

    protected static void CheckArguments(ReadOnlySpan<byte> key, ReadOnlySpan<byte> iv, ReadOnlySpan<byte> tag, int input, int output)
    {
        if (key.Length != KeySize)
        {
            throw new ArgumentException($"an AES-256 key has {KeySize} bytes, not {key.Length}", nameof(key));
        }

        if (iv.Length != IvSize)
        {
            throw new ArgumentException($"a PBS GCM IV has {IvSize} bytes, not {iv.Length}", nameof(iv));
        }

        if (tag.Length != TagSize)
        {
            throw new ArgumentException($"a GCM tag has {TagSize} bytes, not {tag.Length}", nameof(tag));
        }

        if (output != input)
        {
            throw new ArgumentException($"the output has {output} bytes, the input {input}; GCM needs them equal");
        }
    }
}

/// <summary>One decryption in progress (see <see cref="GcmCipher.BeginDecrypt"/>).</summary>
internal abstract class GcmDecryption
{
    /// <summary>Decrypts the next ciphertext bytes into <paramref name="output"/> (as long; may be the same memory).</summary>
    public abstract void Update(ReadOnlySpan<byte> input, Span<byte> output);

    /// <summary>Checks the tag over everything fed; false when it does not verify (then nothing written may be used).</summary>
    public abstract bool Finish(ReadOnlySpan<byte> tag);
}
