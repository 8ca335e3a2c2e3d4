using System.Globalization;
using System.Security.Cryptography;
using System.Text;

namespace RestoreFs.Datastore.S3;

/// <summary>AWS Signature Version 4 (<c>AWS4-HMAC-SHA256</c>, service <c>s3</c>) for one request.</summary>
public sealed class SigV4(string accessKeyId, string secretAccessKey, string region)
{
    public const string EmptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    private readonly Lock gate = new();
    private string? keyDate;
    private byte[]? signingKey;

    public string Region { get; } = region;

    /// <summary>
    /// The Authorization header value for a request. <paramref name="canonicalUri"/> is the already-encoded path,
    /// <paramref name="query"/> the raw (unencoded) parameters, <paramref name="headers"/> the headers to sign
    /// (lower-case names; must include host, x-amz-date and x-amz-content-sha256).
    /// </summary>
    public string Authorization(string method, string canonicalUri, IReadOnlyList<KeyValuePair<string, string>> query,
        SortedDictionary<string, string> headers, string payloadHash, DateTime utcNow)
    {
        var date = utcNow.ToString("yyyyMMdd", CultureInfo.InvariantCulture);
        var scope = $"{date}/{Region}/s3/aws4_request";
        var canonical = new StringBuilder(256);
        canonical.Append(method).Append('\n').Append(canonicalUri).Append('\n');
        canonical.Append(CanonicalQuery(query)).Append('\n');
        foreach (var (name, value) in headers)
        {
            canonical.Append(name).Append(':').Append(value.Trim()).Append('\n');
        }

        var signed = string.Join(';', headers.Keys);
        canonical.Append('\n').Append(signed).Append('\n').Append(payloadHash);
        var stringToSign = "AWS4-HMAC-SHA256\n" + headers["x-amz-date"] + "\n" + scope + "\n" + Hex(SHA256.HashData(Encoding.UTF8.GetBytes(canonical.ToString())));
        var signature = Hex(HMACSHA256.HashData(SigningKey(date), Encoding.UTF8.GetBytes(stringToSign)));
        return $"AWS4-HMAC-SHA256 Credential={accessKeyId}/{scope}, SignedHeaders={signed}, Signature={signature}";
    }

    public static string AmzDate(DateTime utcNow) => utcNow.ToString("yyyyMMdd'T'HHmmss'Z'", CultureInfo.InvariantCulture);

    public static string CanonicalQuery(IReadOnlyList<KeyValuePair<string, string>> query)
    {
        if (query.Count == 0)
        {
            return string.Empty;
        }

        var encoded = query.Select(p => (Key: UriEncode(p.Key, encodeSlash: true), Value: UriEncode(p.Value, encodeSlash: true)))
            .OrderBy(p => p.Key, StringComparer.Ordinal).ThenBy(p => p.Value, StringComparer.Ordinal);
        return string.Join('&', encoded.Select(p => p.Key + "=" + p.Value));
    }

    /// <summary>S3's URI encoding: everything but A–Z a–z 0–9 - . _ ~ as %XX of its UTF-8 bytes ('/' kept in paths).</summary>
    public static string UriEncode(string value, bool encodeSlash)
    {
        var sb = new StringBuilder(value.Length + 8);
        foreach (var b in Encoding.UTF8.GetBytes(value))
        {
            var c = (char)b;
            if (c is (>= 'A' and <= 'Z') or (>= 'a' and <= 'z') or (>= '0' and <= '9') or '-' or '.' or '_' or '~' || (c == '/' && !encodeSlash))
            {
                sb.Append(c);
            }
            else
            {
                sb.Append('%').Append(b.ToString("X2", CultureInfo.InvariantCulture));
            }
        }

        return sb.ToString();
    }

    public static string Hex(ReadOnlySpan<byte> bytes) => Convert.ToHexStringLower(bytes);

    private byte[] SigningKey(string date)
    {
        lock (gate)
        {
            if (keyDate != date || signingKey is null)
            {
                var k = HMACSHA256.HashData(Encoding.UTF8.GetBytes("AWS4" + secretAccessKey), Encoding.UTF8.GetBytes(date));
                k = HMACSHA256.HashData(k, Encoding.UTF8.GetBytes(Region));
                k = HMACSHA256.HashData(k, "s3"u8.ToArray());
                signingKey = HMACSHA256.HashData(k, "aws4_request"u8.ToArray());
                keyDate = date;
            }

            return signingKey;
        }
    }
}
