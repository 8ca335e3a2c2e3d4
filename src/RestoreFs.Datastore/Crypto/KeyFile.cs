using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace RestoreFs.Datastore;

/// <summary>Key-derivation function of a key file.</summary>
public enum KeyDerivation
{
    None,
    Scrypt,
    Pbkdf2,
}

/// <summary>
/// A PBS key file (spec 6.1/6.2): the 32-byte key, raw (<c>kdf: null</c>) or wrapped with AES-256-GCM under a key
/// derived from a passphrase by scrypt or PBKDF2.
/// </summary>
public sealed class KeyFile
{
    private KeyFile(KeyDerivation kdf, byte[] data, byte[]? salt, long n, int r, int p, int iterations, string? fingerprint, string created, string modified, string? hint)
    {
        Kdf = kdf;
        Data = data;
        Salt = salt;
        N = n;
        R = r;
        P = p;
        Iterations = iterations;
        Fingerprint = fingerprint;
        Created = created;
        Modified = modified;
        Hint = hint;
    }

    public KeyDerivation Kdf { get; }

    public byte[] Data { get; }

    public byte[]? Salt { get; }

    public long N { get; }

    public int R { get; }

    public int P { get; }

    public int Iterations { get; }

    public string? Fingerprint { get; }

    public string Created { get; }

    public string Modified { get; }

    public string? Hint { get; }

    /// <summary>Reads a key file: a regular file (never a FIFO or device) of at most <see cref="StoreLimits.MaxKeyFile"/> bytes.</summary>
    public static KeyFile Load(string path)
    {
        var full = Path.GetFullPath(path);
        var fd = StoreLibC.Open(full, StoreLibC.O_RDONLY | StoreLibC.O_NONBLOCK);
        if (fd < 0)
        {
            throw new KeyFileException($"cannot open key file: {StoreLibC.StrError(-fd)}", path);
        }

        using var handle = new Microsoft.Win32.SafeHandles.SafeFileHandle(fd, ownsHandle: true);
        if (StoreLibC.Stat(fd, string.Empty, out var info) != 0 || info.Type != StoreLibC.S_IFREG)
        {
            throw new KeyFileException("key file is not a regular file", path);
        }

        if (info.Size > StoreLimits.MaxKeyFile)
        {
            throw new KeyFileException($"key file has {info.Size} bytes, more than the limit of {StoreLimits.MaxKeyFile}", path);
        }

        var bytes = new byte[info.Size];
        var done = 0;
        while (done < bytes.Length)
        {
            var n = RandomAccess.Read(handle, bytes.AsSpan(done), done);
            if (n == 0)
            {
                break;
            }

            done += n;
        }

        string text;
        try
        {
            text = new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes, 0, done);
        }
        catch (DecoderFallbackException)
        {
            throw new KeyFileException("key file is not UTF-8 text", path);
        }

        return Parse(text, path);
    }

    public static KeyFile Parse(string json, string path = "<key>")
    {
        try
        {
            var root = JsonNode.Parse(json, null, Manifest.StrictJson) as JsonObject ?? throw new KeyFileException("key file is not a JSON object", path);
            var data = Convert.FromBase64String((string?)root["data"] ?? throw new KeyFileException("key file has no 'data'", path));
            var created = (string?)root["created"] ?? string.Empty;
            var modified = (string?)root["modified"] ?? created;
            var fingerprint = (string?)root["fingerprint"];
            var hint = (string?)root["hint"];
            var kdf = root["kdf"];
            if (kdf is null)
            {
                return new KeyFile(KeyDerivation.None, data, null, 0, 0, 0, 0, fingerprint, created, modified, hint);
            }

            var obj = kdf as JsonObject ?? throw new KeyFileException("key file 'kdf' is not an object", path);
            if (obj["Scrypt"] is JsonObject s)
            {
                var salt = ReadSalt(s, path);
                var n = (long?)s["n"] ?? throw new KeyFileException("scrypt parameters lack 'n'", path);
                var r = (long?)s["r"] ?? throw new KeyFileException("scrypt parameters lack 'r'", path);
                var p = (long?)s["p"] ?? throw new KeyFileException("scrypt parameters lack 'p'", path);
                if (n < 2 || (n & (n - 1)) != 0 || n > int.MaxValue)
                {
                    throw new KeyFileException($"scrypt N = {n} is not a power of two of at least 2", path);
                }

                if (r < 1 || p < 1 || r > 1024 || p > 1024 || 128 * n * r * p > StoreLimits.MaxScryptMemory)
                {
                    throw new KeyFileException(
                        $"scrypt parameters N = {n}, r = {r}, p = {p} are out of range (at most {StoreLimits.MaxScryptMemory} bytes of work memory)", path);
                }

                return new KeyFile(KeyDerivation.Scrypt, data, salt, n, (int)r, (int)p, 0, fingerprint, created, modified, hint);
            }

            if (obj["PBKDF2"] is JsonObject k)
            {
                var salt = ReadSalt(k, path);
                var iter = (long?)k["iter"] ?? throw new KeyFileException("PBKDF2 parameters lack 'iter'", path);
                if (iter < 1 || iter > StoreLimits.MaxPbkdf2Iterations)
                {
                    throw new KeyFileException($"PBKDF2 iter = {iter} is out of range (1 to {StoreLimits.MaxPbkdf2Iterations})", path);
                }

                return new KeyFile(KeyDerivation.Pbkdf2, data, salt, 0, 0, 0, (int)iter, fingerprint, created, modified, hint);
            }

            throw new KeyFileException("key file names an unknown kdf", path);
        }
        catch (Exception e) when (e is JsonException or FormatException or InvalidOperationException or NullReferenceException or ArgumentException
                                      or OverflowException or InvalidCastException)
        {
            throw new KeyFileException($"malformed key file: {e.Message}", path, e);
        }
    }

    private static byte[] ReadSalt(JsonObject parameters, string path)
    {
        var salt = Convert.FromBase64String((string?)parameters["salt"] ?? throw new KeyFileException("key file's kdf has no salt", path));
        if (salt.Length is < 8 or > 1024)
        {
            throw new KeyFileException($"key file's salt has {salt.Length} bytes (8 to 1024 expected)", path);
        }

        return salt;
    }

    /// <summary>The raw 32-byte key; asks for the passphrase only when the file is wrapped.</summary>
    public byte[] Unwrap(Func<string>? passphrase, string path = "<key>")
    {
        byte[] key;
        if (Kdf == KeyDerivation.None)
        {
            key = Data;
        }
        else
        {
            var pass = passphrase?.Invoke() ?? throw new KeyRequiredException("the key file is protected by a passphrase and none was given", path);
            var passBytes = Encoding.UTF8.GetBytes(pass);
            if (passBytes.Length < 5)
            {
                throw new WrongKeyException("passphrase is too short (at least 5 bytes)", path);
            }

            var wrap = Kdf == KeyDerivation.Scrypt
                ? Org.BouncyCastle.Crypto.Generators.SCrypt.Generate(passBytes, Salt!, (int)N, R, P, 32)
                : Rfc2898DeriveBytes.Pbkdf2(passBytes, Salt!, Iterations, HashAlgorithmName.SHA256, 32);
            if (Data.Length != 64)
            {
                throw new DatastoreException($"wrapped key data has {Data.Length} bytes, expected 64", path);
            }

            key = new byte[32];
            if (!CryptConfig.TryDecrypt(wrap, Data.AsSpan(0, 16), Data.AsSpan(16, 16), Data.AsSpan(32, 32), key))
            {
                throw new WrongKeyException("wrong passphrase for the key file", path);
            }
        }

        if (key.Length != 32)
        {
            throw new DatastoreException($"key has {key.Length} bytes, expected 32", path);
        }

        if (Fingerprint is not null)
        {
            var actual = CryptConfig.FromRawKey(key).Fingerprint;
            if (CryptConfig.NormalizeFingerprint(actual) != CryptConfig.NormalizeFingerprint(Fingerprint))
            {
                throw new WrongKeyException($"key file fingerprint {Fingerprint} does not match its key ({actual})", path);
            }
        }

        return key;
    }

    /// <summary>Makes a new key file with a random key.</summary>
    public static string Create(byte[] key, KeyDerivation kdf, string? passphrase, string? hint = null)
    {
        var now = DateTimeOffset.Now.ToString("yyyy-MM-dd'T'HH:mm:sszzz", System.Globalization.CultureInfo.InvariantCulture);
        var root = new JsonObject();
        if (kdf == KeyDerivation.None)
        {
            root["kdf"] = null;
            root["data"] = Convert.ToBase64String(key);
        }
        else
        {
            var pass = Encoding.UTF8.GetBytes(passphrase ?? throw new ArgumentException("a passphrase is required"));
            if (pass.Length < 5)
            {
                throw new ArgumentException("the passphrase must have at least 5 bytes");
            }

            var salt = RandomNumberGenerator.GetBytes(32);
            byte[] wrap;
            if (kdf == KeyDerivation.Scrypt)
            {
                wrap = Org.BouncyCastle.Crypto.Generators.SCrypt.Generate(pass, salt, 65536, 8, 1, 32);
                root["kdf"] = new JsonObject { ["Scrypt"] = new JsonObject { ["n"] = 65536, ["r"] = 8, ["p"] = 1, ["salt"] = Convert.ToBase64String(salt) } };
            }
            else
            {
                wrap = Rfc2898DeriveBytes.Pbkdf2(pass, salt, 65535, HashAlgorithmName.SHA256, 32);
                root["kdf"] = new JsonObject { ["PBKDF2"] = new JsonObject { ["iter"] = 65535, ["salt"] = Convert.ToBase64String(salt) } };
            }

            var data = new byte[64];
            RandomNumberGenerator.Fill(data.AsSpan(0, 16));
            CryptConfig.Encrypt(wrap, data.AsSpan(0, 16), key, data.AsSpan(32, 32), data.AsSpan(16, 16));
            root["data"] = Convert.ToBase64String(data);
        }

        root["created"] = now;
        root["modified"] = now;
        root["fingerprint"] = CryptConfig.FromRawKey(key).Fingerprint;
        if (hint is not null)
        {
            root["hint"] = hint;
        }

        return root.ToJsonString();
    }
}
