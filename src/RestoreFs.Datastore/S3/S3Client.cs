using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Text;
using System.Xml;
using System.Xml.Linq;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace RestoreFs.Datastore.S3;

/// <summary>Size, ETag and time of an object (HEAD, or an entry of a listing).</summary>
public sealed record S3ObjectInfo(string Key, long Size, string? ETag, DateTimeOffset? LastModified);

/// <summary>One page of ListObjectsV2.</summary>
public sealed record S3ListPage(IReadOnlyList<S3ObjectInfo> Objects, IReadOnlyList<string> CommonPrefixes, string? NextContinuationToken)
{
    public bool IsTruncated => NextContinuationToken is not null;
}

/// <summary>All pages of a listing joined.</summary>
public sealed record S3Listing(IReadOnlyList<S3ObjectInfo> Objects, IReadOnlyList<string> CommonPrefixes, int Pages);

/// <summary>What a put did: created (or overwrote) the object, or found it present under a conditional put.</summary>
public sealed record S3PutResult(bool Created, string? ETag);

/// <summary>
/// A lean S3 client over <see cref="HttpClient"/>: SigV4, GET (whole and ranged), HEAD, ListObjectsV2, PUT
/// (optionally conditional), DELETE. Path-style or virtual-host addressing; https with optional certificate pin;
/// plain http only to loopback unless <see cref="S3Options.Insecure"/>. Bounded retries with exponential backoff on
/// 500/502/503/504, timeouts and refused or reset connections; every failure is an <see cref="S3Exception"/>
/// naming what to fix. Thread-safe; one instance per endpoint and key.
/// </summary>
public sealed class S3Client : IDisposable
{
    private static readonly string[] RetriedCodes = ["InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"];

    private readonly HttpClient http;
    private readonly SigV4 signer;
    private readonly ILogger log;
    private readonly Uri endpoint;
    private readonly bool virtualHost;
    private readonly byte[]? pin;
    private readonly TimeProvider time;
    private string? lastServerFingerprint;

    static S3Client()
    {
        // A request's timeout and the completion of its GET both run on pool threads. Readers block pool threads
        // while GETs are in flight (read-ahead runs several), and a busy process can hold the rest: keep threads at
        // hand so a timeout fires on time and completions never wait for the pool to grow (it adds about one thread
        // a second).
        ThreadPool.GetMinThreads(out var worker, out var io);
        ThreadPool.SetMinThreads(Math.Max(worker, 64), Math.Max(io, 64));
    }

    public S3Client(S3Options options, ILoggerFactory? logs = null, TimeProvider? timeProvider = null)
    {
        Options = options;
        log = (ILogger?)logs?.CreateLogger<S3Client>() ?? NullLogger.Instance;
        time = timeProvider ?? TimeProvider.System;
        if (string.IsNullOrEmpty(options.AccessKeyId) || string.IsNullOrEmpty(options.SecretAccessKey))
        {
            throw new S3ConfigurationException(
                "no S3 access key: give one in the options, as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or in an AWS profile file");
        }

        var template = options.EffectiveEndpoint;
        if (!Uri.TryCreate(template.Replace("{{bucket}}", "bucket", StringComparison.Ordinal), UriKind.Absolute, out var parsed)
            || (parsed.Scheme != Uri.UriSchemeHttps && parsed.Scheme != Uri.UriSchemeHttp)
            || (parsed.AbsolutePath != "/" && parsed.AbsolutePath.Length != 0) || parsed.Query.Length != 0)
        {
            throw new S3ConfigurationException($"S3 endpoint '{options.Endpoint}' is not an http(s) URL with only scheme, host and port");
        }

        virtualHost = options.Addressing switch
        {
            S3Addressing.Path => false,
            S3Addressing.VirtualHost => true,
            _ => template.Contains("{{bucket}}", StringComparison.Ordinal) || parsed.Host.EndsWith(".amazonaws.com", StringComparison.OrdinalIgnoreCase),
        };
        var host = template.Contains("{{bucket}}", StringComparison.Ordinal)
            ? new Uri(template.Replace("{{bucket}}.", string.Empty, StringComparison.Ordinal).Replace("{{bucket}}", string.Empty, StringComparison.Ordinal))
            : parsed;
        endpoint = new UriBuilder(host.Scheme, host.Host, host.Port).Uri;
        if (virtualHost && endpoint.HostNameType is UriHostNameType.IPv4 or UriHostNameType.IPv6)
        {
            throw new S3ConfigurationException($"virtual-host addressing needs a host name, not the address {endpoint.Host}: use path-style addressing");
        }

        if (endpoint.Scheme == Uri.UriSchemeHttp && !options.Insecure && !S3Options.IsLoopbackHost(endpoint.Host))
        {
            throw new S3ConfigurationException(
                $"plain http to {endpoint.Host} would send data and signatures unencrypted: use https, or allow it explicitly (insecure)");
        }

        pin = options.FingerprintBytes();
        signer = new SigV4(options.AccessKeyId, options.SecretAccessKey, options.EffectiveRegion);
        var handler = new SocketsHttpHandler
        {
            ConnectTimeout = options.ConnectTimeout,
            UseProxy = false,
            AllowAutoRedirect = false,
            AutomaticDecompression = DecompressionMethods.None,
            MaxConnectionsPerServer = Math.Max(1, options.MaxConnections),
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(50),
            PooledConnectionLifetime = TimeSpan.FromMinutes(10),
            ConnectCallback = ConnectAsync,
            SslOptions = new SslClientAuthenticationOptions { RemoteCertificateValidationCallback = ValidateCertificate },
        };
        http = new HttpClient(handler, disposeHandler: true) { Timeout = Timeout.InfiniteTimeSpan };
    }

    public S3Options Options { get; }

    /// <summary>The endpoint requests go to (scheme, host, port; the bucket is added per request).</summary>
    public Uri Endpoint => endpoint;

    public bool UsesVirtualHost => virtualHost;

    /// <summary>Requests sent (all attempts), for tests and statistics.</summary>
    public long RequestCount => Interlocked.Read(ref requests);

    private long requests;

    public static string Describe(string bucket, string? key = null) => key is null ? $"s3://{bucket}" : $"s3://{bucket}/{key}";

    /// <summary>Whole object; <see cref="S3ObjectNotFoundException"/> naming the key when it is absent.</summary>
    public async Task<byte[]> GetObjectAsync(string bucket, string key, CancellationToken ct = default)
        => await TryGetObjectAsync(bucket, key, ct).ConfigureAwait(false)
           ?? throw new S3ObjectNotFoundException("object does not exist", Describe(bucket, key), key);

    /// <summary>Whole object, or null when the key does not exist (a missing bucket still throws).</summary>
    public Task<byte[]?> TryGetObjectAsync(string bucket, string key, CancellationToken ct = default)
        => SendAsync(HttpMethod.Get, bucket, key, null, null, null, ct, async (response, token) =>
        {
            if (response.StatusCode == HttpStatusCode.NotFound)
            {
                await ThrowIfNotNoSuchKey(response, bucket, key, token).ConfigureAwait(false);
                return null;
            }

            await EnsureSuccess(response, bucket, key, token).ConfigureAwait(false);
            return await ReadBody(response, bucket, key, null, token).ConfigureAwait(false);
        });

    /// <summary>
    /// Whole object into a buffer rented from <paramref name="pool"/> (the caller returns it; <c>Length</c> bytes are
    /// valid), or null when the key does not exist. An object larger than <paramref name="maxBytes"/> is refused with
    /// an <see cref="S3ObjectTooLargeException"/> before its body is read. No copy and no fresh array per GET: the
    /// read path of chunks.
    /// </summary>
    public Task<(byte[] Buffer, int Length)?> TryGetObjectPooledAsync(string bucket, string key, System.Buffers.ArrayPool<byte> pool, int maxBytes,
        CancellationToken ct = default)
        => SendAsync<(byte[] Buffer, int Length)?>(HttpMethod.Get, bucket, key, null, null, null, ct, async (response, token) =>
        {
            if (response.StatusCode == HttpStatusCode.NotFound)
            {
                await ThrowIfNotNoSuchKey(response, bucket, key, token).ConfigureAwait(false);
                return null;
            }

            await EnsureSuccess(response, bucket, key, token).ConfigureAwait(false);
            var length = response.Content.Headers.ContentLength;
            if (length > maxBytes)
            {
                throw new S3ObjectTooLargeException($"the object has {length} bytes, more than the {maxBytes} it may have", Describe(bucket, key), length.Value);
            }

            await using var stream = await response.Content.ReadAsStreamAsync(token).ConfigureAwait(false);
            // One byte more than announced: a body longer than its Content-Length shows as a read that fills it.
            var buffer = pool.Rent(length is { } announced ? (int)announced + 1 : 1 << 20);
            var done = 0;
            try
            {
                while (true)
                {
                    if (done == buffer.Length)
                    {
                        if (length is not null || done > maxBytes)
                        {
                            throw new S3ObjectTooLargeException($"the answer has more than {done - 1} bytes, more than announced or allowed", Describe(bucket, key), done);
                        }

                        var larger = pool.Rent(Math.Min(maxBytes + 1, buffer.Length * 2));
                        buffer.AsSpan(0, done).CopyTo(larger);
                        pool.Return(buffer);
                        buffer = larger;
                    }

                    var n = await stream.ReadAsync(buffer.AsMemory(done), token).ConfigureAwait(false);
                    if (n == 0)
                    {
                        break;
                    }

                    done += n;
                    if ((length is { } expected && done > expected) || done > maxBytes)
                    {
                        throw new S3ObjectTooLargeException($"the answer has more than {done - n} bytes, more than announced or allowed", Describe(bucket, key), done);
                    }
                }

                if (length is { } want && done != want)
                {
                    throw new IOException($"the answer for {Describe(bucket, key)} ended after {done} of its {want} bytes");
                }

                return (buffer, done);
            }
            catch
            {
                pool.Return(buffer);
                throw;
            }
        });

    /// <summary>
    /// <paramref name="length"/> bytes from <paramref name="offset"/> (fewer only where the object ends);
    /// <see cref="S3ObjectNotFoundException"/> when absent.
    /// </summary>
    public Task<byte[]> GetRangeAsync(string bucket, string key, long offset, int length, CancellationToken ct = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        var range = new RangeHeaderValue(offset, offset + length - 1);
        return SendAsync(HttpMethod.Get, bucket, key, null, null, r => r.Headers.Range = range, ct, async (response, token) =>
        {
            if (response.StatusCode == HttpStatusCode.NotFound)
            {
                await ThrowIfNotNoSuchKey(response, bucket, key, token).ConfigureAwait(false);
                throw new S3ObjectNotFoundException("object does not exist", Describe(bucket, key), key);
            }

            if (response.StatusCode == HttpStatusCode.RequestedRangeNotSatisfiable)
            {
                return [];
            }

            await EnsureSuccess(response, bucket, key, token).ConfigureAwait(false);
            if (response.StatusCode == HttpStatusCode.OK)
            {
                // A server that ignores Range sends everything: cut out the part asked for.
                var all = await ReadBody(response, bucket, key, null, token).ConfigureAwait(false);
                return offset >= all.Length ? [] : all.AsSpan((int)offset, (int)Math.Min(length, all.Length - offset)).ToArray();
            }

            var body = await ReadBody(response, bucket, key, length, token).ConfigureAwait(false);
            var contentRange = response.Content.Headers.ContentRange;
            if (contentRange?.From is { } from && from != offset)
            {
                throw new S3Exception($"asked for bytes from {offset}, the answer starts at {from}", Describe(bucket, key), response.StatusCode);
            }

            return body;
        });
    }

    /// <summary>Size and ETag of an object, null when it does not exist.</summary>
    public Task<S3ObjectInfo?> HeadObjectAsync(string bucket, string key, CancellationToken ct = default)
        => SendAsync(HttpMethod.Head, bucket, key, null, null, null, ct, async (response, token) =>
        {
            if (response.StatusCode == HttpStatusCode.NotFound)
            {
                return null;
            }

            await EnsureSuccess(response, bucket, key, token).ConfigureAwait(false);
            return new S3ObjectInfo(key, response.Content.Headers.ContentLength ?? 0, response.Headers.ETag?.Tag,
                response.Content.Headers.LastModified);
        });

    /// <summary>Checks that the bucket exists and the key may list it (HEAD bucket; a GET listing on 405).</summary>
    public async Task CheckBucketAsync(string bucket, CancellationToken ct = default)
        => _ = await ListObjectsPageAsync(bucket, null, null, null, 1, ct).ConfigureAwait(false);

    /// <summary>One page of ListObjectsV2 (at most <paramref name="maxKeys"/>, the server caps at 1000).</summary>
    public Task<S3ListPage> ListObjectsPageAsync(string bucket, string? prefix, string? delimiter, string? continuationToken,
        int maxKeys = 1000, CancellationToken ct = default)
    {
        var query = new List<KeyValuePair<string, string>> { new("list-type", "2"), new("encoding-type", "url"), new("max-keys", maxKeys.ToString(CultureInfo.InvariantCulture)) };
        if (!string.IsNullOrEmpty(prefix))
        {
            query.Add(new("prefix", prefix));
        }

        if (!string.IsNullOrEmpty(delimiter))
        {
            query.Add(new("delimiter", delimiter));
        }

        if (continuationToken is not null)
        {
            query.Add(new("continuation-token", continuationToken));
        }

        return SendAsync(HttpMethod.Get, bucket, null, query, null, null, ct, async (response, token) =>
        {
            await EnsureSuccess(response, bucket, prefix, token).ConfigureAwait(false);
            var body = await ReadBody(response, bucket, prefix, null, token).ConfigureAwait(false);
            return ParseListing(body, bucket, prefix);
        });
    }

    /// <summary>Every page of a listing, following continuation tokens.</summary>
    public async Task<S3Listing> ListAllAsync(string bucket, string? prefix, string? delimiter = null, CancellationToken ct = default)
    {
        var objects = new List<S3ObjectInfo>();
        var prefixes = new List<string>();
        string? next = null;
        var pages = 0;
        do
        {
            var page = await ListObjectsPageAsync(bucket, prefix, delimiter, next, 1000, ct).ConfigureAwait(false);
            pages++;
            objects.AddRange(page.Objects);
            prefixes.AddRange(page.CommonPrefixes);
            if (page.NextContinuationToken is not null && page.NextContinuationToken == next)
            {
                throw new S3Exception("the server repeated a continuation token (a listing that never ends)", Describe(bucket, prefix));
            }

            next = page.NextContinuationToken;
        }
        while (next is not null);

        return new S3Listing(objects, prefixes, pages);
    }

    /// <summary>
    /// Uploads an object (Content-MD5 checked by the server). With <paramref name="ifNoneMatch"/> the put is
    /// conditional (<c>If-None-Match: *</c>, when <see cref="S3Options.ConditionalPuts"/>): an existing object is
    /// left as it is and the result says <c>Created = false</c>.
    /// </summary>
    public Task<S3PutResult> PutObjectAsync(string bucket, string key, ReadOnlyMemory<byte> body, bool ifNoneMatch = false, CancellationToken ct = default)
    {
        var conditional = ifNoneMatch && Options.ConditionalPuts;
        var md5 = Convert.ToBase64String(MD5.HashData(body.Span));
        return SendAsync(HttpMethod.Put, bucket, key, null, body, r =>
        {
            r.Content!.Headers.ContentMD5 = Convert.FromBase64String(md5);
            if (conditional)
            {
                r.Headers.TryAddWithoutValidation("If-None-Match", "*");
            }
        }, ct, async (response, token) =>
        {
            if (conditional && response.StatusCode == HttpStatusCode.PreconditionFailed)
            {
                return new S3PutResult(false, null);
            }

            await EnsureSuccess(response, bucket, key, token).ConfigureAwait(false);
            return new S3PutResult(true, response.Headers.ETag?.Tag);
        }, retryConflict: conditional);
    }

    /// <summary>Deletes an object (absent is fine).</summary>
    public Task DeleteObjectAsync(string bucket, string key, CancellationToken ct = default)
        => SendAsync(HttpMethod.Delete, bucket, key, null, null, null, ct, async (response, token) =>
        {
            if (response.StatusCode != HttpStatusCode.NotFound)
            {
                await EnsureSuccess(response, bucket, key, token).ConfigureAwait(false);
            }

            return true;
        });

    public void Dispose() => http.Dispose();

    private async Task<T> SendAsync<T>(HttpMethod method, string bucket, string? key, List<KeyValuePair<string, string>>? query,
        ReadOnlyMemory<byte>? body, Action<HttpRequestMessage>? decorate, CancellationToken ct,
        Func<HttpResponseMessage, CancellationToken, Task<T>> handle, bool retryConflict = false)
    {
        CheckBucketName(bucket);
        var location = Describe(bucket, key);
        var payloadHash = body is { } b ? SigV4.Hex(SHA256.HashData(b.Span)) : SigV4.EmptyPayloadHash;
        var (uri, canonicalPath) = BuildUri(bucket, key, query);
        var attempts = Math.Max(1, Options.MaxAttempts);
        var started = Stopwatch.GetTimestamp();
        for (var attempt = 1; ; attempt++)
        {
            using var request = new HttpRequestMessage(method, uri) { Version = HttpVersion.Version11, VersionPolicy = HttpVersionPolicy.RequestVersionExact };
            if (body is { } content)
            {
                request.Content = new ReadOnlyMemoryContent(content);
                request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
            }

            decorate?.Invoke(request);
            Sign(request, canonicalPath, query ?? [], payloadHash);
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(Options.RequestTimeout);
            string? retryReason;
            Exception? failure = null;
            Interlocked.Increment(ref requests);
            try
            {
                using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token).ConfigureAwait(false);
                var status = (int)response.StatusCode;
                retryReason = status is 500 or 502 or 503 or 504 || (retryConflict && status == 409) ? $"HTTP {status}" : null;
                if (retryReason is null || attempt >= attempts)
                {
                    return await handle(response, timeout.Token).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException e) when (!ct.IsCancellationRequested && e.InnerException is TimeoutException)
            {
                // SocketsHttpHandler's ConnectTimeout: nothing answers at that address; retrying would only wait longer.
                throw new S3EndpointException(
                    $"cannot reach the S3 endpoint {endpoint.Authority}: no connection within {Options.ConnectTimeout.TotalSeconds:0.#} s (wrong endpoint or port, or a firewall)",
                    location, e);
            }
            catch (OperationCanceledException e) when (!ct.IsCancellationRequested)
            {
                retryReason = $"no answer within {Options.RequestTimeout.TotalSeconds:0.#} s";
                failure = e;
            }
            catch (HttpRequestException e) when (IsConnectTimeout(e))
            {
                throw new S3EndpointException(
                    $"cannot reach the S3 endpoint {endpoint.Authority}: no connection within {Options.ConnectTimeout.TotalSeconds:0.#} s (wrong endpoint or port, or a firewall)",
                    location, e);
            }
            catch (HttpRequestException e) when (e.InnerException is AuthenticationException || e.HttpRequestError == HttpRequestError.SecureConnectionError)
            {
                var hint = pin is not null
                    ? $"the server's certificate does not match the pinned fingerprint (it has {lastServerFingerprint ?? "none"})"
                    : "TLS failed (an untrusted or self-signed certificate can be pinned by its SHA-256 fingerprint)";
                throw new S3EndpointException($"cannot connect securely to {endpoint.Authority}: {hint}", location, e);
            }
            catch (HttpRequestException e) when (e.HttpRequestError == HttpRequestError.NameResolutionError)
            {
                throw new S3EndpointException($"cannot resolve the S3 endpoint's host name {e.Message}", location, e);
            }
            catch (Exception e) when (e is HttpRequestException or IOException)
            {
                retryReason = e.InnerException is SocketException se ? $"{se.SocketErrorCode}" : e.Message;
                failure = e;
            }

            if (attempt >= attempts)
            {
                var took = Stopwatch.GetElapsedTime(started).TotalSeconds;
                throw failure is OperationCanceledException
                    ? new S3Exception($"the S3 endpoint {endpoint.Authority} did not answer within {Options.RequestTimeout.TotalSeconds:0.#} s ({attempts} attempts, {took:0.#} s)", location, inner: failure)
                    : new S3EndpointException($"cannot reach the S3 endpoint {endpoint.Authority}: {retryReason} ({attempts} attempts, {took:0.#} s; is the endpoint right and the server running?)", location, failure);
            }

            var delay = Options.RetryBaseDelay * Math.Pow(2, attempt - 1) * (0.75 + (Random.Shared.NextDouble() / 2));
            log.LogDebug("S3 {Method} {Location}: {Reason}; attempt {Attempt} of {Attempts} in {Delay} ms", method, location, retryReason, attempt + 1, attempts, (int)delay.TotalMilliseconds);
            await Task.Delay(delay, ct).ConfigureAwait(false);
        }
    }

    private static bool IsConnectTimeout(HttpRequestException e)
        => e.InnerException is TimeoutException || (e.InnerException is OperationCanceledException && e.HttpRequestError == HttpRequestError.ConnectionError);

    private void Sign(HttpRequestMessage request, string canonicalPath, List<KeyValuePair<string, string>> query, string payloadHash)
    {
        var now = time.GetUtcNow().UtcDateTime;
        var amzDate = SigV4.AmzDate(now);
        var uri = request.RequestUri!;
        var hostHeader = uri.IsDefaultPort ? uri.IdnHost : $"{uri.IdnHost}:{uri.Port}";
        var headers = new SortedDictionary<string, string>(StringComparer.Ordinal)
        {
            ["host"] = hostHeader,
            ["x-amz-content-sha256"] = payloadHash,
            ["x-amz-date"] = amzDate,
        };
        if (Options.SessionToken is { Length: > 0 } token)
        {
            headers["x-amz-security-token"] = token;
            request.Headers.TryAddWithoutValidation("x-amz-security-token", token);
        }

        request.Headers.Host = hostHeader;
        request.Headers.TryAddWithoutValidation("x-amz-date", amzDate);
        request.Headers.TryAddWithoutValidation("x-amz-content-sha256", payloadHash);
        request.Headers.TryAddWithoutValidation("Authorization", signer.Authorization(request.Method.Method, canonicalPath, query, headers, payloadHash, now));
    }

    private (Uri Uri, string CanonicalPath) BuildUri(string bucket, string? key, List<KeyValuePair<string, string>>? query)
    {
        var encodedKey = key is null ? string.Empty : SigV4.UriEncode(key, encodeSlash: false);
        string host;
        string path;
        if (virtualHost)
        {
            host = $"{bucket}.{endpoint.Host}";
            path = "/" + encodedKey;
        }
        else
        {
            host = endpoint.Host;
            path = key is null ? $"/{bucket}" : $"/{bucket}/{encodedKey}";
        }

        var q = query is null ? string.Empty : "?" + SigV4.CanonicalQuery(query);
        var uri = new Uri($"{endpoint.Scheme}://{host}{(endpoint.IsDefaultPort ? string.Empty : ":" + endpoint.Port.ToString(CultureInfo.InvariantCulture))}{path}{q}", new UriCreationOptions { DangerousDisablePathAndQueryCanonicalization = true });
        return (uri, path);
    }

    private static void CheckBucketName(string bucket)
    {
        if (bucket.Length is < 3 or > 63 || !bucket.All(c => c is (>= 'a' and <= 'z') or (>= '0' and <= '9') or '-' or '.' or '_'))
        {
            throw new S3ConfigurationException($"'{bucket}' is not a valid bucket name (3–63 of a–z 0–9 . - _)");
        }
    }

    private async Task<byte[]> ReadBody(HttpResponseMessage response, string bucket, string? key, int? expected, CancellationToken ct)
    {
        var length = response.Content.Headers.ContentLength;
        if (length is { } n && (n > Array.MaxLength || (expected is { } want && n > want)))
        {
            throw new S3Exception($"the answer is {n} bytes, more than asked for", Describe(bucket, key), response.StatusCode);
        }

        await using var stream = await response.Content.ReadAsStreamAsync(ct).ConfigureAwait(false);
        if (length is { } len)
        {
            var buffer = GC.AllocateUninitializedArray<byte>((int)len);
            try
            {
                await stream.ReadExactlyAsync(buffer, ct).ConfigureAwait(false);
            }
            catch (EndOfStreamException e)
            {
                throw new IOException($"the answer for {Describe(bucket, key)} ended before its {len} bytes", e);
            }

            return buffer;
        }

        using var ms = new MemoryStream();
        await stream.CopyToAsync(ms, ct).ConfigureAwait(false);
        return ms.ToArray();
    }

    private async Task ThrowIfNotNoSuchKey(HttpResponseMessage response, string bucket, string key, CancellationToken ct)
    {
        var (code, message) = await ReadError(response, ct).ConfigureAwait(false);
        if (code is null or "NoSuchKey")
        {
            return;
        }

        throw MapError(response, code, message, bucket, key);
    }

    private async Task EnsureSuccess(HttpResponseMessage response, string bucket, string? key, CancellationToken ct)
    {
        if (response.IsSuccessStatusCode)
        {
            return;
        }

        var (code, message) = await ReadError(response, ct).ConfigureAwait(false);
        throw MapError(response, code, message, bucket, key);
    }

    private S3Exception MapError(HttpResponseMessage response, string? code, string? message, string bucket, string? key)
    {
        var location = Describe(bucket, key);
        var status = response.StatusCode;
        var detail = code is null ? $"HTTP {(int)status}" : $"HTTP {(int)status} {code}{(string.IsNullOrEmpty(message) ? string.Empty : ": " + message)}";
        TimeSpan? skew = response.Headers.Date is { } serverDate ? serverDate - time.GetUtcNow() : null;
        if (code == "RequestTimeTooSkewed" || (status == HttpStatusCode.Forbidden && skew is { } s && s.Duration() > TimeSpan.FromMinutes(14)))
        {
            var by = skew is { } k ? $" by {FormatSpan(k.Duration())} ({(k > TimeSpan.Zero ? "behind" : "ahead of")} the server)" : string.Empty;
            return new S3ClockSkewException($"this machine's clock is off{by}: S3 refuses signatures more than 15 minutes off; set the clock (NTP) ({detail})", location, skew);
        }

        switch (status)
        {
            case HttpStatusCode.Forbidden:
                var why = code switch
                {
                    "InvalidAccessKeyId" => $"the access key {Options.AccessKeyId} is unknown to the server (from {Options.Source})",
                    "SignatureDoesNotMatch" => $"the secret key does not fit the access key {Options.AccessKeyId} (from {Options.Source})",
                    null => $"the key {Options.AccessKeyId} (from {Options.Source}) is unknown, its secret wrong, or it may not {Verb(response.RequestMessage?.Method)} here (the answer gave no reason)",
                    _ => $"the key {Options.AccessKeyId} (from {Options.Source}) may not {Verb(response.RequestMessage?.Method)} here (a bucket policy or the user's permissions forbid it)",
                };
                return new S3AccessDeniedException($"access denied: {why} ({detail})", location, status, code);
            case HttpStatusCode.Unauthorized:
                return new S3AccessDeniedException($"not authorized: check the access key and secret ({detail})", location, status, code);
            case HttpStatusCode.NotFound when code == "NoSuchBucket" || key is null:
                return new S3BucketNotFoundException($"bucket '{bucket}' does not exist at {endpoint.Authority} ({detail})", Describe(bucket), code);
            case HttpStatusCode.NotFound:
                return new S3ObjectNotFoundException($"object does not exist ({detail})", location, key);
            case HttpStatusCode.MovedPermanently or HttpStatusCode.Redirect or HttpStatusCode.TemporaryRedirect:
                var region = response.Headers.TryGetValues("x-amz-bucket-region", out var r) ? r.FirstOrDefault() : null;
                return new S3Exception($"the bucket lives elsewhere{(region is null ? string.Empty : $" (region {region})")}: set the region or endpoint ({detail})", location, status, code);
            case HttpStatusCode.BadRequest when code == "AuthorizationHeaderMalformed":
                return new S3Exception($"the server wants another region than {signer.Region}: set the region ({detail})", location, status, code);
            default:
                return new S3Exception($"S3 {response.RequestMessage?.Method} failed: {detail}", location, status, code);
        }
    }

    private static string Verb(HttpMethod? method) => method?.Method switch
    {
        "GET" or "HEAD" => "read",
        "PUT" => "write",
        "DELETE" => "delete",
        _ => "do this",
    };

    private static string FormatSpan(TimeSpan t) => t.TotalHours >= 1 ? $"{t.TotalHours:0.#} h" : $"{t.TotalMinutes:0} min";

    private static async Task<(string? Code, string? Message)> ReadError(HttpResponseMessage response, CancellationToken ct)
    {
        if (response.RequestMessage?.Method == HttpMethod.Head)
        {
            return (null, null);
        }

        string text;
        try
        {
            text = await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is HttpRequestException or IOException)
        {
            return (null, null);
        }

        if (text.Length == 0 || !text.Contains("<Error", StringComparison.Ordinal))
        {
            return (null, null);
        }

        try
        {
            var root = LoadXml(Encoding.UTF8.GetBytes(text));
            return (Child(root, "Code"), Child(root, "Message"));
        }
        catch (XmlException)
        {
            return (null, null);
        }
    }

    private static XElement LoadXml(byte[] body)
    {
        using var reader = XmlReader.Create(new MemoryStream(body), new XmlReaderSettings { DtdProcessing = DtdProcessing.Prohibit, XmlResolver = null });
        return XDocument.Load(reader).Root ?? throw new XmlException("no root element");
    }

    private static string? Child(XElement parent, string name) => parent.Elements().FirstOrDefault(e => e.Name.LocalName == name)?.Value;

    private static S3ListPage ParseListing(byte[] body, string bucket, string? prefix)
    {
        try
        {
            var root = LoadXml(body);
            if (root.Name.LocalName != "ListBucketResult")
            {
                throw new XmlException($"root element {root.Name.LocalName}");
            }

            var encoded = Child(root, "EncodingType") == "url";
            string Decode(string s) => encoded ? WebUtility.UrlDecode(s) : s;
            var truncated = Child(root, "IsTruncated")?.Trim() == "true";
            var next = Child(root, "NextContinuationToken");
            var objects = root.Elements().Where(e => e.Name.LocalName == "Contents").Select(c => new S3ObjectInfo(
                Decode(Child(c, "Key") ?? throw new XmlException("an entry without Key")),
                long.Parse(Child(c, "Size") ?? "0", NumberStyles.None, CultureInfo.InvariantCulture),
                Child(c, "ETag"),
                Child(c, "LastModified") is { } t ? DateTimeOffset.Parse(t, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal) : null)).ToList();
            var prefixes = root.Elements().Where(e => e.Name.LocalName == "CommonPrefixes")
                .SelectMany(c => c.Elements().Where(e => e.Name.LocalName == "Prefix")).Select(e => Decode(e.Value)).ToList();
            if (truncated && string.IsNullOrEmpty(next))
            {
                throw new S3Exception("the listing is truncated but has no continuation token", Describe(bucket, prefix));
            }

            return new S3ListPage(objects, prefixes, truncated ? next : null);
        }
        catch (Exception e) when (e is XmlException or FormatException or OverflowException)
        {
            throw new S3Exception($"the listing is not valid ListObjectsV2 XML: {e.Message}", Describe(bucket, prefix), inner: e);
        }
    }

    private static async ValueTask<Stream> ConnectAsync(SocketsHttpConnectionContext context, CancellationToken ct)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            var target = context.DnsEndPoint;
            if (target.Host.EndsWith(".localhost", StringComparison.OrdinalIgnoreCase))
            {
                // RFC 6761: every name under .localhost is loopback (virtual-host addressing against a local server).
                await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, target.Port), ct).ConfigureAwait(false);
            }
            else
            {
                await socket.ConnectAsync(target, ct).ConfigureAwait(false);
            }

            return new NetworkStream(socket, ownsSocket: true);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    private bool ValidateCertificate(object sender, System.Security.Cryptography.X509Certificates.X509Certificate? certificate,
        System.Security.Cryptography.X509Certificates.X509Chain? chain, SslPolicyErrors errors)
    {
        if (pin is null)
        {
            return errors == SslPolicyErrors.None;
        }

        if (certificate is null)
        {
            return false;
        }

        var actual = SHA256.HashData(certificate.GetRawCertData());
        lastServerFingerprint = string.Join(':', actual.Select(b => b.ToString("x2", CultureInfo.InvariantCulture)));
        return CryptographicOperations.FixedTimeEquals(actual, pin);
    }
}
