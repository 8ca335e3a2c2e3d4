using System.Text;

namespace RestoreFs.Cli.Commands;

/// <summary>
/// <c>--guest-passphrase-file FILE</c>: passphrases of LUKS volumes inside the backed-up disks. One entry per line:
/// <c>UUID=&lt;luks uuid&gt; &lt;passphrase&gt;</c> (the passphrase is the rest of the line after one space) for one
/// volume, or a line with just a passphrase for every volume without its own line. Empty lines and lines starting with
/// <c>#</c> are ignored; a trailing CR is dropped. A file of one line is thus a passphrase for all volumes.
/// The passphrases go to the restore VM inside its initramfs copy (never on a command line) as lines
/// <c>&lt;uuid or *&gt; &lt;base64 passphrase&gt;</c>.
/// </summary>
public static class GuestKeyFile
{
    public const int MaxBytes = 1 << 20;

    /// <summary>Parses the file; throws <see cref="FormatException"/> naming the line when it is malformed.</summary>
    public static IReadOnlyList<(string? Uuid, byte[] Passphrase)> Parse(byte[] content, string name)
    {
        if (content.Length > MaxBytes)
        {
            throw new FormatException($"{name}: larger than {MaxBytes} bytes");
        }

        var entries = new List<(string?, byte[])>();
        var lines = content.AsSpan();
        var number = 0;
        while (!lines.IsEmpty)
        {
            number++;
            var end = lines.IndexOf((byte)'\n');
            var line = end < 0 ? lines : lines[..end];
            lines = end < 0 ? [] : lines[(end + 1)..];
            if (line.EndsWith("\r"u8))
            {
                line = line[..^1];
            }

            if (line.IsEmpty || line[0] == (byte)'#')
            {
                continue;
            }

            if (line.StartsWith("UUID="u8))
            {
                var space = line.IndexOf((byte)' ');
                var uuid = Encoding.ASCII.GetString(space < 0 ? line[5..] : line[5..space]).ToLowerInvariant();
                if (!IsUuid(uuid))
                {
                    throw new FormatException($"{name}, line {number}: '{uuid}' is not a UUID (UUID=xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx PASSPHRASE)");
                }

                if (space < 0 || space == line.Length - 1)
                {
                    throw new FormatException($"{name}, line {number}: no passphrase after UUID={uuid}");
                }

                entries.Add((uuid, line[(space + 1)..].ToArray()));
            }
            else
            {
                entries.Add((null, line.ToArray()));
            }
        }

        if (entries.Count == 0)
        {
            throw new FormatException($"{name}: no passphrase in it");
        }

        return entries;
    }

    /// <summary>The form the daemon reads: <c>&lt;uuid|*&gt; &lt;base64&gt;</c> per line.</summary>
    public static byte[] ForGuest(IReadOnlyList<(string? Uuid, byte[] Passphrase)> entries)
    {
        var text = new StringBuilder();
        foreach (var (uuid, passphrase) in entries)
        {
            text.Append(uuid ?? "*").Append(' ').Append(Convert.ToBase64String(passphrase)).Append('\n');
        }

        return Encoding.ASCII.GetBytes(text.ToString());
    }

    private static bool IsUuid(string s) => s.Length == 36 && Guid.TryParse(s, out _) && s[8] == '-' && s[13] == '-' && s[18] == '-' && s[23] == '-';
}
