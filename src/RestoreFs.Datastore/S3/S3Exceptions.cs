using System.Net;

namespace RestoreFs.Datastore.S3;

/// <summary>
/// An S3 request failed. Names the endpoint, bucket and key (as <see cref="DatastoreException.FilePath"/>,
/// <c>s3://bucket/key</c>), the HTTP status and the S3 error code where there is one.
/// </summary>
public class S3Exception : DatastoreException
{
    public S3Exception(string message, string? location, HttpStatusCode? status = null, string? errorCode = null, Exception? inner = null)
        : base(message, location, inner: inner)
    {
        Status = status;
        ErrorCode = errorCode;
    }

    /// <summary>The HTTP status of the last answer, null when none came.</summary>
    public HttpStatusCode? Status { get; }

    /// <summary>The S3 error code (<c>NoSuchKey</c>, <c>AccessDenied</c> …) when the answer had one.</summary>
    public string? ErrorCode { get; }
}

/// <summary>The endpoint could not be reached (refused, unknown host, TLS failure, no answer in time).</summary>
public sealed class S3EndpointException(string message, string? location, Exception? inner = null)
    : S3Exception(message, location, null, null, inner);

/// <summary>403: wrong access key or secret, or the key may not do this (a read-only key asked to write).</summary>
public sealed class S3AccessDeniedException(string message, string? location, HttpStatusCode? status, string? errorCode)
    : S3Exception(message, location, status, errorCode);

/// <summary>The bucket does not exist.</summary>
public sealed class S3BucketNotFoundException(string message, string? location, string? errorCode)
    : S3Exception(message, location, HttpStatusCode.NotFound, errorCode);

/// <summary>The object does not exist; <see cref="Key"/> names it.</summary>
public sealed class S3ObjectNotFoundException(string message, string? location, string key)
    : S3Exception(message, location, HttpStatusCode.NotFound, "NoSuchKey")
{
    public string Key { get; } = key;
}

/// <summary>The server refused the request's time: this machine's clock is off by more than S3 allows (15 minutes).</summary>
public sealed class S3ClockSkewException(string message, string? location, TimeSpan? skew)
    : S3Exception(message, location, HttpStatusCode.Forbidden, "RequestTimeTooSkewed")
{
    /// <summary>Server time minus local time, when the server's Date header told it.</summary>
    public TimeSpan? Skew { get; } = skew;
}

/// <summary>The options do not describe a usable endpoint (http to a remote host without insecure, bad fingerprint, no keys …).</summary>
public sealed class S3ConfigurationException(string message, string? location = null) : S3Exception(message, location);

/// <summary>An object is larger than anything that may be stored under its key (a chunk larger than a chunk may be).</summary>
public sealed class S3ObjectTooLargeException(string message, string? location, long size) : S3Exception(message, location)
{
    /// <summary>The size announced, or the bytes seen when more came than announced.</summary>
    public long Size { get; } = size;
}
