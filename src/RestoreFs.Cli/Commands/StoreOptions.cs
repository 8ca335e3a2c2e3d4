using System.CommandLine;
using System.Globalization;
using RestoreFs.Datastore;
using RestoreFs.Datastore.S3;

namespace RestoreFs.Cli.Commands;

/// <summary>
/// STORE handling shared by every command: a local directory or <c>s3://BUCKET/STORE</c>, and the options that reach
/// an S3 datastore (endpoint, profile, insecure http, certificate pin) and size its local chunk cache.
/// </summary>
public static class StoreOptions
{
    public static readonly Option<string?> Endpoint = new("--s3-endpoint")
    {
        Description = "S3 endpoint URL, e.g. https://s3.example.net (else AWS_ENDPOINT_URL or the profile's endpoint_url).",
    };

    public static readonly Option<string?> Profile = new("--s3-profile")
    {
        Description = "Profile of ~/.aws/credentials and ~/.aws/config to take keys, region and endpoint from.",
    };

    public static readonly Option<bool> Insecure = new("--s3-insecure")
    {
        Description = "Allow plain http to an S3 endpoint that is not on this host.",
    };

    public static readonly Option<string?> Fingerprint = new("--s3-fingerprint")
    {
        Description = "SHA-256 fingerprint of the S3 endpoint's certificate to pin (hex, colons allowed).",
    };

    public static readonly Option<string?> CacheDir = new("--cache-dir")
    {
        Description = "Local cache of chunks read from S3 (default $XDG_CACHE_HOME/restorefs or ~/.cache/restorefs).",
    };

    public static readonly Option<string?> CacheSize = new("--cache-size")
    {
        Description = "Bound of the S3 chunk cache, e.g. 512M, 4G (default 2G; 0 turns it off).",
    };

    public static void AddTo(Command command)
    {
        command.Options.Add(Endpoint);
        command.Options.Add(Profile);
        command.Options.Add(Insecure);
        command.Options.Add(Fingerprint);
        command.Options.Add(CacheDir);
        command.Options.Add(CacheSize);
    }

    /// <summary>Makes the options the defaults of every store opened by this process.</summary>
    public static void Apply(ParseResult parse)
    {
        var s3 = new S3Options
        {
            Endpoint = parse.GetValue(Endpoint),
            Insecure = parse.GetValue(Insecure),
            CertificateFingerprint = parse.GetValue(Fingerprint),
        };
        StoreOpenOptions.Default = new StoreOpenOptions
        {
            S3 = s3,
            Profile = parse.GetValue(Profile),
            CacheDirectory = parse.GetValue(CacheDir),
            CacheBytes = parse.GetValue(CacheSize) is { } size ? ParseSize(size) : StoreOpenOptions.DefaultCacheBytes,
        };
    }

    /// <summary>The options again, for a child process that serves in the background.</summary>
    public static IEnumerable<string> ForwardArguments(ParseResult parse)
    {
        foreach (var option in new[] { Endpoint, Profile, Fingerprint, CacheSize })
        {
            if (parse.GetValue(option) is { } value)
            {
                yield return option.Name;
                yield return value;
            }
        }

        if (parse.GetValue(CacheDir) is { } dir)
        {
            yield return CacheDir.Name;
            yield return Path.GetFullPath(dir);
        }

        if (parse.GetValue(Insecure))
        {
            yield return Insecure.Name;
        }
    }

    /// <summary>
    /// Checks STORE: an <c>s3://BUCKET/STORE</c> URL as it is (its syntax checked), a local directory as an absolute
    /// path that exists. Throws an error saying what is wrong.
    /// </summary>
    public static string Resolve(string store)
    {
        if (StoreOpenOptions.IsRemote(store))
        {
            return StoreOpenOptions.Normalize(store);
        }

        var full = Path.GetFullPath(store);
        if (!Directory.Exists(full))
        {
            throw new DatastoreException("datastore directory does not exist", full);
        }

        return full;
    }

    /// <summary><see cref="Resolve"/> that prints the error and gives null (for commands that return exit codes).</summary>
    public static string? Normalize(string store)
    {
        try
        {
            return Resolve(store);
        }
        catch (DatastoreException e)
        {
            Console.Error.WriteLine($"restorefs: {e.Message}");
            return null;
        }
    }

    public static long ParseSize(string text)
    {
        var t = text.Trim();
        var multiplier = 1L;
        if (t.Length > 0 && char.IsLetter(t[^1]))
        {
            multiplier = char.ToUpperInvariant(t[^1]) switch
            {
                'K' => 1L << 10,
                'M' => 1L << 20,
                'G' => 1L << 30,
                'T' => 1L << 40,
                _ => throw new ArgumentException($"'{text}' is no size (a number with K, M, G or T)"),
            };
            t = t[..^1];
        }

        if (!long.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out var n) || n > long.MaxValue / multiplier)
        {
            throw new ArgumentException($"'{text}' is no size (a number with K, M, G or T)");
        }

        return n * multiplier;
    }
}
