using Microsoft.Extensions.Logging;

namespace RestoreFs.Datastore;

/// <summary>
/// Chooses the AES-256-GCM implementation once per process: OpenSSL when libcrypto loads and passes a known-answer
/// self-test, else BouncyCastle. <c>RESTOREFS_CRYPTO=openssl|managed</c> forces one (forcing OpenSSL when it is not
/// usable is an error, not a silent fallback).
/// </summary>
internal static class GcmCiphers
{
    public const string EnvironmentVariable = "RESTOREFS_CRYPTO";

    private static readonly Lazy<(GcmCipher Cipher, string Reason)> Selected = new(Select);
    private static int logged;

    private static readonly Lazy<(GcmCipher? Cipher, string Reason)> OpenSslChecked = new(() =>
    {
        var openSsl = OpenSslGcm.Instance;
        if (openSsl is null)
        {
            return (null, OpenSslGcm.LoadError ?? "libcrypto not usable");
        }

        var failure = SelfTest(openSsl);
        return failure is null ? (openSsl, "libcrypto.so.3 passed its self-test") : (null, $"libcrypto.so.3 failed its self-test: {failure}");
    });

    /// <summary>The process-wide choice; throws <see cref="DatastoreException"/> when the environment asks for the impossible.</summary>
    public static GcmCipher Default => Selected.Value.Cipher;

    /// <summary>Why <see cref="Default"/> was chosen, e.g. "libcrypto.so.3 passed its self-test".</summary>
    public static string Reason => Selected.Value.Reason;

    /// <summary>The OpenSSL cipher if libcrypto loads and passes the self-test, else null (with the reason).</summary>
    public static GcmCipher? OpenSsl => OpenSslChecked.Value.Cipher;

    public static GcmCipher Get(GcmImplementation implementation) => implementation switch
    {
        GcmImplementation.Managed => ManagedGcm.Instance,
        _ => OpenSsl ?? throw new DatastoreException($"the OpenSSL AES-GCM path is not usable: {OpenSslChecked.Value.Reason}"),
    };

    /// <summary>Logs the choice at debug level, once per process.</summary>
    public static void LogChoice(ILogger log)
    {
        if (log.IsEnabled(LogLevel.Debug) && Interlocked.Exchange(ref logged, 1) == 0)
        {
            log.LogDebug("AES-256-GCM path: {CryptoPath} ({Reason})", Default.Implementation, Reason);
        }
    }

    private static (GcmCipher, string) Select() => Select(Environment.GetEnvironmentVariable(EnvironmentVariable));

    /// <summary>The choice for a given value of <c>RESTOREFS_CRYPTO</c> (null = unset).</summary>
    internal static (GcmCipher Cipher, string Reason) Select(string? forced)
    {
        switch (forced?.Trim().ToLowerInvariant())
        {
            case null or "":
                return OpenSsl is { } fast
                    ? (fast, OpenSslChecked.Value.Reason)
                    : (ManagedGcm.Instance, $"fallback: {OpenSslChecked.Value.Reason}");
            case "openssl":
                return (Get(GcmImplementation.OpenSsl), $"{EnvironmentVariable}=openssl");
            case "managed":
                return (ManagedGcm.Instance, $"{EnvironmentVariable}=managed");
            default:
                throw new DatastoreException($"{EnvironmentVariable}={forced} is not understood; use openssl or managed");
        }
    }

    /// <summary>
    /// The PBS blob vector (key 00..1f, IV 00..0f, "hello") and a tampered tag; returns what went wrong, or null.
    /// </summary>
    internal static string? SelfTest(GcmCipher cipher)
    {
        try
        {
            ReadOnlySpan<byte> key = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31];
            ReadOnlySpan<byte> iv = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
            var expectedCipher = Convert.FromHexString("0f09cc1a56");
            var expectedTag = Convert.FromHexString("0c84c431837297c0b19e77e5608162ea");
            Span<byte> ciphertext = stackalloc byte[5];
            Span<byte> tag = stackalloc byte[16];
            cipher.Encrypt(key, iv, "hello"u8, ciphertext, tag);
            if (!ciphertext.SequenceEqual(expectedCipher) || !tag.SequenceEqual(expectedTag))
            {
                return "encryption gave a different ciphertext or tag than the known vector";
            }

            Span<byte> plain = stackalloc byte[5];
            if (!cipher.TryDecrypt(key, iv, expectedTag, expectedCipher, plain) || !plain.SequenceEqual("hello"u8))
            {
                return "decryption of the known vector failed";
            }

            expectedTag[15] ^= 1;
            if (cipher.TryDecrypt(key, iv, expectedTag, expectedCipher, plain) || plain.IndexOfAnyExcept((byte)0) >= 0)
            {
                return "a tampered tag was accepted";
            }

            return null;
        }
        catch (Exception e) when (e is InvalidOperationException or DllNotFoundException or EntryPointNotFoundException)
        {
            return e.Message;
        }
    }
}
