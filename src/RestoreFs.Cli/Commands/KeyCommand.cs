using System.CommandLine;
using System.Security.Cryptography;
using RestoreFs.Datastore;

namespace RestoreFs.Cli.Commands;

/// <summary><c>restorefs key create FILE</c>: a PBS-compatible key file.</summary>
public static class KeyCommand
{
    public static Command Create()
    {
        var file = new Argument<string>("FILE") { Description = "Where to write the key file (mode 0600)." };
        var kdf = new Option<string>("--kdf") { Description = "scrypt (default, asks for a passphrase), pbkdf2 or none.", DefaultValueFactory = _ => "scrypt" };
        kdf.AcceptOnlyFromAmong("scrypt", "pbkdf2", "none");
        var create = new Command("create", "Create a new encryption key file.") { file, kdf };
        create.Options.Add(KeyOptions.PassphraseFile);
        create.SetAction(parse => CliErrors.Run(() =>
        {
            var path = parse.GetValue(file)!;
            if (File.Exists(path))
            {
                throw new ArgumentException($"{path} exists; not overwriting a key");
            }

            var derivation = parse.GetValue(kdf) switch { "none" => KeyDerivation.None, "pbkdf2" => KeyDerivation.Pbkdf2, _ => KeyDerivation.Scrypt };
            var passphrase = derivation == KeyDerivation.None ? null : KeyOptions.Passphrase(parse, "Encryption key password: ");
            var key = RandomNumberGenerator.GetBytes(32);
            var json = KeyFile.Create(key, derivation, passphrase);
            File.WriteAllText(path, json);
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            Console.Out.WriteLine($"created {path}, fingerprint {CryptConfig.FromRawKey(key).Fingerprint}");
            return 0;
        }));
        return new Command("key", "Manage encryption keys.") { create };
    }
}
