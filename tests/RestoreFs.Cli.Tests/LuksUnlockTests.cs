using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// Issue 13, LUKS: a GPT disk with two LUKS2 partitions (ext4 inside). This host has no device-mapper, so the volumes
/// are made without opening them: <c>cryptsetup luksFormat</c> on a file, the volume key read back with
/// <c>luksDump --dump-volume-key</c>, and the ext4 image encrypted with AES-XTS (plain64 IVs, 512-byte sectors) in
/// Python, exactly as dm-crypt lays it out. The restore VM opens them (cryptsetup --readonly, passphrase on stdin)
/// with the mount's <c>--guest-passphrase-file</c>: one by its UUID line, the other by the default line. Without a
/// file, or without a matching line, <c>part/N.error</c> says why.
/// </summary>
public sealed class LuksUnlockTests : IDisposable
{
    private const string Time = "2026-04-04T00:00:00Z";
    private static readonly TimeSpan Long = TimeSpan.FromMinutes(10);
    private readonly TempDirectory dir = new("restorefs-luks");

    /// <summary>$1 plain image, $2 LUKS image (formatted), $3 volume key hex: encrypts $1 into $2's data segment.</summary>
    private const string EncryptScript = """
import sys, json, subprocess
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
plain, luks, key = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
meta = json.loads(subprocess.run(['cryptsetup', 'luksDump', '--dump-json-metadata', luks], check=True, capture_output=True).stdout)
seg = meta['segments']['0']
assert seg['encryption'] == 'aes-xts-plain64' and seg['sector_size'] == 512, seg
offset = int(seg['offset'])
with open(plain, 'rb') as src, open(luks, 'r+b') as dst:
    dst.seek(offset)
    sector = 0
    while True:
        block = src.read(1 << 20)
        if not block:
            break
        out = bytearray()
        for i in range(0, len(block), 512):
            enc = Cipher(algorithms.AES(key), modes.XTS(sector.to_bytes(16, 'little'))).encryptor()
            out += enc.update(block[i:i + 512]) + enc.finalize()
            sector += 1
        dst.write(out)
""";

    private ProcessResult Run(string tool, params string[] args) =>
        ProcessRunner.Run(Requires.Tool(tool), args, Long).EnsureSuccess(tool + " " + string.Join(' ', args));

    private ProcessResult RunWithInput(string input, string tool, params string[] args) =>
        ProcessRunner.Run("bash", ["-c", "printf '%s' \"$1\" | \"$2\" \"${@:3}\"", "sh", input, Requires.Tool(tool), .. args], Long)
            .EnsureSuccess(tool + " " + string.Join(' ', args));

    /// <summary>A LUKS2 volume of 40 MiB holding an ext4 made from <paramref name="content"/>; returns its UUID.</summary>
    private string MakeVolume(string path, string passphrase, string content)
    {
        var plain = path + ".plain";
        Run("truncate", "-s", "24M", plain);
        Run("mkfs.ext4", "-q", "-F", "-d", content, plain);
        Run("truncate", "-s", "40M", path);
        RunWithInput(passphrase, "cryptsetup", "luksFormat", "-q", "--type", "luks2", "--cipher", "aes-xts-plain64", "--key-size", "512",
            "--sector-size", "512", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file=-", path);
        var dump = RunWithInput(passphrase, "cryptsetup", "luksDump", "-q", "--batch-mode", "--dump-volume-key", "--key-file=-", path).StdOut;
        // The volume key's hex bytes: after "MK dump:", on that line and the indented ones after it (64 bytes).
        var lines = dump[(dump.IndexOf("MK dump:", StringComparison.Ordinal) + "MK dump:".Length)..].Split('\n');
        var key = string.Concat(lines.Take(1).Concat(lines.Skip(1).TakeWhile(l => l.StartsWith('\t')))
            .SelectMany(l => System.Text.RegularExpressions.Regex.Matches(l, "\\b[0-9a-f]{2}\\b").Select(m => m.Value)).Take(64));
        Assert.Equal(128, key.Length);
        ProcessRunner.Run("python3", ["-c", EncryptScript, plain, path, key], Long).EnsureSuccess("encrypt");
        File.Delete(plain);
        return Run("cryptsetup", "luksUUID", path).StdOut.Trim();
    }

    [Fact]
    public void Luks_partitions_open_with_the_passphrase_file_and_are_refused_clearly_without()
    {
        Requires.Root();
        Requires.Tool("qemu-system-x86_64");
        Requires.Tool("sgdisk");
        var srcA = dir.Combine("a");
        var srcB = dir.Combine("b");
        Directory.CreateDirectory(Path.Combine(srcA, "sub"));
        Directory.CreateDirectory(srcB);
        File.WriteAllText(Path.Combine(srcA, "hello.txt"), "secret one\n");
        File.WriteAllBytes(Path.Combine(srcA, "sub", "blob"), Enumerable.Range(0, 300_000).Select(i => (byte)(i * 7)).ToArray());
        File.WriteAllText(Path.Combine(srcB, "other.txt"), "secret two\n");
        var uuidA = MakeVolume(dir.Combine("a.luks"), "pass-one", srcA);
        MakeVolume(dir.Combine("b.luks"), "pass two, with spaces", srcB);

        // GPT: partition 1 and 2, 40 MiB each, the volumes copied in.
        var disk = dir.Combine("disk.img");
        Run("truncate", "-s", "90M", disk);
        Run("sgdisk", "-n", "1:2048:+40M", "-n", "2:0:+40M", disk);
        Run("dd", $"if={dir.Combine("a.luks")}", $"of={disk}", "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none");
        Run("dd", $"if={dir.Combine("b.luks")}", $"of={disk}", "bs=1M", "seek=41", "conv=notrunc,sparse", "status=none");

        var env = new Dictionary<string, string> { ["XDG_RUNTIME_DIR"] = dir.Combine("run") };
        Directory.CreateDirectory(dir.Combine("run"));
        var store = dir.Combine("store");
        ProcessRunner.Run(RepoPaths.Cli, ["backup", "--store", store, "--group", "vm/400", "--time", Time, $"drive-scsi0={disk}"], Long, environment: env)
            .EnsureSuccess("backup");

        // Without a key: today's clear refusal.
        var part = (string mnt, int n) => Path.Combine(mnt, "snapshots", "vm/400", Time, "files", "drive-scsi0.img", "part", n.ToString());
        WithMount(store, env, [], mnt =>
        {
            var error = File.ReadAllText(part(mnt, 1) + ".error");
            Assert.Contains("encrypted (LUKS)", error);
            Assert.Empty(Directory.GetFileSystemEntries(part(mnt, 1)));
        });

        // A file naming only volume A: A opens, B is refused naming its UUID and the missing passphrase.
        var keys = dir.Combine("keys");
        File.WriteAllText(keys, $"# LUKS passphrases\nUUID={uuidA.ToUpperInvariant()} pass-one\n");
        WithMount(store, env, ["--guest-passphrase-file", keys], mnt =>
        {
            Assert.False(File.Exists(part(mnt, 1) + ".error"), File.Exists(part(mnt, 1) + ".error") ? File.ReadAllText(part(mnt, 1) + ".error") : "");
            Assert.Equal("secret one\n", File.ReadAllText(Path.Combine(part(mnt, 1), "hello.txt")));
            Assert.Equal(File.ReadAllBytes(Path.Combine(srcA, "sub", "blob")), File.ReadAllBytes(Path.Combine(part(mnt, 1), "sub", "blob")));
            var error = File.ReadAllText(part(mnt, 2) + ".error");
            Assert.Contains("no passphrase for it", error);
        });

        // A default line opens B; a wrong default for A (its own line wins) — and a wrong passphrase is named as such.
        File.WriteAllText(keys, $"UUID={uuidA} pass-one\npass two, with spaces\n");
        WithMount(store, env, ["--guest-passphrase-file", keys], mnt =>
        {
            Assert.Equal("secret one\n", File.ReadAllText(Path.Combine(part(mnt, 1), "hello.txt")));
            Assert.Equal("secret two\n", File.ReadAllText(Path.Combine(part(mnt, 2), "other.txt")));
        });
        File.WriteAllText(keys, "wrong\n");
        WithMount(store, env, ["--guest-passphrase-file", keys], mnt =>
        {
            Assert.Contains("passphrase does not open it", File.ReadAllText(part(mnt, 1) + ".error"));
        });

        // The passphrases reached no command line and no log of the mount.
        var logs = Directory.GetFiles(dir.Combine("run"), "*", SearchOption.AllDirectories).Where(f => new FileInfo(f).Length < 64 << 20)
            .Select(f => { try { return File.ReadAllText(f); } catch (IOException) { return ""; } });
        Assert.DoesNotContain(logs, text => text.Contains("pass-one", StringComparison.Ordinal) || text.Contains("with spaces", StringComparison.Ordinal));
    }

    private static void WithMount(string store, Dictionary<string, string> env, string[] extra, Action<string> check)
    {
        var mnt = Path.Combine(Path.GetDirectoryName(store)!, "mnt");
        Directory.CreateDirectory(mnt);
        ProcessRunner.Run(RepoPaths.Cli, ["mount", store, mnt, .. extra], TimeSpan.FromSeconds(120), environment: env).EnsureSuccess("mount");
        try
        {
            check(mnt);
        }
        finally
        {
            ProcessRunner.Run(RepoPaths.Cli, ["umount", mnt], TimeSpan.FromSeconds(120), environment: env);
            if (MountTable.IsMounted(mnt))
            {
                MountTable.LazyUnmount(mnt);
            }
        }
    }

    public void Dispose() => dir.Dispose();
}
