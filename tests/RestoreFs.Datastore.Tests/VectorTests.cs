using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using RestoreFs.Datastore;

namespace RestoreFs.Datastore.Tests;

/// <summary>The constants and test vectors of the PBS format spec (section 11).</summary>
public sealed class VectorTests
{
    private static byte[] Key0To31 => Enumerable.Range(0, 32).Select(i => (byte)i).ToArray();

    [Theory]
    [InlineData("uncompressed", "42ab3807be8370a1")]
    [InlineData("compressed", "31b958426fb6a37f")]
    [InlineData("encrypted", "7b6785be222d4cf0")]
    [InlineData("encrypted-compressed", "e6591bbf0bbfd80b")]
    public void Blob_magics(string kind, string hex)
    {
        var magic = kind switch
        {
            "uncompressed" => DataBlob.MagicUncompressed,
            "compressed" => DataBlob.MagicCompressed,
            "encrypted" => DataBlob.MagicEncrypted,
            _ => DataBlob.MagicEncryptedCompressed,
        };
        Assert.Equal(hex, Convert.ToHexStringLower(magic));
    }

    [Fact]
    public void Index_magics()
    {
        Assert.Equal("2f7f41ed91fd0fcd", Convert.ToHexStringLower(FixedIndex.Magic));
        Assert.Equal("1c914ea519bab3cd", Convert.ToHexStringLower(DynamicIndex.Magic));
    }

    [Fact]
    public void Fingerprint_input_id_key_and_fingerprint()
    {
        Assert.Equal("6ed0ef77471fff4d55c7a8fe4a9db62161407f134c725ddf30992d25ec45ed26", Convert.ToHexStringLower(CryptConfig.FingerprintInput));
        var key = CryptConfig.FromRawKey(Key0To31);
        Assert.Equal("0e:ab:d4:46:0b:6e:b9:ca:34:50:23:de:e2:b7:78:c7:90:e5:4a:16:83:b9:65:9c:0a:57:ae:19:90:90:15:9b", key.Fingerprint);
        Assert.Equal("0e:ab:d4:46:0b:6e:b9:ca", key.ShortFingerprint);
        Assert.Equal("7c2c013efd07f3b25717a485263343cd4d292a4b65c200bb3b18ea227abe225c",
            Convert.ToHexStringLower(Rfc2898DeriveBytes.Pbkdf2(Key0To31, "_id_key"u8.ToArray(), 10, HashAlgorithmName.SHA256, 32)));
    }

    [Fact]
    public void Plain_and_keyed_digests()
    {
        var data = Enumerable.Range(0, 100000).Select(i => (byte)(i % 255)).ToArray();
        Assert.Equal("539a60c3a7cc268ecce082c9184702bc829bb106a2643dee26db3ff0bf8457ee", Convert.ToHexStringLower(SHA256.HashData(data)));
        var ones = CryptConfig.FromRawKey(Enumerable.Repeat((byte)1, 32).ToArray());
        Assert.Equal("32a2bf5dff84090e7f175c27f666f5cc8268046ab6efda0e501196bceffdc675", Convert.ToHexStringLower(ones.KeyedDigest(data)));
        Assert.Equal("e34178a27b992c4a218599bf7f43ed50bc464a03d624d9092306fe2ed74d557e",
            Convert.ToHexStringLower(CryptConfig.FromRawKey(Key0To31).KeyedDigest("hello"u8)));
        Assert.Equal("bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8", Convert.ToHexStringLower(SHA256.HashData(new byte[4194304])));
    }

    [Fact]
    public void Plain_blob_of_hello_is_byte_exact()
    {
        var blob = DataBlob.Encode("hello"u8, null, compress: false);
        Assert.Equal("42ab3807be8370a186a6103668656c6c6f", Convert.ToHexStringLower(blob));
        Assert.Equal("hello"u8.ToArray(), DataBlob.Decode(blob, null, "vector"));
    }

    [Fact]
    public void Encrypted_blob_with_sixteen_byte_iv_is_byte_exact()
    {
        var key = CryptConfig.FromRawKey(Key0To31);
        var iv = Enumerable.Range(0, 16).Select(i => (byte)i).ToArray();
        var blob = DataBlob.EncodeEncryptedWithIv("hello"u8, key, iv);
        Assert.Equal("7b6785be222d4cf0784eea93000102030405060708090a0b0c0d0e0f0c84c431837297c0b19e77e5608162ea0f09cc1a56",
            Convert.ToHexStringLower(blob));
        Assert.Equal("hello"u8.ToArray(), DataBlob.Decode(blob, key, "vector"));
    }

    [Fact]
    public void Scrypt_key_and_manifest_signature()
    {
        var wrap = Org.BouncyCastle.Crypto.Generators.SCrypt.Generate("test"u8.ToArray(), [], 65536, 8, 1, 32);
        Assert.Equal("28cdb1a3bef39396c3860e00d448fe7a0efd8244486ab6feb30457681d31597e", Convert.ToHexStringLower(wrap));
        var key = CryptConfig.FromRawKey(wrap);
        Assert.StartsWith("12:b9:b7:74:bb:3d:89:95", key.Fingerprint);

        var manifest = new JsonObject
        {
            ["backup-type"] = "host",
            ["backup-id"] = "elsa",
            ["backup-time"] = 1593179765,
            ["files"] = new JsonArray(
                new JsonObject { ["filename"] = "test1.img.fidx", ["size"] = 200, ["csum"] = string.Concat(Enumerable.Repeat("01", 32)), ["crypt-mode"] = "encrypt" },
                new JsonObject { ["filename"] = "abc.blob", ["size"] = 200, ["csum"] = string.Concat(Enumerable.Repeat("02", 32)), ["crypt-mode"] = "none" }),
            ["unprotected"] = new JsonObject { ["note"] = "This is not protected by the signature." },
        };
        var signed = Manifest.SignedBytes(manifest);
        Assert.Equal("{\"backup-id\":\"elsa\",\"backup-time\":1593179765,\"backup-type\":\"host\",\"files\":[{\"crypt-mode\":\"encrypt\",\"csum\":\"" +
                     string.Concat(Enumerable.Repeat("01", 32)) + "\",\"filename\":\"test1.img.fidx\",\"size\":200},{\"crypt-mode\":\"none\",\"csum\":\"" +
                     string.Concat(Enumerable.Repeat("02", 32)) + "\",\"filename\":\"abc.blob\",\"size\":200}]}", Encoding.UTF8.GetString(signed));
        Assert.Equal("d7b446fb7db081662081d4b40fedd858a1d6307a5aff4ecff7d5bf4fd35679e9", Convert.ToHexStringLower(key.Sign(signed)));
    }

    [Fact]
    public void Crc32_of_hello() =>
        Assert.Equal(0x3610a686u, System.IO.Hashing.Crc32.HashToUInt32("hello"u8));

    [Fact]
    public void Canonical_json_escapes_like_serde_json()
    {
        var node = new JsonObject { ["b"] = "q\"\\\n\u0001é/", ["a"] = 1 };
        Assert.Equal("{\"a\":1,\"b\":\"q\\\"\\\\\\n\\u0001é/\"}", Encoding.UTF8.GetString(CanonicalJson.Serialize(JsonNode.Parse(node.ToJsonString())!)));
    }
}
