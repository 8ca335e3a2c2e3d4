using System.Runtime.InteropServices;

namespace RestoreFs.Datastore;

/// <summary>
/// AES-256-GCM through OpenSSL's EVP interface in the system's libcrypto. Unlike .NET's AesGcm, EVP takes any IV
/// length (EVP_CTRL_GCM_SET_IVLEN), so PBS's 16-byte IVs work. One cipher context per thread, re-keyed per call.
/// </summary>
internal sealed unsafe partial class OpenSslGcm : GcmCipher
{
    private const string Library = "libcrypto.so.3";
    private const int CtrlGcmSetIvLen = 0x9;
    private const int CtrlGcmGetTag = 0x10;
    private const int CtrlGcmSetTag = 0x11;

    /// <summary>The largest piece handed to one EVP update by default (its lengths are C ints).</summary>
    private const int DefaultMaxPiece = 1 << 30;

    private static readonly Lazy<OpenSslGcm?> Loaded = new(Load);

    private readonly nint cipher;
    private readonly int maxPiece;
    private readonly ThreadLocal<Context> contexts;

    private OpenSslGcm(nint cipher, int maxPiece)
    {
        this.cipher = cipher;
        this.maxPiece = maxPiece;
        contexts = new ThreadLocal<Context>(() => new Context());
    }

    /// <summary>The cipher when libcrypto loads and has AES-256-GCM; null otherwise (no self-test here).</summary>
    public static OpenSslGcm? Instance => Loaded.Value;

    /// <summary>Why <see cref="Instance"/> is null, for the log.</summary>
    public static string? LoadError { get; private set; }

    public override GcmImplementation Implementation => GcmImplementation.OpenSsl;

    /// <summary>The same cipher feeding EVP in pieces of at most <paramref name="pieceSize"/> bytes (tests of the piece loop).</summary>
    internal OpenSslGcm WithMaxPiece(int pieceSize) => new(cipher, pieceSize);

    /// <summary>EVP_DecryptUpdate allows the output to be the input (exactly the same bytes).</summary>
    public override bool DecryptsInPlace => true;

    public override GcmDecryption? BeginDecrypt(ReadOnlySpan<byte> key, ReadOnlySpan<byte> iv)
    {
        if (key.Length != KeySize || iv.Length != IvSize)
        {
            throw new ArgumentException($"AES-256-GCM with a PBS IV takes a {KeySize}-byte key and a {IvSize}-byte IV");
        }

        return new Decryption(this, Begin(key, iv, encrypt: false));
    }

    /// <summary>A decryption on this thread's context (see <see cref="GcmCipher.BeginDecrypt"/>).</summary>
    private sealed class Decryption(OpenSslGcm owner, nint ctx) : GcmDecryption
    {
        private readonly int thread = Environment.CurrentManagedThreadId;

        public override void Update(ReadOnlySpan<byte> input, Span<byte> output)
        {
            Own();
            if (input.Length != output.Length)
            {
                throw new ArgumentException($"the output has {output.Length} bytes, the input {input.Length}; GCM needs them equal");
            }

            fixed (byte* i = input)
            fixed (byte* o = output)
            {
                owner.Update(ctx, i, o, input.Length);
            }
        }

        public override bool Finish(ReadOnlySpan<byte> tag)
        {
            Own();
            if (tag.Length != TagSize)
            {
                throw new ArgumentException($"a GCM tag has {TagSize} bytes, not {tag.Length}", nameof(tag));
            }

            return FinishDecrypt(ctx, tag);
        }

        private void Own()
        {
            if (Environment.CurrentManagedThreadId != thread)
            {
                throw new InvalidOperationException("a GCM decryption is bound to the thread that began it (its cipher context is per thread)");
            }
        }
    }

    public override bool TryDecrypt(ReadOnlySpan<byte> key, ReadOnlySpan<byte> iv, ReadOnlySpan<byte> tag, ReadOnlySpan<byte> ciphertext, Span<byte> plaintext)
    {
        CheckArguments(key, iv, tag, ciphertext.Length, plaintext.Length);
        var ok = false;
        try
        {
            var ctx = Begin(key, iv, encrypt: false);
            fixed (byte* input = ciphertext)
            fixed (byte* output = plaintext)
            {
                Update(ctx, input, output, ciphertext.Length);
            }

            ok = FinishDecrypt(ctx, tag);
        }
        finally
        {
            if (!ok)
            {
                plaintext.Clear();
            }
        }

        return ok;
    }

    public override void Encrypt(ReadOnlySpan<byte> key, ReadOnlySpan<byte> iv, ReadOnlySpan<byte> plaintext, Span<byte> ciphertext, Span<byte> tag)
    {
        CheckArguments(key, iv, tag, plaintext.Length, ciphertext.Length);
        var ctx = Begin(key, iv, encrypt: true);
        fixed (byte* input = plaintext)
        fixed (byte* output = ciphertext)
        fixed (byte* t = tag)
        {
            Update(ctx, input, output, plaintext.Length);
            byte last;
            int written;
            Check(EVP_EncryptFinal_ex(ctx, &last, &written), "EVP_EncryptFinal_ex");
            if (written != 0)
            {
                throw new InvalidOperationException($"EVP_EncryptFinal_ex wrote {written} bytes; GCM writes none");
            }

            Check(EVP_CIPHER_CTX_ctrl(ctx, CtrlGcmGetTag, TagSize, t), "EVP_CTRL_GCM_GET_TAG");
        }
    }

    private nint Begin(ReadOnlySpan<byte> key, ReadOnlySpan<byte> iv, bool encrypt)
    {
        var ctx = contexts.Value!.Handle;
        var enc = encrypt ? 1 : 0;
        Check(EVP_CipherInit_ex(ctx, cipher, 0, null, null, enc), "EVP_CipherInit_ex");
        Check(EVP_CIPHER_CTX_ctrl(ctx, CtrlGcmSetIvLen, IvSize, null), "EVP_CTRL_GCM_SET_IVLEN");
        fixed (byte* k = key)
        fixed (byte* v = iv)
        {
            Check(EVP_CipherInit_ex(ctx, 0, 0, k, v, enc), "EVP_CipherInit_ex (key, IV)");
        }

        return ctx;
    }

    /// <summary>Sets the expected tag and ends the decryption: true when the tag verified.</summary>
    private static bool FinishDecrypt(nint ctx, ReadOnlySpan<byte> tag)
    {
        fixed (byte* t = tag)
        {
            Check(EVP_CIPHER_CTX_ctrl(ctx, CtrlGcmSetTag, TagSize, t), "EVP_CTRL_GCM_SET_TAG");
            byte last;
            int written;
            var ok = EVP_DecryptFinal_ex(ctx, &last, &written) == 1 && written == 0;
            if (!ok)
            {
                ERR_clear_error();
            }

            return ok;
        }
    }

    private void Update(nint ctx, byte* input, byte* output, int length)
    {
        for (var done = 0; done < length;)
        {
            var piece = Math.Min(maxPiece, length - done);
            int written;
            Check(EVP_CipherUpdate(ctx, output + done, &written, input + done, piece), "EVP_CipherUpdate");
            if (written != piece)
            {
                throw new InvalidOperationException($"EVP_CipherUpdate wrote {written} bytes for {piece}; GCM writes all at once");
            }

            done += piece;
        }
    }

    private static void Check(int result, string what)
    {
        if (result != 1)
        {
            throw new InvalidOperationException($"libcrypto {what} failed");
        }
    }

    private static OpenSslGcm? Load()
    {
        try
        {
            if (!NativeLibrary.TryLoad(Library, out _))
            {
                LoadError = $"{Library} not found";
                return null;
            }

            var cipher = EVP_aes_256_gcm();
            if (cipher == 0)
            {
                LoadError = "EVP_aes_256_gcm returned no cipher";
                return null;
            }

            return new OpenSslGcm(cipher, DefaultMaxPiece);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or BadImageFormatException)
        {
            LoadError = $"{Library}: {e.Message}";
            return null;
        }
    }

    [LibraryImport(Library)]
    private static partial void ERR_clear_error();

    [LibraryImport(Library)]
    private static partial nint EVP_CIPHER_CTX_new();

    [LibraryImport(Library)]
    private static partial void EVP_CIPHER_CTX_free(nint ctx);

    [LibraryImport(Library)]
    private static partial nint EVP_aes_256_gcm();

    [LibraryImport(Library)]
    private static partial int EVP_CipherInit_ex(nint ctx, nint cipher, nint engine, byte* key, byte* iv, int enc);

    [LibraryImport(Library)]
    private static partial int EVP_CIPHER_CTX_ctrl(nint ctx, int type, int arg, void* ptr);

    [LibraryImport(Library)]
    private static partial int EVP_CipherUpdate(nint ctx, byte* output, int* outputLength, byte* input, int inputLength);

    [LibraryImport(Library)]
    private static partial int EVP_DecryptFinal_ex(nint ctx, byte* output, int* outputLength);

    [LibraryImport(Library)]
    private static partial int EVP_EncryptFinal_ex(nint ctx, byte* output, int* outputLength);

    /// <summary>One EVP_CIPHER_CTX, freed when its thread's slot is collected.</summary>
    private sealed class Context
    {
        public Context()
        {
            Handle = EVP_CIPHER_CTX_new();
            if (Handle == 0)
            {
                throw new OutOfMemoryException("EVP_CIPHER_CTX_new failed");
            }
        }

        ~Context() => EVP_CIPHER_CTX_free(Handle);

        public nint Handle { get; }
    }
}
