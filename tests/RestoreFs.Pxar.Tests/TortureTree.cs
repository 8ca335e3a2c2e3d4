using System.Net.Sockets;
using System.Text;
using RestoreFs.TestSupport;

namespace RestoreFs.Pxar.Tests;

/// <summary>One torture tree shared by the test classes that need it (making 5,000 files is slow on a busy disk).</summary>
[CollectionDefinition("torture")]
public sealed class TortureCollection : ICollectionFixture<TortureTree>;

/// <summary>
/// A directory tree with every kind of entry and metadata the archive must keep, made with the real tools (mknod,
/// mkfifo, setfattr, setfacl, setcap, touch, chown), and its expected listing from find and getfattr.
/// </summary>
public sealed class TortureTree : IDisposable
{
    private readonly TempDirectory temp = new("pxar-torture");

    public TortureTree()
        : this(3 * 1024 * 1024 + 17, 5000)
    {
    }

    internal TortureTree(int bigFileBytes = 3 * 1024 * 1024 + 17, int bigDirectoryEntries = 5000)
    {
        Root = temp.Combine("tree");
        Directory.CreateDirectory(Root);
        var script = $$"""
            set -euo pipefail
            cd "$1"
            printf 'hello\n' > a.txt
            setfattr -n user.comment -v hi a.txt
            setfattr -n user.binary -v 0x00ff0102 a.txt
            : > empty
            printf 'x' > "$(printf 'bad\xff\xfename')"
            printf 'y' > "$(printf 'n%.0s' $(seq 255))"
            mkdir big
            (cd big && seq -f 'f%05g' {{bigDirectoryEntries}} | xargs touch)
            mkdir -p "deep/$(printf 'd/%.0s' $(seq 29))"
            echo bottom > "deep/$(printf 'd/%.0s' $(seq 29))bottom"
            mkdir sub
            ln a.txt hard1
            ln a.txt sub/hard2
            ln -s a.txt rel
            ln -s /etc/passwd abs
            ln -s does-not-exist dangling
            ln -s . self
            ln -s "$(printf 'l%.0s' $(seq 1000))" longtarget
            ln -s "$(printf 'tgt\xff')" binarytarget
            mkfifo fifo
            mknod chr c 1 3
            mknod blk b 7 200
            : > zero; chmod 0000 zero
            : > suid; chmod 4755 suid
            mkdir sticky; chmod 1777 sticky
            : > owned; chown 123456:654321 owned
            : > acl; setfacl -m u:1234:rw-,g:5678:r-- acl
            mkdir acldir; setfacl -m u:1234:r-x acldir; setfacl -d -m u:1234:rwx,g:5678:r-x acldir
            : > caps; setcap cap_net_raw+ep caps
            head -c {{bigFileBytes}} /dev/urandom > bigfile
            touch -d '@1700000000.123456789' a.txt
            touch -h -d '@-315619199.25' rel
            touch -d '@-1' empty
            touch -d '@1600000000.000000001' sub
            setfattr -n user.root -v top .
            setfacl -d -m g:5678:r-x .
            """;
        File.WriteAllText(temp.Combine("make.sh"), script);
        ProcessRunner.Run("bash", [temp.Combine("make.sh"), Root], TimeSpan.FromMinutes(2)).EnsureSuccess("making the torture tree");
        using (var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            socket.Bind(new UnixDomainSocketEndPoint(Path.Combine(Root, "socket")));
        }

        ProcessRunner.Run("touch", ["-d", "@1234567890.5", Root], TimeSpan.FromSeconds(10)).EnsureSuccess("touch root");
    }

    public string Root { get; }

    public string Combine(params string[] parts) => temp.Combine(parts);

    /// <summary>path → "type perms uid:gid mtime size target" from find, names as bytes (latin-1 mapped for comparison).</summary>
    public SortedDictionary<string, string> ExpectedListing(string? root = null)
    {
        var file = temp.Combine($"find-{Guid.NewGuid():N}.out");
        ProcessRunner.Run("find", [".", "-mindepth", "1", "-fprintf", file, @"%P\0%y %m %U:%G %T@ %s %l\0"], TimeSpan.FromMinutes(1),
            workingDirectory: root ?? Root).EnsureSuccess("find");
        var parts = Encoding.Latin1.GetString(File.ReadAllBytes(file)).Split('\0');
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        for (var i = 0; i + 1 < parts.Length; i += 2)
        {
            var f = parts[i + 1].Split(' ', 6);
            var (seconds, fraction) = (f[3].Split('.')[0], f[3].Split('.')[1][..9]);
            var size = f[0] == "f" ? f[4] : "-";
            var target = f[0] == "l" ? f[5] : "";
            result[parts[i]] = $"{f[0]} {f[1]} {f[2]} {seconds}.{fraction} {size} {target}";
        }

        return result;
    }

    /// <summary>path → sorted "name=hex" xattrs (ACLs and capabilities included) from getfattr.</summary>
    public SortedDictionary<string, string> ExpectedXattrs(string? root = null)
    {
        var run = ProcessRunner.Run("getfattr", ["-R", "-P", "-h", "-d", "-m", "-", "-e", "hex", "."], TimeSpan.FromMinutes(1), workingDirectory: root ?? Root);
        run.EnsureSuccess("getfattr");
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        string? path = null;
        var values = new List<string>();
        void Flush()
        {
            if (path is not null && values.Count > 0)
            {
                result[path.StartsWith("./", StringComparison.Ordinal) ? path[2..] : path] = string.Join(",", values.Order(StringComparer.Ordinal));
            }

            values.Clear();
        }

        foreach (var line in run.StdOut.Split('\n'))
        {
            if (line.StartsWith("# file: ", StringComparison.Ordinal))
            {
                Flush();
                path = Unescape(line[8..]);
            }
            else if (line.Contains('=', StringComparison.Ordinal))
            {
                var eq = line.IndexOf('=', StringComparison.Ordinal);
                values.Add(line[..eq] + "=" + line[(eq + 3)..].ToLowerInvariant());
            }
        }

        Flush();
        return result;
    }

    /// <summary>getfattr escapes bytes of names as \ooo; back to the latin-1 mapping of the raw bytes.</summary>
    private static string Unescape(string s)
    {
        var sb = new StringBuilder();
        for (var i = 0; i < s.Length; i++)
        {
            if (s[i] == '\\' && i + 3 < s.Length && char.IsDigit(s[i + 1]))
            {
                sb.Append((char)Convert.ToInt32(s.Substring(i + 1, 3), 8));
                i += 3;
            }
            else
            {
                sb.Append(s[i]);
            }
        }

        return LatinFromMixed(sb.ToString());
    }

    /// <summary>Plain characters are UTF-8 text; escaped ones are already single bytes: re-encode the plain part to bytes, then latin-1.</summary>
    private static string LatinFromMixed(string s)
    {
        var bytes = new List<byte>();
        foreach (var c in s)
        {
            if (c < 0x100 && c >= 0x80)
            {
                bytes.Add((byte)c);
            }
            else
            {
                bytes.AddRange(Encoding.UTF8.GetBytes(c.ToString()));
            }
        }

        return Encoding.Latin1.GetString(bytes.ToArray());
    }

    public void Dispose()
    {
        // .NET cannot delete names that are not UTF-8.
        ProcessRunner.Run("rm", ["-rf", temp.Path], TimeSpan.FromMinutes(1));
        temp.Dispose();
    }
}
