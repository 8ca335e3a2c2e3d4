using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using RestoreFs.Datastore;
using RestoreFs.Pxar;

namespace RestoreFs.Cli.Commands;

/// <summary>
/// A pxar archive (or a subtree) as a POSIX.1-2001 (PAX) tar stream: names as bytes (long ones and non-UTF-8 ones in
/// PAX records, with <c>hdrcharset=BINARY</c> for the latter), modes, owners, mtimes with nanoseconds (also before 1970),
/// symlinks, hard links, devices, fifos, and xattrs (with ACLs and fcaps in their kernel form) as <c>SCHILY.xattr.*</c>,
/// ACLs also as text in <c>SCHILY.acl.access</c>/<c>SCHILY.acl.default</c> (what <c>tar --acls</c> reads).
/// Sockets have no tar form and are left out.
/// <para>Damaged or missing chunks fail only what they touch, as GNU tar treats read errors: a stream cannot take back a
/// file whose header is out, so the bytes that cannot be read go out as zeros and the file, the byte range and the
/// chunk are reported; a directory that cannot be listed goes out empty and is reported. The stream stays a valid tar
/// of everything else. A malformed archive (<see cref="PxarException"/>) still ends the stream.</para>
/// </summary>
public static class PxarTarWriter
{
    private const int Block = 512;

    /// <param name="links">The archive's hard-link counts (see <see cref="SnapshotArchives.HardlinkCounts"/>); counted
    /// from the archive when not given.</param>
    /// <returns>What the damage changed in the stream, one line each (empty when nothing).</returns>
    public static IReadOnlyList<string> Write(PxarArchive archive, PxarEntry start, Stream output, IReadOnlyDictionary<ulong, int>? links = null)
    {
        links ??= archive.HardlinkCounts();
        var problems = new List<string>();
        var firstNames = new Dictionary<ulong, byte[]>();
        var header = new byte[Block];
        var buffer = new byte[1 << 20];
        var pending = new Stack<(PxarEntry Entry, byte[] Path)>();

        // A directory goes out as "./" with its own metadata first (as `tar -C DIR -c .` does), so that extracting the
        // stream gives the target directory the archived one's mode, owner, times and xattrs; its children follow.
        pending.Push((start, start.IsDirectory ? [] : start.Name));

        while (pending.Count > 0)
        {
            var (e, path) = pending.Pop();
            if (e.Kind == PxarEntryKind.Socket)
            {
                continue;
            }

            byte[]? linkTarget = null;
            var type = (byte)'0';
            long size = 0;
            switch (e.Kind)
            {
                case PxarEntryKind.Directory:
                    type = (byte)'5';
                    break;
                case PxarEntryKind.Symlink:
                    type = (byte)'2';
                    linkTarget = e.SymlinkTarget ?? [];
                    break;
                case PxarEntryKind.CharDevice:
                    type = (byte)'3';
                    break;
                case PxarEntryKind.BlockDevice:
                    type = (byte)'4';
                    break;
                case PxarEntryKind.Fifo:
                    type = (byte)'6';
                    break;
                default:
                    if (links.ContainsKey(e.Inode) && firstNames.TryGetValue(e.Inode, out var first))
                    {
                        type = (byte)'1';
                        linkTarget = first;
                    }
                    else
                    {
                        if (links.ContainsKey(e.Inode))
                        {
                            firstNames[e.Inode] = path;
                        }

                        size = e.Size;
                    }

                    break;
            }

            WriteHeader(output, header, e, path, type, linkTarget, size);
            if (size > 0)
            {
                var zeros = new ZeroRuns(path, problems);
                for (long offset = 0; offset < size;)
                {
                    var want = (int)Math.Min(buffer.Length, size - offset);
                    int n;
                    try
                    {
                        n = archive.Read(e, offset, buffer.AsSpan(0, want));
                        zeros.Readable();
                    }
                    catch (DatastoreException)
                    {
                        ReadAroundDamage(archive, e, path, offset, buffer.AsSpan(0, want), zeros);
                        n = want;
                    }

                    if (n <= 0)
                    {
                        throw new PxarException($"file {Encoding.UTF8.GetString(path)} ended after {offset} of {size} bytes", archive.Name, e.EntryOffset);
                    }

                    output.Write(buffer, 0, n);
                    offset += n;
                }

                zeros.Readable();
                Pad(output, size);
            }

            if (e.IsDirectory)
            {
                try
                {
                    PushChildren(archive, e, path, pending);
                }
                catch (DatastoreException error)
                {
                    problems.Add($"{Show(path)}/: directory not listed, its contents are missing from the stream: {error.Message}");
                }
            }
        }

        output.Write(new byte[Block * 2]);
        output.Flush();
        return problems;
    }

    /// <summary>
    /// A piece of a file that failed to read, read again in <see cref="FinePiece"/>s so that only what cannot be read
    /// (about the damaged chunk) goes out as zeros. A chunk is one contiguous range of the stream, so when the first and
    /// the last fine piece both fail on the same chunk, every piece between lies in it: they are not read again (each
    /// failing read decodes the chunk anew), and a long damaged stretch costs three decodes per piece, not one per fine piece.
    /// </summary>
    private static void ReadAroundDamage(PxarArchive archive, PxarEntry file, byte[] path, long offset, Span<byte> piece, ZeroRuns zeros)
    {
        var count = (piece.Length + FinePiece - 1) / FinePiece;
        var errors = new DatastoreException?[count];
        var known = new bool[count];
        DatastoreException? Try(int i, Span<byte> piece)
        {
            var at = i * FinePiece;
            var length = Math.Min(FinePiece, piece.Length - at);
            try
            {
                if (archive.Read(file, offset + at, piece.Slice(at, length)) != length)
                {
                    throw new PxarException($"file {Encoding.UTF8.GetString(path)} ended after {offset + at} bytes", archive.Name, file.EntryOffset);
                }

                return null;
            }
            catch (DatastoreException error)
            {
                return error;
            }
        }

        (errors[0], known[0]) = (Try(0, piece), true);
        if (count > 1)
        {
            (errors[^1], known[^1]) = (Try(count - 1, piece), true);
            if (errors[0]?.ChunkDigest is { } digest && errors[^1]?.ChunkDigest == digest)
            {
                for (var i = 1; i < count - 1; i++)
                {
                    (errors[i], known[i]) = (errors[0], true);
                }
            }
        }

        for (var i = 0; i < count; i++)
        {
            if (!known[i])
            {
                errors[i] = Try(i, piece);
            }

            var at = i * FinePiece;
            var length = Math.Min(FinePiece, piece.Length - at);
            if (errors[i] is { } error)
            {
                piece.Slice(at, length).Clear();
                zeros.Unreadable(offset + at, length, error.Message);
            }
            else
            {
                zeros.Readable();
            }
        }
    }

    private static string Show(byte[] path) => path.Length == 0 ? "." : Encoding.UTF8.GetString(path);

    /// <summary>How finely a piece that failed is read again (each failing read decodes its chunk again).</summary>
    private const int FinePiece = 64 * 1024;

    /// <summary>Runs of zeros written for bytes that could not be read, one problem line per run.</summary>
    private sealed class ZeroRuns(byte[] path, List<string> problems)
    {
        private long from = -1;
        private long to;
        private string? reason;

        public void Unreadable(long offset, int length, string why)
        {
            if (from < 0)
            {
                (from, reason) = (offset, why);
            }

            to = offset + length;
        }

        public void Readable()
        {
            if (from >= 0)
            {
                problems.Add($"{Show(path)}: bytes {from}-{to - 1} could not be read and are zeros in the stream: {reason}");
                from = -1;
            }
        }
    }

    private static void PushChildren(PxarArchive archive, PxarEntry dir, byte[] path, Stack<(PxarEntry, byte[])> pending)
    {
        var children = archive.List(dir);
        for (var i = children.Count - 1; i >= 0; i--)
        {
            var c = children[i];
            pending.Push((c, path.Length == 0 ? c.Name : [.. path, (byte)'/', .. c.Name]));
        }
    }

    private static void WriteHeader(Stream output, byte[] header, PxarEntry e, byte[] path, byte type, byte[]? linkTarget, long size)
    {
        var records = new MemoryStream();
        var binary = !IsUtf8(path) || (linkTarget is not null && !IsUtf8(linkTarget));
        if (binary)
        {
            Record(records, "hdrcharset", "BINARY"u8);
        }

        byte[] name = type != (byte)'5' ? path : path.Length == 0 ? "./"u8.ToArray() : [.. path, (byte)'/'];
        if (name.Length > 100 || !IsAscii(name))
        {
            Record(records, "path", name);
        }

        if (linkTarget is not null && (linkTarget.Length > 100 || !IsAscii(linkTarget)))
        {
            Record(records, "linkpath", linkTarget);
        }

        Record(records, "mtime", Encoding.ASCII.GetBytes(PaxTime(e.Stat.MtimeSeconds, e.Stat.MtimeNanos)));
        if (e.Stat.Uid > 0x1FFFFF)
        {
            Record(records, "uid", Encoding.ASCII.GetBytes(e.Stat.Uid.ToString(CultureInfo.InvariantCulture)));
        }

        if (e.Stat.Gid > 0x1FFFFF)
        {
            Record(records, "gid", Encoding.ASCII.GetBytes(e.Stat.Gid.ToString(CultureInfo.InvariantCulture)));
        }

        if (size > 077777777777L)
        {
            Record(records, "size", Encoding.ASCII.GetBytes(size.ToString(CultureInfo.InvariantCulture)));
        }

        foreach (var x in e.AllXattrs())
        {
            Record(records, "SCHILY.xattr." + Encoding.UTF8.GetString(x.Name), x.Value, x.Name);
            // The ACLs in text form too, as GNU tar and star write them: `tar --acls` sets every file's ACLs from these
            // records (and, without them, resets the ACLs the xattrs above restored to what the mode says).
            var acl = x.Name.AsSpan().SequenceEqual("system.posix_acl_access"u8) ? "SCHILY.acl.access"
                : x.Name.AsSpan().SequenceEqual("system.posix_acl_default"u8) ? "SCHILY.acl.default" : null;
            if (acl is not null && AclText(x.Value) is { } text)
            {
                Record(records, acl, Encoding.ASCII.GetBytes(text));
            }
        }

        if (records.Length > 0)
        {
            var paxName = Encoding.ASCII.GetBytes("PaxHeaders/" + e.EntryOffset.ToString(CultureInfo.InvariantCulture));
            Fill(header, paxName, (byte)'x', null, 0x1A4, 0, 0, records.Length, Math.Max(0, e.Stat.MtimeSeconds), 0, 0);
            output.Write(header);
            records.Position = 0;
            records.CopyTo(output);
            Pad(output, records.Length);
        }

        var major = e.Kind is PxarEntryKind.CharDevice or PxarEntryKind.BlockDevice ? e.DeviceMajor : 0;
        var minor = e.Kind is PxarEntryKind.CharDevice or PxarEntryKind.BlockDevice ? e.DeviceMinor : 0;
        Fill(header, Truncate(name), type, linkTarget is null ? null : Truncate(linkTarget), e.Stat.Permissions,
            Math.Min(e.Stat.Uid, 0x1FFFFFu), Math.Min(e.Stat.Gid, 0x1FFFFFu), Math.Min(size, 077777777777L),
            Math.Clamp(e.Stat.MtimeSeconds, 0, 077777777777L), major, minor);
        output.Write(header);
    }

    private static byte[] Truncate(byte[] name) => name.Length <= 100 ? name : name[..100];

    private static void Fill(byte[] h, byte[] name, byte type, byte[]? link, uint mode, uint uid, uint gid, long size, long mtime, ulong major, ulong minor)
    {
        Array.Clear(h);
        name.AsSpan(0, Math.Min(100, name.Length)).CopyTo(h);
        Octal(h, 100, 8, mode);
        Octal(h, 108, 8, uid);
        Octal(h, 116, 8, gid);
        Octal(h, 124, 12, size);
        Octal(h, 136, 12, mtime);
        h[156] = type;
        link?.AsSpan(0, Math.Min(100, link.Length)).CopyTo(h.AsSpan(157));
        "ustar\0"u8.CopyTo(h.AsSpan(257));
        "00"u8.CopyTo(h.AsSpan(263));
        Octal(h, 329, 8, (long)Math.Min(major, 0x1FFFFF));
        Octal(h, 337, 8, (long)Math.Min(minor, 0x1FFFFF));
        h.AsSpan(148, 8).Fill((byte)' ');
        var sum = 0;
        foreach (var b in h)
        {
            sum += b;
        }

        Octal(h, 148, 7, sum);
        h[155] = (byte)' ';
    }

    /// <summary>An octal field: zero-padded digits and a NUL.</summary>
    private static void Octal(byte[] h, int offset, int length, long value)
    {
        var text = Convert.ToString(value, 8).PadLeft(length - 1, '0');
        Encoding.ASCII.GetBytes(text).CopyTo(h, offset);
        h[offset + length - 1] = 0;
    }

    /// <summary>A PAX time: seconds and nanoseconds as a decimal fraction (−1.5 is half a second before −1).</summary>
    public static string PaxTime(long seconds, uint nanos)
    {
        if (nanos == 0)
        {
            return seconds.ToString(CultureInfo.InvariantCulture);
        }

        if (seconds >= 0)
        {
            return $"{seconds}.{nanos:D9}".TrimEnd('0');
        }

        // seconds + nanos/1e9 < 0: write −(|seconds| − 1).(1e9 − nanos)
        return $"-{-(seconds + 1)}.{1_000_000_000 - nanos:D9}".TrimEnd('0');
    }

    /// <summary>A POSIX ACL in the kernel's xattr form (version 2, 8-byte entries) as text with numeric ids, entries
    /// separated by commas (<c>user::rwx,user:1000:r-x,group::r-x,mask::r-x,other::---</c>); null when malformed.</summary>
    internal static string? AclText(ReadOnlySpan<byte> value)
    {
        if (value.Length < 4 || (value.Length - 4) % 8 != 0 || BinaryPrimitives.ReadUInt32LittleEndian(value) != 2)
        {
            return null;
        }

        var parts = new List<string>();
        for (var at = 4; at < value.Length; at += 8)
        {
            var tag = BinaryPrimitives.ReadUInt16LittleEndian(value[at..]);
            var perm = BinaryPrimitives.ReadUInt16LittleEndian(value[(at + 2)..]);
            var id = BinaryPrimitives.ReadUInt32LittleEndian(value[(at + 4)..]);
            var bits = $"{((perm & 4) != 0 ? 'r' : '-')}{((perm & 2) != 0 ? 'w' : '-')}{((perm & 1) != 0 ? 'x' : '-')}";
            var qualifier = id.ToString(CultureInfo.InvariantCulture);
            parts.Add(tag switch
            {
                PxarAcl.TagUserObj => "user::" + bits,
                PxarAcl.TagUser => $"user:{qualifier}:{bits}",
                PxarAcl.TagGroupObj => "group::" + bits,
                PxarAcl.TagGroup => $"group:{qualifier}:{bits}",
                PxarAcl.TagMask => "mask::" + bits,
                PxarAcl.TagOther => "other::" + bits,
                _ => "",
            });
        }

        return parts.Contains("") ? null : string.Join(',', parts);
    }

    private static void Record(MemoryStream records, string key, ReadOnlySpan<byte> value, byte[]? rawKey = null)
    {
        byte[] keyBytes = rawKey is null ? Encoding.UTF8.GetBytes(key) : [.. "SCHILY.xattr."u8, .. rawKey];
        var body = 1 + keyBytes.Length + 1 + value.Length + 1; // " key=value\n"
        var length = body + 1;
        while (length.ToString(CultureInfo.InvariantCulture).Length + body != length)
        {
            length = length.ToString(CultureInfo.InvariantCulture).Length + body;
        }

        records.Write(Encoding.ASCII.GetBytes(length.ToString(CultureInfo.InvariantCulture)));
        records.WriteByte((byte)' ');
        records.Write(keyBytes);
        records.WriteByte((byte)'=');
        records.Write(value);
        records.WriteByte((byte)'\n');
    }

    private static void Pad(Stream output, long size)
    {
        var rest = (int)(size % Block);
        if (rest != 0)
        {
            output.Write(new byte[Block - rest]);
        }
    }

    private static bool IsAscii(byte[] bytes) => bytes.All(b => b is > 0 and < 0x80);

    private static bool IsUtf8(byte[] bytes)
    {
        try
        {
            _ = new UTF8Encoding(false, true).GetString(bytes);
            return true;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }
}
