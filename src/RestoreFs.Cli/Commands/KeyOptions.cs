using System.CommandLine;
using RestoreFs.Datastore;

namespace RestoreFs.Cli.Commands;

/// <summary>
/// The PBS client's habits for keys and namespaces: <c>--keyfile</c>, the passphrase from <c>--passphrase-file</c>,
/// <c>PBS_ENCRYPTION_PASSWORD</c> or a prompt, and <c>--ns a/b</c>.
/// </summary>
public static class KeyOptions
{
    public static readonly Option<string?> KeyFile = new("--keyfile") { Description = "PBS encryption key file.", Recursive = true };

    public static readonly Option<string?> PassphraseFile = new("--passphrase-file")
    {
        Description = "File holding the key's passphrase (else PBS_ENCRYPTION_PASSWORD, else a prompt).",
        Recursive = true,
    };

    public static readonly Option<string?> Namespace = new("--ns") { Description = "Namespace, e.g. a/b.", Recursive = true };

    public static void AddTo(Command command)
    {
        command.Options.Add(KeyFile);
        command.Options.Add(PassphraseFile);
    }

    public static void AddNamespace(Command command) => command.Options.Add(Namespace);

    public static BackupNamespace GetNamespace(ParseResult parse) => BackupNamespace.Parse(parse.GetValue(Namespace));

    /// <summary>The key given on the command line, unwrapped; null when none was given.</summary>
    public static CryptConfig? LoadKey(ParseResult parse)
    {
        var path = parse.GetValue(KeyFile);
        return path is null ? null : CryptConfig.FromKeyFile(path, () => Passphrase(parse, "Encryption key password: "));
    }

    /// <summary>
    /// The passphrase a background child needs (asked here, on the terminal), or null. The child gets it on its
    /// standard input (<see cref="Hosting.Daemon"/>), never by environment or argument.
    /// </summary>
    public static string? PassphraseForChild(ParseResult parse) =>
        parse.GetValue(KeyFile) is { } key && parse.GetValue(PassphraseFile) is null && KeyFileNeedsPassphrase(key)
            ? Passphrase(parse, "Encryption key password: ")
            : null;

    /// <summary>Arguments that carry the key to a child process: paths only, never the passphrase.</summary>
    public static IEnumerable<string> ForwardArguments(ParseResult parse)
    {
        if (parse.GetValue(KeyFile) is { } key)
        {
            yield return "--keyfile";
            yield return Path.GetFullPath(key);
        }

        if (parse.GetValue(PassphraseFile) is { } pass)
        {
            yield return "--passphrase-file";
            yield return Path.GetFullPath(pass);
        }
    }

    private static bool KeyFileNeedsPassphrase(string path)
    {
        try
        {
            return Datastore.KeyFile.Load(path).Kdf != KeyDerivation.None;
        }
        catch (DatastoreException)
        {
            return false;
        }
    }

    public static string Passphrase(ParseResult parse, string prompt)
    {
        if (parse.GetValue(PassphraseFile) is { } file)
        {
            return File.ReadAllText(file).TrimEnd('\r', '\n');
        }

        if (Hosting.Daemon.PassphraseFromParent is { } piped)
        {
            return piped;
        }

        if (Environment.GetEnvironmentVariable("PBS_ENCRYPTION_PASSWORD") is { } env)
        {
            return env;
        }

        if (Console.IsInputRedirected)
        {
            throw new DatastoreException("a passphrase is needed: use --passphrase-file or PBS_ENCRYPTION_PASSWORD");
        }

        Console.Error.Write(prompt);
        var text = new System.Text.StringBuilder();
        while (true)
        {
            var k = Console.ReadKey(intercept: true);
            if (k.Key == ConsoleKey.Enter)
            {
                break;
            }

            if (k.Key == ConsoleKey.Backspace && text.Length > 0)
            {
                text.Length--;
            }
            else if (!char.IsControl(k.KeyChar))
            {
                text.Append(k.KeyChar);
            }
        }

        Console.Error.WriteLine();
        return text.ToString();
    }
}
