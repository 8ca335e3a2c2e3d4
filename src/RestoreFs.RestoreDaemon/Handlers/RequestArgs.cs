using System.Globalization;
using RestoreFs.RestoreApi;

namespace RestoreFs.RestoreDaemon.Handlers;

/// <summary>The query parameters of a request; a bad one is a <see cref="BadRequestException"/> (answered 400).</summary>
internal static class RequestArgs
{
    /// <summary>A flag parameter: <c>1</c> or <c>true</c> (any case).</summary>
    public static bool Flag(Http.Request r, string name) =>
        r.Query.TryGetValue(name, out var v) && (v == "1" || v.Equals("true", StringComparison.OrdinalIgnoreCase));

    /// <summary>The <c>path</c> parameter, base64 of the raw path; none is the root.</summary>
    public static byte[] PathOf(Http.Request r)
    {
        if (!r.Query.TryGetValue("path", out var b64))
        {
            return [];
        }

        try
        {
            return Convert.FromBase64String(b64);
        }
        catch (FormatException)
        {
            throw new BadRequestException("path is not valid base64");
        }
    }

    /// <summary>A required number parameter from <paramref name="min"/> to <paramref name="max"/>.</summary>
    public static long Number(Http.Request r, string name, long min, long max)
    {
        if (!r.Query.TryGetValue(name, out var text)
            || !long.TryParse(text, min < 0 ? NumberStyles.AllowLeadingSign : NumberStyles.None, CultureInfo.InvariantCulture, out var value)
            || value < min || value > max)
        {
            throw new BadRequestException($"parameter '{name}' must be a number from {min} to {max}");
        }

        return value;
    }
}
