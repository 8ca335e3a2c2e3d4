using System.Net;
using System.Security.Cryptography;

namespace RestoreFs.Datastore.S3;

/// <summary>How the bucket goes into a request URL.</summary>
public enum S3Addressing
{
    /// <summary>Virtual-host style for AWS endpoints and endpoints with a <c>{{bucket}}</c> template, path style otherwise.</summary>
    Auto,

    /// <summary><c>https://endpoint/bucket/key</c> (Ceph RGW, MinIO … without wildcard DNS).</summary>
    Path,

    /// <summary><c>https://bucket.endpoint/key</c>.</summary>
    VirtualHost,
}

/// <summary>
/// Everything an <see cref="S3Client"/> needs. Build it with <see cref="Resolve"/> to fill the gaps from the
/// environment and the AWS-style files. The endpoint may carry PBS-style templates <c>{{bucket}}</c> and
/// <c>{{region}}</c> (<c>https://{{bucket}}.s3.{{region}}.amazonaws.com</c>).
/// </summary>
public sealed record S3Options
{
    public const string DefaultRegion = "us-east-1";

    /// <summary>Scheme, host and optional port, e.g. <c>https://s3.example.net:9000</c>; null = AWS for the region.</summary>
    public string? Endpoint { get; init; }

    public string? Region { get; init; }

    public string? AccessKeyId { get; init; }

    public string? SecretAccessKey { get; init; }

    public string? SessionToken { get; init; }

    public S3Addressing Addressing { get; init; } = S3Addressing.Auto;

    /// <summary>SHA-256 of the server certificate (hex, colons allowed): pinned, then chain and name are not checked.</summary>
    public string? CertificateFingerprint { get; init; }

    /// <summary>Allows plain http to a host that is not loopback.</summary>
    public bool Insecure { get; init; }

    /// <summary>How long a TCP (+TLS) connect may take before the endpoint counts as unreachable.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(3);

    /// <summary>How long one attempt may take until the answer's headers arrive and its body is read.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Attempts per request for 500/502/503/504, timeouts and refused connections (1 = no retry).</summary>
    public int MaxAttempts { get; init; } = 4;

    /// <summary>Wait before the second attempt; doubled for each further one (with jitter).</summary>
    public TimeSpan RetryBaseDelay { get; init; } = TimeSpan.FromMilliseconds(200);

    /// <summary>Connections kept to the endpoint at most.</summary>
    public int MaxConnections { get; init; } = 32;

    /// <summary>Send <c>If-None-Match: *</c> on conditional puts (off for providers that reject it).</summary>
    public bool ConditionalPuts { get; init; } = true;

    /// <summary>Where the values came from, for messages ("options", "environment", "profile default in ~/.aws/config").</summary>
    public string Source { get; init; } = "options";

    /// <summary>
    /// Fills what <paramref name="given"/> leaves null from the environment (<c>AWS_ENDPOINT_URL</c>,
    /// <c>AWS_ENDPOINT_URL_S3</c>, <c>AWS_REGION</c>/<c>AWS_DEFAULT_REGION</c>, <c>AWS_ACCESS_KEY_ID</c>,
    /// <c>AWS_SECRET_ACCESS_KEY</c>, <c>AWS_SESSION_TOKEN</c>), then from the profile (<c>AWS_PROFILE</c> or
    /// "default") in <c>AWS_SHARED_CREDENTIALS_FILE</c> (~/.aws/credentials) and <c>AWS_CONFIG_FILE</c> (~/.aws/config):
    /// <c>aws_access_key_id</c>, <c>aws_secret_access_key</c>, <c>aws_session_token</c>, <c>region</c>,
    /// <c>endpoint_url</c> and <c>s3 = addressing_style = path|virtual</c>. Keys come as a pair from one place.
    /// </summary>
    public static S3Options Resolve(S3Options? given = null, IReadOnlyDictionary<string, string?>? environment = null, string? profile = null)
    {
        var o = given ?? new S3Options();
        string? Env(string name)
        {
            var v = environment is null ? Environment.GetEnvironmentVariable(name) : environment.GetValueOrDefault(name);
            return string.IsNullOrWhiteSpace(v) ? null : v.Trim();
        }

        var sources = new List<string>();
        if (o.AccessKeyId is not null || o.Endpoint is not null || o.Region is not null)
        {
            sources.Add("options");
        }

        var envKey = Env("AWS_ACCESS_KEY_ID");
        var envSecret = Env("AWS_SECRET_ACCESS_KEY");
        if (o.AccessKeyId is null && envKey is not null && envSecret is not null)
        {
            o = o with { AccessKeyId = envKey, SecretAccessKey = envSecret, SessionToken = o.SessionToken ?? Env("AWS_SESSION_TOKEN") };
            sources.Add("environment");
        }

        var envEndpoint = Env("AWS_ENDPOINT_URL_S3") ?? Env("AWS_ENDPOINT_URL");
        if (o.Endpoint is null && envEndpoint is not null)
        {
            o = o with { Endpoint = envEndpoint };
        }

        if (o.Region is null && (Env("AWS_REGION") ?? Env("AWS_DEFAULT_REGION")) is { } envRegion)
        {
            o = o with { Region = envRegion };
        }

        if (o.AccessKeyId is null || o.Region is null || o.Endpoint is null)
        {
            var name = profile ?? Env("AWS_PROFILE") ?? "default";
            var home = Env("HOME") ?? Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
            var credentialsFile = Env("AWS_SHARED_CREDENTIALS_FILE") ?? Path.Combine(home, ".aws", "credentials");
            var configFile = Env("AWS_CONFIG_FILE") ?? Path.Combine(home, ".aws", "config");
            var fromCredentials = AwsProfileFile.Read(credentialsFile, name, configStyle: false);
            var fromConfig = AwsProfileFile.Read(configFile, name, configStyle: true);
            string? Pick(string key) => fromCredentials?.GetValueOrDefault(key) ?? fromConfig?.GetValueOrDefault(key);
            if (o.AccessKeyId is null && Pick("aws_access_key_id") is { } k && Pick("aws_secret_access_key") is { } s)
            {
                o = o with { AccessKeyId = k, SecretAccessKey = s, SessionToken = o.SessionToken ?? Pick("aws_session_token") };
                sources.Add($"profile {name} ({(fromCredentials?.ContainsKey("aws_access_key_id") == true ? credentialsFile : configFile)})");
            }
            else if ((profile is not null || Env("AWS_PROFILE") is not null) && fromCredentials is null && fromConfig is null)
            {
                throw new S3ConfigurationException($"AWS profile '{name}' is in neither {credentialsFile} nor {configFile}");
            }

            o = o with
            {
                Region = o.Region ?? Pick("region"),
                Endpoint = o.Endpoint ?? Pick("endpoint_url") ?? Pick("s3.endpoint_url"),
            };
            if (o.Addressing == S3Addressing.Auto)
            {
                o = o with
                {
                    Addressing = Pick("s3.addressing_style") switch
                    {
                        "path" => S3Addressing.Path,
                        "virtual" => S3Addressing.VirtualHost,
                        _ => S3Addressing.Auto,
                    },
                };
            }
        }

        return o with { Source = sources.Count == 0 ? "defaults" : string.Join(", ", sources) };
    }

    internal string EffectiveRegion => string.IsNullOrEmpty(Region) ? DefaultRegion : Region;

    /// <summary>The endpoint template with the region filled in (AWS's when none is given).</summary>
    internal string EffectiveEndpoint => (Endpoint ?? "https://{{bucket}}.s3.{{region}}.amazonaws.com").Replace("{{region}}", EffectiveRegion, StringComparison.Ordinal);

    /// <summary>The pinned fingerprint as 32 bytes, null when none; a malformed one is a configuration error.</summary>
    internal byte[]? FingerprintBytes()
    {
        if (string.IsNullOrWhiteSpace(CertificateFingerprint))
        {
            return null;
        }

        var hex = CertificateFingerprint.Replace(":", string.Empty, StringComparison.Ordinal).Trim();
        try
        {
            var bytes = Convert.FromHexString(hex);
            if (bytes.Length == SHA256.HashSizeInBytes)
            {
                return bytes;
            }
        }
        catch (FormatException)
        {
        }

        throw new S3ConfigurationException($"certificate fingerprint '{CertificateFingerprint}' is not a SHA-256 (64 hex digits, colons allowed)");
    }

    internal static bool IsLoopbackHost(string host)
    {
        var h = host.Trim('[', ']');
        if (h.Equals("localhost", StringComparison.OrdinalIgnoreCase) || h.EndsWith(".localhost", StringComparison.OrdinalIgnoreCase))
        {
            return true;
        }

        return IPAddress.TryParse(h, out var ip) && IPAddress.IsLoopback(ip);
    }
}

/// <summary>Reads one profile of an AWS-style ini file (credentials or config), nested <c>s3 =</c> settings as "s3.key".</summary>
internal static class AwsProfileFile
{
    public static Dictionary<string, string>? Read(string path, string profile, bool configStyle)
    {
        if (!File.Exists(path))
        {
            return null;
        }

        Dictionary<string, string>? result = null;
        var inSection = false;
        string? nestedParent = null;
        foreach (var raw in File.ReadLines(path))
        {
            var line = raw;
            var hash = line.IndexOfAny(['#', ';']);
            if (hash == 0 || (hash > 0 && char.IsWhiteSpace(line[hash - 1])))
            {
                line = line[..hash];
            }

            if (line.Trim().Length == 0)
            {
                continue;
            }

            var trimmed = line.Trim();
            if (trimmed.StartsWith('[') && trimmed.EndsWith(']'))
            {
                var name = trimmed[1..^1].Trim();
                if (configStyle && name.StartsWith("profile ", StringComparison.Ordinal))
                {
                    name = name["profile ".Length..].Trim();
                }

                inSection = name == profile;
                nestedParent = null;
                if (inSection)
                {
                    result ??= new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
                }

                continue;
            }

            if (!inSection)
            {
                continue;
            }

            var eq = trimmed.IndexOf('=');
            if (eq <= 0)
            {
                continue;
            }

            var key = trimmed[..eq].Trim();
            var value = trimmed[(eq + 1)..].Trim();
            var indented = char.IsWhiteSpace(line[0]);
            if (indented && nestedParent is not null)
            {
                result![$"{nestedParent}.{key}"] = value;
            }
            else if (value.Length == 0)
            {
                nestedParent = key;
            }
            else
            {
                nestedParent = null;
                result![key] = value;
            }
        }

        return result;
    }
}
