using System.Globalization;
using System.Text.RegularExpressions;

namespace RestoreFs.Datastore;

/// <summary>A namespace: "" for the root, "a/b" for a child (stored as ns/a/ns/b).</summary>
public sealed record BackupNamespace(string Path)
{
    public static readonly BackupNamespace Root = new(string.Empty);

    public int Depth => Path.Length == 0 ? 0 : Path.Count(c => c == '/') + 1;

    public static BackupNamespace Parse(string? text)
    {
        var trimmed = (text ?? string.Empty).Trim('/');
        if (trimmed.Length == 0)
        {
            return Root;
        }

        var parts = trimmed.Split('/');
        if (parts.Length > 7 || trimmed.Length > 256 || parts.Any(p => !Names.IsNamespaceComponent(p)))
        {
            throw new InvalidNameException($"invalid namespace '{Names.Printable(text ?? string.Empty)}' (components [A-Za-z0-9_][A-Za-z0-9._-]*, at most 7 levels)");
        }

        return new BackupNamespace(trimmed);
    }

    public override string ToString() => Path.Length == 0 ? "<root>" : Path;
}

/// <summary>A backup group: <c>vm/100</c> in a namespace.</summary>
public sealed record BackupGroup(BackupNamespace Namespace, string Type, string Id)
{
    public string Name => $"{Type}/{Id}";

    public static BackupGroup Parse(BackupNamespace ns, string text)
    {
        var parts = text.Trim('/').Split('/');
        if (parts.Length != 2 || !Names.IsType(parts[0]) || !Names.IsBackupId(parts[1]))
        {
            throw new InvalidNameException($"invalid backup group '{Names.Printable(text)}' (expected vm|ct|host/<id>)");
        }

        return new BackupGroup(ns, parts[0], parts[1]);
    }
}

/// <summary>A finished snapshot.</summary>
public sealed record SnapshotInfo(BackupGroup Group, DateTimeOffset Time, string DirectoryPath)
{
    /// <summary>"2024-05-01T10:00:00Z".</summary>
    public string TimeName => Names.FormatTime(Time);

    /// <summary>"vm/100/2024-05-01T10:00:00Z".</summary>
    public string Name => $"{Group.Type}/{Group.Id}/{TimeName}";
}

/// <summary>
/// Naming rules of the datastore layout (spec section 1): one check per kind of name that becomes a path or a
/// directory entry. Patterns are anchored with <c>\z</c> (a <c>$</c> would accept a trailing newline) and use
/// ASCII classes only.
/// </summary>
public static partial class Names
{
    /// <summary>PBS's safe id: backup ids, namespace components, archive stems.</summary>
    public static readonly Regex SafeId = SafeIdRegex();
    public static readonly Regex SnapshotTime = SnapshotTimeRegex();

    public static bool IsType(string s) => s is "vm" or "ct" or "host";

    /// <summary>A backup type directory: vm, ct or host.</summary>
    public static bool IsBackupType(string s) => IsType(s);

    /// <summary>A backup id (the 100 of vm/100).</summary>
    public static bool IsBackupId(string s) => s.Length <= StoreLimits.MaxNameLength && SafeId.IsMatch(s);

    /// <summary>One component of a namespace path.</summary>
    public static bool IsNamespaceComponent(string s) => s.Length <= StoreLimits.MaxNameLength && SafeId.IsMatch(s);

    /// <summary>A snapshot directory name, exactly as PBS writes it (2024-05-01T10:00:00Z) and a real time.</summary>
    public static bool IsSnapshotTime(string s) => TryParseTime(s, out _);

    /// <summary>
    /// A file name a manifest may list: a safe id ending in .fidx, .didx or .blob — so no '/', no '..', no control
    /// characters, no leading dot.
    /// </summary>
    public static bool IsArchiveName(string s) =>
        s.Length <= StoreLimits.MaxNameLength && SafeId.IsMatch(s) && !s.Contains("..", StringComparison.Ordinal) &&
        (s.EndsWith(".fidx", StringComparison.Ordinal) || s.EndsWith(".didx", StringComparison.Ordinal) || s.EndsWith(".blob", StringComparison.Ordinal));

    /// <summary>A name fit for a message: control and non-ASCII characters escaped, long names cut.</summary>
    public static string Printable(string s)
    {
        var b = new System.Text.StringBuilder();
        foreach (var c in s.Length > 200 ? s[..200] : s)
        {
            if (c < 0x20 || c == 0x7f || c > 0x7e)
            {
                b.Append(c <= 0xff ? $"\\x{(int)c:x2}" : $"\\u{(int)c:x4}");
            }
            else
            {
                b.Append(c);
            }
        }

        return s.Length > 200 ? b + "…" : b.ToString();
    }

    public static string FormatTime(DateTimeOffset t) => t.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture);

    public static bool TryParseTime(string s, out DateTimeOffset time)
    {
        time = default;
        return SnapshotTime.IsMatch(s) && DateTimeOffset.TryParseExact(s, "yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture,
            DateTimeStyles.AssumeUniversal | DateTimeStyles.AdjustToUniversal, out time);
    }

    /// <summary>Parses an RFC 3339 time as users type it (any offset); snapshots keep whole seconds in UTC.</summary>
    public static DateTimeOffset ParseUserTime(string s)
    {
        if (!DateTimeOffset.TryParse(s, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var t))
        {
            throw new DatastoreException($"invalid time '{Printable(s)}' (expected RFC 3339, e.g. 2024-05-01T10:00:00Z)");
        }

        return DateTimeOffset.FromUnixTimeSeconds(t.ToUnixTimeSeconds());
    }

    [GeneratedRegex("^[A-Za-z0-9_][A-Za-z0-9._\\-]*\\z")]
    private static partial Regex SafeIdRegex();

    [GeneratedRegex("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z\\z")]
    private static partial Regex SnapshotTimeRegex();
}
