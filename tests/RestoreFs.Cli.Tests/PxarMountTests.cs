using System.Globalization;
using System.Text;
using RestoreFs.Datastore;
using RestoreFs.Pxar;
using RestoreFs.TestSupport;

namespace RestoreFs.Cli.Tests;

/// <summary>
/// A torture tree made with the real tools, backed up with <c>restorefs backup NAME.pxar=DIR</c> as v1 (ct/100) and split
/// v2 (ct/101), plus a small split archive (ct/102) whose payload chunk the damage test breaks, and the torture tree
/// again with a key file, v1 (ct/103) and split (ct/104); ct/105 is the torture tree with a catalog that does not match it.
/// </summary>
public sealed class PxarFixture : IDisposable
{
    public const string Time = "2026-11-02T10:00:00Z";

    public PxarFixture()
    {
        Requires.Root();
        foreach (var tool in new[] { "rsync", "setfacl", "getfattr", "setfattr", "tar", "sha256sum" })
        {
            Requires.Tool(tool);
        }

        Dir = new TempDirectory("restorefs-pxar");
        Directory.CreateDirectory(Source);
        var script = """
            set -euo pipefail
            cd "$1"
            printf 'hello\n' > a.txt
            setfattr -n user.comment -v hi a.txt
            setfattr -n user.binary -v 0x00ff0102 a.txt
            : > empty
            : > empty2
            printf 'x' > "$(printf 'bad\xff\xfename')"
            mkdir "$(printf 'dir\xc3\x28')"
            printf 'z' > "$(printf 'dir\xc3\x28')/in"
            printf 'y' > "$(printf 'n%.0s' $(seq 255))"
            mkdir big
            (cd big && seq -f 'f%05g' 5000 | xargs touch)
            mkdir -p "deep/$(printf 'd/%.0s' $(seq 29))"
            echo bottom > "deep/$(printf 'd/%.0s' $(seq 29))bottom"
            mkdir sub
            ln a.txt hard1
            ln a.txt sub/hard2
            printf 'two' > pair; ln pair sub/pair2
            ln -s a.txt rel
            ln -s /etc/passwd abs
            ln -s does-not-exist dangling
            ln -s . self
            ln -s ../deep sub/up
            ln -s "$(printf 'l%.0s' $(seq 1000))" longtarget
            ln -s "$(printf 'tgt\xff')" binarytarget
            mkfifo fifo
            mknod chr c 1 3
            mknod blk b 7 200
            mknod bigdev c 300 70000
            : > zero; chmod 0000 zero
            mkdir zerodir; chmod 0000 zerodir
            : > suid; chmod 4755 suid
            mkdir sticky; chmod 1777 sticky
            : > owned; chown 123456:654321 owned
            : > acl; setfacl -m u:1234:rw-,g:5678:r-- acl
            mkdir acldir; setfacl -m u:1234:r-x acldir; setfacl -d -m u:1234:rwx,g:5678:r-x acldir
            head -c 14680081 /dev/urandom > bigfile
            touch -d '@1700000000.123456789' a.txt
            touch -h -d '@-315619199.25' rel
            touch -d '@-1' empty
            touch -d '@-86400.000000001' empty2
            touch -d '@1600000000.000000001' sub
            """;
        File.WriteAllText(Dir.Combine("make.sh"), script);
        ProcessRunner.Run("bash", [Dir.Combine("make.sh"), Source], TimeSpan.FromMinutes(5)).EnsureSuccess("making the torture tree");
        using (var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified))
        {
            socket.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(Path.Combine(Source, "socket")));
        }

        // The root's own metadata, last (every name made in it moved its mtime): what `cp -a` of the archive's directory copies.
        ProcessRunner.Shell($"cd '{Source}' && chown 4242:4343 . && chmod 0750 . && setfattr -n user.root -v top . && touch -d '@{RootMtime}' .",
            TimeSpan.FromMinutes(1)).EnsureSuccess("the torture tree's root metadata");

        Directory.CreateDirectory(DamageSource);
        File.WriteAllBytes(Path.Combine(DamageSource, "big"), RandomBytes(20 * 1024 * 1024, 7));
        File.WriteAllText(Path.Combine(DamageSource, "small.txt"), "still readable\n");

        Cli("backup", "--store", Store, "--group", "ct/100", "--time", Time, $"root.pxar={Source}");
        Cli("backup", "--store", Store, "--group", "ct/101", "--time", Time, "--split-archive", $"root.pxar={Source}");
        Cli("backup", "--store", Store, "--group", "ct/102", "--time", Time, "--split-archive", $"root.pxar={DamageSource}");
        Cli("key", "create", "--kdf", "none", KeyFile);
        Cli("backup", "--store", Store, "--group", "ct/103", "--time", Time, "--keyfile", KeyFile, $"root.pxar={Source}");
        Cli("backup", "--store", Store, "--group", "ct/104", "--time", Time, "--keyfile", KeyFile, "--split-archive", $"root.pxar={Source}");
        WriteWithMismatchedCatalog();
    }

    /// <summary>
    /// ct/105: the torture tree as v1 whose catalog (valid, and in the manifest) describes a slightly different tree —
    /// the same except for one more file in <c>sub</c> — so the mount must notice there that the catalog does not match
    /// and list from the archive.
    /// </summary>
    private void WriteWithMismatchedCatalog()
    {
        var other = Dir.Combine("other-tree");
        ProcessRunner.Run("cp", ["-a", Source, other], TimeSpan.FromMinutes(2)).EnsureSuccess("cp -a the torture tree");
        File.WriteAllText(Path.Combine(other, "sub", "not-in-the-archive"), "x");
        using var writer = BackupWriter.Create(Store, new BackupGroup(BackupNamespace.Root, "ct", "105"), DateTimeOffset.Parse(Time, CultureInfo.InvariantCulture),
            null, precreateChunkDirectories: false);
        var catalogStream = writer.BeginDynamicArchive("catalog.pcat1");
        var catalog = new PxarCatalogWriter(catalogStream);
        var archive = writer.BeginDynamicArchive("root.pxar");
        catalog.BeginDirectory(Encoding.UTF8.GetBytes(archive.FileName));
        DirectoryArchiver.Write(other, Stream.Null, null, catalog);
        catalog.EndDirectory();
        DirectoryArchiver.Write(Source, archive);
        archive.Finish();
        catalog.Finish();
        catalogStream.Finish();
        writer.Finish();
        ProcessRunner.Run("rm", ["-rf", other], TimeSpan.FromMinutes(2));
    }

    /// <summary>mtime of the torture tree's root directory (mode 0750, owner 4242:4343, xattr user.root=top).</summary>
    public const string RootMtime = "1500000000.123456789";

    /// <summary>The key of the encrypted backups ct/103 (v1) and ct/104 (split).</summary>
    public string KeyFile => Dir.Combine("key.json");

    public TempDirectory Dir { get; }

    public string Source => Dir.Combine("tree");

    public string DamageSource => Dir.Combine("damage");

    public string Store => Dir.Combine("store");

    public static byte[] RandomBytes(int n, int seed)
    {
        var b = new byte[n];
        new Random(seed).NextBytes(b);
        return b;
    }

    public static ProcessResult Cli(params string[] args) =>
        ProcessRunner.Run(RepoPaths.Cli, args, TimeSpan.FromMinutes(10)).EnsureSuccess("restorefs " + string.Join(' ', args));

    public void Dispose()
    {
        // .NET cannot delete names that are not UTF-8.
        ProcessRunner.Run("rm", ["-rf", Dir.Path], TimeSpan.FromMinutes(2));
        Dir.Dispose();
    }
}

/// <summary>pxar archives in the mount and through restore: rsync -aHAX out of the mount, restore DIR and restore - | tar equal the source.</summary>
public sealed class PxarMountTests(PxarFixture fixture) : IClassFixture<PxarFixture>
{
    private static string SnapshotDir(string mountPoint, string group) => Path.Combine(mountPoint, "snapshots", group, PxarFixture.Time);

    /// <summary>
    /// Every field of a tree as sorted lines (names as bytes mapped through latin-1), the root directory's own included:
    /// type, mode, uid:gid, mtime ns, nlink, size and sha256 of files, symlink targets, rdev, xattrs (ACLs included) as
    /// hex, hard-link groups.
    /// </summary>
    internal static List<string> Describe(string root, bool tarView = false)
    {
        using var temp = new TempDirectory("pxar-describe");
        var script = """
            set -euo pipefail
            cd "$1"
            { find . -maxdepth 0 -printf 'R %m %U:%G %T@\0'
              find . -mindepth 1 ! -type f ! -type s -printf 'E %P %y %m %U:%G %T@ %n\0'
              find . -mindepth 1 -type s -printf 'S %P %m %U:%G %T@\0'
              find . -mindepth 1 -type f -printf 'F %P %m %U:%G %T@ %n %s\0'
              find . -mindepth 1 -type l -printf 'L %P -> %l\0'
              find . -mindepth 1 \( -type b -o -type c \) -print0 | xargs -0 -r stat --printf 'D %n %t:%T\0'
              find . -mindepth 1 -type f -print0 | xargs -0 -r sha256sum -z | sed -z 's/^/H /'
              find . -mindepth 1 -type f -links +1 -printf 'I %i %P\0'
            } > "$2"
            getfattr -R -P -h -d -m - -e hex . > "$3" 2>/dev/null || true
            """;
        File.WriteAllText(temp.Combine("describe.sh"), script);
        ProcessRunner.Run("bash", [temp.Combine("describe.sh"), root, temp.Combine("out"), temp.Combine("x")], TimeSpan.FromMinutes(5))
            .EnsureSuccess("describe " + root);
        var lines = new List<string>();
        var groups = new Dictionary<string, List<string>>();
        foreach (var record in Encoding.Latin1.GetString(File.ReadAllBytes(temp.Combine("out"))).Split('\0', StringSplitOptions.RemoveEmptyEntries))
        {
            if (record.StartsWith("I ", StringComparison.Ordinal))
            {
                var parts = record.Split(' ', 3);
                (groups.TryGetValue(parts[1], out var g) ? g : groups[parts[1]] = []).Add(parts[2]);
            }
            else if (tarView && record.StartsWith("S ", StringComparison.Ordinal))
            {
                continue; // tar has no sockets
            }
            else
            {
                lines.Add(record);
            }
        }

        lines.AddRange(groups.Values.Select(g => "K " + string.Join(" | ", g.Order(StringComparer.Ordinal))));

        string? path = null;
        foreach (var line in Encoding.Latin1.GetString(File.ReadAllBytes(temp.Combine("x"))).Split('\n'))
        {
            if (line.StartsWith("# file: ", StringComparison.Ordinal))
            {
                path = line[8..];
            }
            else if (path is not null && line.Contains('=', StringComparison.Ordinal))
            {
                if (tarView && !line.StartsWith("user.", StringComparison.Ordinal) && !line.StartsWith("system.posix_acl_", StringComparison.Ordinal))
                {
                    continue; // what GNU tar puts back: user xattrs and ACLs
                }

                lines.Add($"X {path} {line}");
            }
        }

        lines.Sort(StringComparer.Ordinal);
        return lines;
    }

    private void AssertSameTree(string copy, bool tarView = false)
    {
        var expected = Describe(fixture.Source, tarView);
        var actual = Describe(copy, tarView);
        Assert.Contains(expected, l => (l.StartsWith("X ", StringComparison.Ordinal) && l.Contains("acldir system.posix_acl_default=", StringComparison.Ordinal)) || tarView);
        Assert.Contains(expected, l => l.StartsWith("K ", StringComparison.Ordinal));
        Assert.Equal(expected.Except(actual), []);
        Assert.Equal(actual.Except(expected), []);
        Assert.Equal(expected, actual);
    }

    /// <summary>The mount itself shows the same as the source, except nlink of directories (1: unknown).</summary>
    private void AssertMountShowsTheSource(string archive)
    {
        var viaMount = Describe(archive).Where(l => !l.StartsWith("E ", StringComparison.Ordinal)).ToList();
        var source = Describe(fixture.Source).Where(l => !l.StartsWith("E ", StringComparison.Ordinal)).ToList();
        Assert.Equal(source, viaMount);
    }

    [Theory]
    [InlineData("ct/100")]
    [InlineData("ct/101")]
    public void RsyncOutOfTheMountEqualsTheSourceOnEveryField(string group)
    {
        using var temp = new TempDirectory("pxar-rsync");
        using var mount = CliMount.Start(fixture.Store, temp.Combine("mnt"), "--no-vm");
        var archive = Path.Combine(SnapshotDir(mount.MountPoint, group), "root.pxar");
        Assert.Contains("root.pxar", Directory.GetFileSystemEntries(SnapshotDir(mount.MountPoint, group)).Select(Path.GetFileName));

        var copy = temp.Combine("copy");
        ProcessRunner.Run("rsync", ["-aHAX", "--numeric-ids", archive + "/", copy + "/"], TimeSpan.FromMinutes(10)).EnsureSuccess("rsync");
        AssertSameTree(copy);

        AssertMountShowsTheSource(archive);
        ProcessRunner.Run("rm", ["-rf", copy], TimeSpan.FromMinutes(2));
    }

    /// <summary>
    /// The archive's directory carries the backed-up root's own metadata from the first stat on — before anyone entered
    /// it — so `cp -a` of the directory itself copies its mode, owner, ns mtime and xattrs. An archive that cannot be
    /// opened (encrypted, mounted without the key) still shows as a directory, with the snapshot's attributes.
    /// </summary>
    [Fact]
    public void ArchiveDirectoryShowsTheRootsMetadataBeforeItIsEntered()
    {
        using var temp = new TempDirectory("pxar-root");
        using var mount = CliMount.Start(fixture.Store, temp.Combine("mnt"), "--no-vm");
        const string Expected = "750 4242:4343 " + PxarFixture.RootMtime;
        string Stat(string path) => ProcessRunner.Run("stat", ["-c", "%a %u:%g %.9Y", path], TimeSpan.FromMinutes(1)).EnsureSuccess("stat").StdOut.Trim();

        foreach (var group in new[] { "ct/100", "ct/101" })
        {
            var snapshot = SnapshotDir(mount.MountPoint, group);
            var ls = ProcessRunner.Run("ls", ["-l", "--time-style=+%s", snapshot], TimeSpan.FromMinutes(1)).EnsureSuccess("ls -l");
            Assert.Matches(@"(?m)^drwxr-x---\S* +\d+ +4242 +4343 +\d+ +1500000000 +root\.pxar$", ls.StdOut);
            Assert.Equal(Expected, Stat(Path.Combine(snapshot, "root.pxar")));

            var copy = temp.Combine(group.Replace('/', '-'));
            Directory.CreateDirectory(copy);
            ProcessRunner.Run("cp", ["-a", Path.Combine(snapshot, "root.pxar"), copy], TimeSpan.FromMinutes(5)).EnsureSuccess("cp -a");
            Assert.Equal(Expected, Stat(Path.Combine(copy, "root.pxar")));
            var xattr = ProcessRunner.Run("getfattr", ["--only-values", "-n", "user.root", Path.Combine(copy, "root.pxar")], TimeSpan.FromMinutes(1));
            Assert.Equal("top", xattr.EnsureSuccess("getfattr").StdOut);
            ProcessRunner.Run("rm", ["-rf", copy], TimeSpan.FromMinutes(2));
        }

        var locked = Path.Combine(SnapshotDir(mount.MountPoint, "ct/103"), "root.pxar");
        Assert.StartsWith("555 ", Stat(locked), StringComparison.Ordinal);
        Assert.NotEqual(0, ProcessRunner.Run("ls", [locked], TimeSpan.FromMinutes(1)).ExitCode);
    }

    /// <summary>
    /// A v1 archive lists from its catalog (names, types, inode numbers; no entry decoded): what readdir says must be what
    /// lstat says — d_type the file's type, d_ino its st_ino (hard links included) — on every archive kind, and where
    /// the catalog does not match the archive (ct/105) the listing still equals the source.
    /// </summary>
    [Theory]
    [InlineData("ct/100")]
    [InlineData("ct/101")]
    [InlineData("ct/105")]
    public void ReaddirTypesAndInodesAgreeWithLstat(string group)
    {
        using var temp = new TempDirectory("pxar-dirent");
        using var mount = CliMount.Start(fixture.Store, temp.Combine("mnt"), "--no-vm");
        var archive = Path.Combine(SnapshotDir(mount.MountPoint, group), "root.pxar");
        var script = """
            import os, stat, sys
            bad = 0; count = 0
            def walk(path):
                global bad, count
                with os.scandir(path) as it:
                    for e in it:
                        count += 1
                        st = os.lstat(e.path)
                        kind = stat.S_IFMT(st.st_mode)
                        if e.inode() != st.st_ino or e.is_dir(follow_symlinks=False) != stat.S_ISDIR(kind) or \
                           e.is_symlink() != stat.S_ISLNK(kind) or e.is_file(follow_symlinks=False) != stat.S_ISREG(kind):
                            bad += 1
                            print("mismatch", os.fsdecode(e.path).encode("utf-8", "surrogateescape"), e.inode(), st.st_ino, oct(kind))
                        if stat.S_ISDIR(kind) and st.st_mode & 0o500 == 0o500:
                            walk(e.path)
            walk(os.fsencode(sys.argv[1]))
            print("entries", count, "mismatches", bad)
            """;
        File.WriteAllText(temp.Combine("dirent.py"), script);
        var result = ProcessRunner.Run("python3", [temp.Combine("dirent.py"), archive], TimeSpan.FromMinutes(5)).EnsureSuccess("dirent check");
        Assert.Contains("mismatches 0", result.StdOut, StringComparison.Ordinal);
        Assert.Matches(@"entries \d{4,}", result.StdOut);

        if (group == "ct/105")
        {
            AssertMountShowsTheSource(archive);
            Assert.False(File.Exists(Path.Combine(archive, "sub", "not-in-the-archive")));
        }
    }

    [Theory]
    [InlineData("ct/100")]
    [InlineData("ct/101")]
    public void RestoreToADirectoryEqualsTheSource(string group)
    {
        using var temp = new TempDirectory("pxar-restore");
        var target = temp.Combine("out");
        PxarFixture.Cli("restore", fixture.Store, $"{group}/{PxarFixture.Time}", "root.pxar", target);
        AssertSameTree(target);

        var part = temp.Combine("part");
        PxarFixture.Cli("restore", fixture.Store, $"{group}/{PxarFixture.Time}", "root.pxar", part, "--path", "sub");
        Assert.Equal("hello\n", File.ReadAllText(Path.Combine(part, "hard2")));
        Assert.Equal("two", File.ReadAllText(Path.Combine(part, "pair2")));
        Assert.False(File.Exists(Path.Combine(part, "a.txt")));

        // One file: into the target directory under its own name, with its metadata; never over an existing name.
        var single = temp.Combine("single");
        PxarFixture.Cli("restore", fixture.Store, $"{group}/{PxarFixture.Time}", "root.pxar", single, "--path", "sub/hard2");
        Assert.Equal(["hard2"], Directory.GetFileSystemEntries(single).Select(Path.GetFileName));
        string Stat(string file) => ProcessRunner.Run("stat", ["-c", "%a %u:%g %y %s", file], TimeSpan.FromSeconds(10)).EnsureSuccess("stat").StdOut;
        Assert.Equal(Stat(Path.Combine(fixture.Source, "sub", "hard2")), Stat(Path.Combine(single, "hard2")));
        var again = ProcessRunner.Run(RepoPaths.Cli, ["restore", fixture.Store, $"{group}/{PxarFixture.Time}", "root.pxar", single, "--path", "sub/hard2"],
            TimeSpan.FromMinutes(2));
        Assert.NotEqual(0, again.ExitCode);
        Assert.Contains("exists already", again.StdErr, StringComparison.Ordinal);
        ProcessRunner.Run("rm", ["-rf", target, part, single], TimeSpan.FromMinutes(2));
    }

    [Theory]
    [InlineData("ct/103")]
    [InlineData("ct/104")]
    public void EncryptedArchiveReadsWithItsKeyFileOnly(string group)
    {
        var reader = DatastoreReader.Open(fixture.Store);
        var snapshot = reader.GetSnapshot(BackupNamespace.Root, $"{group}/{PxarFixture.Time}");
        var key = CryptConfig.FromKeyFile(fixture.KeyFile, null);
        var manifest = reader.ReadManifest(snapshot, key);
        var archives = manifest.Files.Where(f => f.FileName.EndsWith(".didx", StringComparison.Ordinal)).ToList();
        Assert.NotEmpty(archives);
        Assert.All(archives, f => Assert.Equal(CryptMode.Encrypt, f.CryptMode));

        // Every chunk of every archive (and the catalog) is an encrypted blob.
        foreach (var file in archives)
        {
            var (index, _) = reader.OpenDynamicIndex(snapshot, file.FileName, key);
            for (var i = 0; i < index.ChunkCount; i++)
            {
                var hex = Convert.ToHexStringLower(index.Digest(i));
                var head = new byte[8];
                using (var chunk = File.OpenRead(Path.Combine(fixture.Store, ".chunks", hex[..4], hex)))
                {
                    chunk.ReadExactly(head);
                }

                Assert.True(head.SequenceEqual(DataBlob.MagicEncrypted) || head.SequenceEqual(DataBlob.MagicEncryptedCompressed),
                    $"chunk {hex} of {file.FileName} is not encrypted");
            }
        }

        using var temp = new TempDirectory("pxar-encrypted");
        var keyed = temp.Combine("keyed");
        using (var mount = CliMount.Start(fixture.Store, temp.Combine("mnt"), "--no-vm", "--keyfile", fixture.KeyFile))
        {
            var archive = Path.Combine(SnapshotDir(mount.MountPoint, group), "root.pxar");
            ProcessRunner.Run("rsync", ["-aHAX", "--numeric-ids", archive + "/", keyed + "/"], TimeSpan.FromMinutes(10)).EnsureSuccess("rsync");
        }

        AssertSameTree(keyed);
        ProcessRunner.Run("rm", ["-rf", keyed], TimeSpan.FromMinutes(2));

        // Without the key the archive's directory is still there (the manifest is readable) but refuses to open.
        using (var mount = CliMount.Start(fixture.Store, temp.Combine("mnt2"), "--no-vm"))
        {
            var archive = Path.Combine(SnapshotDir(mount.MountPoint, group), "root.pxar");
            var ls = ProcessRunner.Run("ls", [archive], TimeSpan.FromMinutes(1));
            Assert.NotEqual(0, ls.ExitCode);
            Assert.Contains("Permission denied", ls.StdErr, StringComparison.Ordinal);
            Assert.Equal("", ls.StdOut);
        }

        var restored = temp.Combine("out");
        PxarFixture.Cli("restore", fixture.Store, $"{group}/{PxarFixture.Time}", "root.pxar", restored, "--keyfile", fixture.KeyFile);
        AssertSameTree(restored);
        ProcessRunner.Run("rm", ["-rf", restored], TimeSpan.FromMinutes(2));
        var refused = ProcessRunner.Run(RepoPaths.Cli, ["restore", fixture.Store, $"{group}/{PxarFixture.Time}", "root.pxar", temp.Combine("nokey")],
            TimeSpan.FromMinutes(2));
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains("key", refused.StdErr, StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>Hard links in the stream: a v1 archive's from its catalog, a split one's from its metadata stream. With
    /// <c>--acls</c> (which resets every ACL the stream has no <c>SCHILY.acl.*</c> record for) the ACLs come back too.</summary>
    [Theory]
    [InlineData("ct/100", false)]
    [InlineData("ct/101", false)]
    [InlineData("ct/100", true)]
    [InlineData("ct/101", true)]
    public void RestoreAsTarEqualsTheSourceForWhatTarKeeps(string group, bool acls)
    {
        using var temp = new TempDirectory("pxar-tar");
        var target = temp.Combine("out");
        Directory.CreateDirectory(target);
        var script = $"set -o pipefail; '{RepoPaths.Cli}' restore '{fixture.Store}' {group}/{PxarFixture.Time} root.pxar - " +
                     $"| tar --xattrs --xattrs-include='*' {(acls ? "--acls " : "")}--numeric-owner -xpf - -C '{target}'";
        ProcessRunner.Shell(script, TimeSpan.FromMinutes(10)).EnsureSuccess("restore - | tar -x");
        AssertSameTree(target, tarView: true);
        ProcessRunner.Run("rm", ["-rf", target], TimeSpan.FromMinutes(2));
    }

    [Fact]
    public void DamagedPayloadChunkFailsOnlyItsFileWithEio()
    {
        var reader = DatastoreReader.Open(fixture.Store);
        var snapshot = reader.GetSnapshot(BackupNamespace.Root, $"ct/102/{PxarFixture.Time}");
        string digest;
        using (var payload = DynamicImageReader.Open(reader, snapshot, "root.ppxar.didx", null))
        {
            Assert.True(payload.ChunkCount >= 3, $"the payload has {payload.ChunkCount} chunks");
            digest = payload.ChunkDigestHex(1); // inside 'big' (the payload is: header, big, small.txt)
        }

        var payloadIndex = DynamicIndex.Open(Path.Combine(snapshot.DirectoryPath, "root.ppxar.didx"));
        var (damagedChunkStart, damagedChunkEnd) = (payloadIndex.ChunkStart(1), payloadIndex.ChunkEnd(1));

        var chunk = Path.Combine(fixture.Store, ".chunks", digest[..4], digest);
        var bytes = File.ReadAllBytes(chunk);
        bytes[bytes.Length / 2] ^= 0x55;
        File.WriteAllBytes(chunk, bytes);

        using var temp = new TempDirectory("pxar-damage");
        using var mount = CliMount.Start(fixture.Store, temp.Combine("mnt"), "--no-vm");
        var archive = Path.Combine(SnapshotDir(mount.MountPoint, "ct/102"), "root.pxar");
        Assert.Equal(new[] { "big", "small.txt" }, Directory.GetFileSystemEntries(archive).Select(p => Path.GetFileName(p)).Order(StringComparer.Ordinal).ToArray());
        Assert.Equal("still readable\n", File.ReadAllText(Path.Combine(archive, "small.txt")));
        var cat = ProcessRunner.Run("cat", [Path.Combine(archive, "big")], TimeSpan.FromMinutes(2));
        Assert.NotEqual(0, cat.ExitCode);
        Assert.Contains("Input/output error", cat.StdErr, StringComparison.Ordinal);

        // The first chunk of big still reads.
        using var f = File.OpenRead(Path.Combine(archive, "big"));
        var head = new byte[4096];
        f.ReadExactly(head);
        Assert.Equal(PxarFixture.RandomBytes(20 * 1024 * 1024, 7).AsSpan(0, 4096).ToArray(), head);

        // restore names the file and the chunk, leaves no short copy of big, and still restores what comes after it.
        var restore = ProcessRunner.Run(RepoPaths.Cli, ["restore", fixture.Store, $"ct/102/{PxarFixture.Time}", "root.pxar", temp.Combine("out")],
            TimeSpan.FromMinutes(5));
        Assert.NotEqual(0, restore.ExitCode);
        Assert.Contains(digest, restore.StdErr, StringComparison.Ordinal);
        Assert.Contains("not restored: big: ", restore.StdErr, StringComparison.Ordinal);
        Assert.Equal(["small.txt"], Directory.GetFileSystemEntries(temp.Combine("out")).Select(p => Path.GetFileName(p)));
        Assert.Equal("still readable\n", File.ReadAllText(temp.Combine("out", "small.txt")));

        // As a tar stream (big's header is out before its damage is met): the unreadable part goes out as zeros and is
        // reported with the range and the chunk, everything else is exact, the exit status says so.
        var tarOut = temp.Combine("tar-out");
        Directory.CreateDirectory(tarOut);
        var tar = ProcessRunner.Shell($"set -o pipefail; '{RepoPaths.Cli}' restore '{fixture.Store}' ct/102/{PxarFixture.Time} root.pxar - " +
                                      $"| tar -xpf - -C '{tarOut}'", TimeSpan.FromMinutes(5));
        Assert.Equal(1, tar.ExitCode);
        Assert.Contains(digest, tar.StdErr, StringComparison.Ordinal);
        var range = System.Text.RegularExpressions.Regex.Match(tar.StdErr, @"big: bytes (\d+)-(\d+) could not be read and are zeros");
        Assert.True(range.Success, tar.StdErr);
        var (from, to) = (int.Parse(range.Groups[1].Value), int.Parse(range.Groups[2].Value));
        var source = PxarFixture.RandomBytes(20 * 1024 * 1024, 7);
        var restored = File.ReadAllBytes(Path.Combine(tarOut, "big"));
        Assert.Equal(source.Length, restored.Length);
        // Zeros for the damaged chunk, to within the 64 KiB pieces it is read again in at each end, not for the file.
        var chunkLength = damagedChunkEnd - damagedChunkStart;
        Assert.True(to - from + 1 <= chunkLength + 2 * 64 * 1024, $"{to - from + 1} bytes zeroed for a chunk of {chunkLength}");
        Assert.Equal(source.AsSpan(0, from).ToArray(), restored.AsSpan(0, from).ToArray());
        Assert.Equal(source.AsSpan(to + 1).ToArray(), restored.AsSpan(to + 1).ToArray());
        Assert.True(restored.AsSpan(from, to - from + 1).IndexOfAnyExcept((byte)0) < 0);
        Assert.Equal("still readable\n", File.ReadAllText(Path.Combine(tarOut, "small.txt")));
    }
}
