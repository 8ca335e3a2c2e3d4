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

    public static KeyFile Load(string path)
    {
        string text;
        try
        {
            text = File.ReadAllText(path);
        }
        catch (IOException e)
        {
            throw new DatastoreException($"cannot read key file: {e.Message}", path);
        }

        return Parse(text, path);
    }

    public static KeyFile Parse(string json, string path = "<key>")
    {
        try
        {
            var root = JsonNode.Parse(json)?.AsObject() ?? throw new DatastoreException("key file is not a JSON object", path);
            var data = Convert.FromBase64String((string?)root["data"] ?? throw new DatastoreException("key file has no 'data'", path));
            var created = (string?)root["created"] ?? string.Empty;
            var modified = (string?)root["modified"] ?? created;
            var fingerprint = (string?)root["fingerprint"];
            var hint = (string?)root["hint"];
            var kdf = root["kdf"];
            if (kdf is null)
            {
                return new KeyFile(KeyDerivation.None, data, null, 0, 0, 0, 0, fingerprint, created, modified, hint);
            }

            var obj = kdf.AsObject();
            if (obj["Scrypt"] is JsonObject s)
            {
                return new KeyFile(KeyDerivation.Scrypt, data, Convert.FromBase64String((string)s["salt"]!),
                    (long)s["n"]!, (int)s["r"]!, (int)s["p"]!, 0, fingerprint, created, modified, hint);
            }

            if (obj["PBKDF2"] is JsonObject k)
            {
                return new KeyFile(KeyDerivation.Pbkdf2, data, Convert.FromBase64String((string)k["salt"]!),
                    0, 0, 0, (int)k["iter"]!, fingerprint, created, modified, hint);
            }

            throw new DatastoreException("key file names an unknown kdf", path);
        }
        catch (Exception e) when (e is JsonException or FormatException or InvalidOperationException or NullReferenceException)
        {
            throw new DatastoreException($"malformed key file: {e.Message}", path);
        }
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
