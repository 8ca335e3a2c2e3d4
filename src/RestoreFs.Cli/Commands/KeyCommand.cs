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
        var force = new Option<bool>("--force") { Description = "Replace an existing key file (its backups become unreadable without a copy)." };
        var create = new Command("create", "Create a new encryption key file.") { file, kdf, force };
        create.Options.Add(KeyOptions.PassphraseFile);
        create.SetAction(parse => CliErrors.Run(() =>
        {
            var path = parse.GetValue(file)!;
            if (!parse.GetValue(force) && (File.Exists(path) || Directory.Exists(path) || new FileInfo(path).LinkTarget is not null))
            {
                throw new ArgumentException($"{path} exists; not overwriting a key (--force replaces it)");
            }

            var derivation = parse.GetValue(kdf) switch { "none" => KeyDerivation.None, "pbkdf2" => KeyDerivation.Pbkdf2, _ => KeyDerivation.Scrypt };
            var passphrase = derivation == KeyDerivation.None ? null : KeyOptions.Passphrase(parse, "Encryption key password: ");
            var key = RandomNumberGenerator.GetBytes(32);
            var json = KeyFile.Create(key, derivation, passphrase);
            WritePrivate(path, System.Text.Encoding.UTF8.GetBytes(json), parse.GetValue(force));
            Console.Out.WriteLine($"created {path}, fingerprint {CryptConfig.FromRawKey(key).Fingerprint}");
            return 0;
        }));
        return new Command("key", "Manage encryption keys.") { create };
    }

    /// <summary>
    /// Writes a secret file that is 0600 from its first byte: O_CREAT|O_EXCL|O_NOFOLLOW (no symlink followed, nothing
    /// overwritten); with <paramref name="replace"/>, written next to the target and renamed over it.
    /// </summary>
    private static unsafe void WritePrivate(string path, byte[] data, bool replace)
    {
        var target = replace ? Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, $".{Path.GetFileName(path)}.tmp-{Environment.ProcessId}") : path;
        var fd = Hosting.NativeMethods.Open(target,
            Hosting.NativeMethods.OWrOnly | Hosting.NativeMethods.OCreat | Hosting.NativeMethods.OExcl | Hosting.NativeMethods.ONoFollow | Hosting.NativeMethods.OCloExec,
            0x180);
        if (fd < 0)
        {
            throw new ArgumentException($"cannot create {target}: errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()} (it may exist already)");
        }

        try
        {
            fixed (byte* p = data)
            {
                if (Hosting.NativeMethods.Write(fd, p, data.Length) != data.Length)
                {
                    throw new IOException($"writing {target} failed");
                }
            }
        }
        finally
        {
            Hosting.NativeMethods.Close(fd);
        }

        if (replace)
        {
            File.Move(target, path, overwrite: true);
        }
    }
}
