using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace RestoreFs.Datastore;

/// <summary>Crypt mode of an archive (spec 5.3).</summary>
public enum CryptMode
{
    None,
    Encrypt,
    SignOnly,
}

/// <summary>One archive listed in a manifest.</summary>
public sealed record ManifestFile(string FileName, CryptMode CryptMode, ulong Size, string Csum);

/// <summary>A snapshot's manifest, <c>index.json.blob</c> (spec section 5).</summary>
public sealed class Manifest
{
    private Manifest(JsonObject root, string backupType, string backupId, long backupTime, IReadOnlyList<ManifestFile> files,
        string? keyFingerprint, string? signature, byte[] json)
    {
        Root = root;
        BackupType = backupType;
        BackupId = backupId;
        BackupTime = backupTime;
        Files = files;
        KeyFingerprint = keyFingerprint;
        Signature = signature;
        Json = json;
    }

    public JsonObject Root { get; }

    public string BackupType { get; }

    public string BackupId { get; }

    public long BackupTime { get; }

    public IReadOnlyList<ManifestFile> Files { get; }

    public string? KeyFingerprint { get; }

    public string? Signature { get; }

    /// <summary>The decoded JSON as stored.</summary>
    public byte[] Json { get; }

    public bool IsEncrypted => Files.Any(f => f.CryptMode == CryptMode.Encrypt);

    public ManifestFile? Find(string fileName) => Files.FirstOrDefault(f => f.FileName == fileName);

    /// <summary>JSON as a manifest or key file must be: one value per key, shallow.</summary>
    internal static readonly JsonDocumentOptions StrictJson = new() { AllowDuplicateProperties = false, MaxDepth = 32 };

    public static Manifest Parse(byte[] json, string path)
    {
        try
        {
            var root = JsonNode.Parse(json, null, StrictJson) as JsonObject ?? throw new ManifestMismatchException("manifest is not a JSON object", path);
            var files = new List<ManifestFile>();
            var names = new HashSet<string>(StringComparer.Ordinal);
            var list = root["files"] switch
            {
                null => new JsonArray(),
                JsonArray a => a,
                _ => throw new ManifestMismatchException("manifest 'files' is not an array", path),
            };
            foreach (var f in list)
            {
                var o = f as JsonObject ?? throw new ManifestMismatchException("manifest file entry is not an object", path);
                var name = (string?)o["filename"] ?? throw new ManifestMismatchException("manifest file entry without filename", path);
                if (!Names.IsArchiveName(name))
                {
                    throw new ManifestMismatchException(
                        $"manifest lists '{Names.Printable(name)}', which is no archive name (a plain name ending in .fidx, .didx or .blob)", path);
                }

                if (!names.Add(name))
                {
                    throw new ManifestMismatchException($"manifest lists {name} twice", path);
                }

                var mode = ((string?)o["crypt-mode"]) switch
                {
                    null or "none" => CryptMode.None,
                    "encrypt" => CryptMode.Encrypt,
                    "sign-only" => CryptMode.SignOnly,
                    var other => throw new ManifestMismatchException($"unknown crypt-mode '{Names.Printable(other)}'", path),
                };
                var csum = ((string?)o["csum"] ?? string.Empty).ToLowerInvariant();
                if (csum.Length != 64 || !csum.All(char.IsAsciiHexDigitLower))
                {
                    throw new ManifestMismatchException($"manifest entry {name} has csum '{Names.Printable(csum)}', not 64 hex digits", path);
                }

                files.Add(new ManifestFile(name, mode, (ulong)o["size"]!, csum));
            }

            var fingerprint = (string?)root["unprotected"]?["key-fingerprint"];
            var type = (string?)root["backup-type"] ?? throw new ManifestMismatchException("manifest has no backup-type", path);
            var id = (string?)root["backup-id"] ?? throw new ManifestMismatchException("manifest has no backup-id", path);
            if (!Names.IsBackupType(type) || !Names.IsBackupId(id))
            {
                throw new ManifestMismatchException($"manifest names group '{Names.Printable(type)}/{Names.Printable(id)}', not a valid backup group", path);
            }

            return new Manifest(root, type, id, (long)root["backup-time"]!, files, fingerprint, (string?)root["signature"], json);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException or NullReferenceException or ArgumentException
                                      or OverflowException or InvalidCastException or KeyNotFoundException)
        {
            throw new ManifestMismatchException($"malformed manifest: {e.Message}", path);
        }
    }

    /// <summary>The bytes the signature covers: canonical JSON without <c>unprotected</c> and <c>signature</c>.</summary>
    public static byte[] SignedBytes(JsonObject root)
    {
        var copy = JsonNode.Parse(root.ToJsonString())!.AsObject();
        copy.Remove("unprotected");
        copy.Remove("signature");
        return CanonicalJson.Serialize(copy);
    }

    /// <summary>
    /// PBS's rules (spec 5.4): with a key, a fingerprint in the manifest must match it, and a signature must verify.
    /// Without a key, a manifest that names a key fingerprint cannot be used for encrypted data (checked by callers).
    /// </summary>
    public void Verify(CryptConfig? key, string path)
    {
        if (key is null)
        {
            return;
        }

        if (KeyFingerprint is not null &&
            CryptConfig.NormalizeFingerprint(KeyFingerprint) != CryptConfig.NormalizeFingerprint(key.Fingerprint))
        {
            throw new WrongKeyException($"wrong key: the snapshot was made with key {KeyFingerprint}, the given key is {key.Fingerprint}", path);
        }

        if (Signature is not null)
        {
            var expected = Convert.ToHexStringLower(key.Sign(SignedBytes(Root)));
            if (!string.Equals(expected, Signature, StringComparison.OrdinalIgnoreCase))
            {
                throw new ManifestMismatchException("manifest signature does not verify with the given key", path);
            }
        }
    }

    /// <summary>Builds a manifest (writer side); signs it and records the fingerprint when keyed.</summary>
    public static byte[] Build(string type, string id, long time, IEnumerable<ManifestFile> files, CryptConfig? key)
    {
        var root = new JsonObject
        {
            ["backup-type"] = type,
            ["backup-id"] = id,
            ["backup-time"] = time,
            ["files"] = new JsonArray(files.Select(f => (JsonNode)new JsonObject
            {
                ["crypt-mode"] = f.CryptMode switch { CryptMode.Encrypt => "encrypt", CryptMode.SignOnly => "sign-only", _ => "none" },
                ["csum"] = f.Csum,
                ["filename"] = f.FileName,
                ["size"] = f.Size,
            }).ToArray()),
        };
        var unprotected = new JsonObject();
        if (key is not null)
        {
            unprotected["key-fingerprint"] = key.Fingerprint;
            root["signature"] = Convert.ToHexStringLower(key.Sign(SignedBytes(root)));
        }
        else
        {
            root["signature"] = null;
        }

        root["unprotected"] = unprotected;
        return Encoding.UTF8.GetBytes(root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    public static string Sha256Hex(ReadOnlySpan<byte> data) => Convert.ToHexStringLower(SHA256.HashData(data));
}
