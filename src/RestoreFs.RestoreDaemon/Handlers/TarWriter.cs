using System.Globalization;
using System.Text;
using RestoreFs.RestoreDaemon.Native;

namespace RestoreFs.RestoreDaemon.Handlers;

/// <summary>
/// Writes a POSIX tar (ustar with pax extended headers for long names, binary names, large sizes and sub-second
/// mtimes) of a file or directory tree walked with <see cref="VolumeFiles"/> rules: symlinks are stored, never
/// followed. Names are bytes; a name that is not UTF-8 gets <c>hdrcharset=BINARY</c>.
/// </summary>
internal sealed class TarWriter(Stream output)
{
    private const uint MaxUstarId = 0x1FFFFF;
    private const long MaxUstarTime = 0x1FFFFFFFF; // 11 octal digits

    private readonly byte[] block = new byte[512];
    private readonly byte[] copy = new byte[1024 * 1024];

    public async Task WriteTreeAsync(int parentFd, byte[] name, byte[] archiveName, CancellationToken ct)
    {
        if (LibC.Stat(parentFd, name, out var st) < 0)
        {
            return;
        }

        switch (st.Kind)
        {
            case LibC.S_IFDIR:
                await HeaderAsync(Concat(archiveName, "/"u8), st, '5', 0, null, ct).ConfigureAwait(false);
                var fd = name.Length == 0 ? LibC.OpenAt(parentFd, "."u8, LibC.O_RDONLY | LibC.O_DIRECTORY)
                    : LibC.OpenAt(parentFd, name, LibC.O_RDONLY | LibC.O_DIRECTORY | LibC.O_NOFOLLOW);
                if (fd < 0)
                {
                    return;
                }

                using (var dir = new Fd(fd))
                {
                    foreach (var child in LibC.ReadDirectory(dir.Value).ToList())
                    {
                        ct.ThrowIfCancellationRequested();
                        await WriteTreeAsync(dir.Value, child, Concat(Concat(archiveName, "/"u8), child), ct).ConfigureAwait(false);
                    }
                }

                break;
            case LibC.S_IFREG:
                var file = LibC.OpenAt(parentFd, name, LibC.O_RDONLY | LibC.O_NOFOLLOW | LibC.O_NONBLOCK);
                if (file < 0)
                {
                    return;
                }

                using (var f = new Fd(file))
                {
                    await HeaderAsync(archiveName, st, '0', (long)st.Size, null, ct).ConfigureAwait(false);
                    long done = 0;
                    while (done < (long)st.Size)
                    {
                        var want = (int)Math.Min(copy.Length, (long)st.Size - done);
                        var n = LibC.PReadAll(f.Value, copy.AsSpan(0, want), done);
                        if (n < want)
                        {
                            // The file shrank: pad with zeros so the archive stays well-formed.
                            copy.AsSpan(n, want - n).Clear();
                        }

                        await output.WriteAsync(copy.AsMemory(0, want), ct).ConfigureAwait(false);
                        done += want;
                    }

                    await PadAsync((long)st.Size, ct).ConfigureAwait(false);
                }

                break;
            case LibC.S_IFLNK:
                await HeaderAsync(archiveName, st, '2', 0, LibC.ReadLink(parentFd, name) ?? [], ct).ConfigureAwait(false);
                break;
            case LibC.S_IFCHR:
                await HeaderAsync(archiveName, st, '3', 0, null, ct).ConfigureAwait(false);
                break;
            case LibC.S_IFBLK:
                await HeaderAsync(archiveName, st, '4', 0, null, ct).ConfigureAwait(false);
                break;
            case LibC.S_IFIFO:
                await HeaderAsync(archiveName, st, '6', 0, null, ct).ConfigureAwait(false);
                break;
        }
    }

    public async Task FinishAsync(CancellationToken ct)
    {
        Array.Clear(block);
        await output.WriteAsync(block, ct).ConfigureAwait(false);
        await output.WriteAsync(block, ct).ConfigureAwait(false);
    }

    private async Task HeaderAsync(byte[] name, StatInfo st, char type, long size, byte[]? link, CancellationToken ct)
    {
        var pax = new List<(string Key, byte[] Value)>();
        var binary = !IsUtf8(name) || (link is not null && !IsUtf8(link));
        if (name.Length > 99 || !IsAscii(name))
        {
            pax.Add(("path", name));
        }

        if (link is not null && (link.Length > 99 || !IsAscii(link)))
        {
            pax.Add(("linkpath", link));
        }

        if (size > 0x1FFFFFFFF)
        {
            pax.Add(("size", Ascii(size.ToString(CultureInfo.InvariantCulture))));
        }

        // ustar's 7 octal digits hold ids up to 2097151; larger ones (user namespaces, AD-mapped ids) go in pax.
        if (st.Uid > MaxUstarId)
        {
            pax.Add(("uid", Ascii(st.Uid.ToString(CultureInfo.InvariantCulture))));
        }

        if (st.Gid > MaxUstarId)
        {
            pax.Add(("gid", Ascii(st.Gid.ToString(CultureInfo.InvariantCulture))));
        }

        if (st.MTimeNsec != 0 || st.MTime < 0 || st.MTime > MaxUstarTime)
        {
            pax.Add(("mtime", Ascii($"{st.MTime}.{st.MTimeNsec:D9}")));
        }

        if (pax.Count > 0)
        {
            if (binary)
            {
                pax.Insert(0, ("hdrcharset", Ascii("BINARY")));
            }

            using var records = new MemoryStream();
            foreach (var (key, value) in pax)
            {
                var body = key.Length + value.Length + 3;
                var length = body + body.ToString(CultureInfo.InvariantCulture).Length;
                if (length.ToString(CultureInfo.InvariantCulture).Length != body.ToString(CultureInfo.InvariantCulture).Length)
                {
                    length++;
                }

                records.Write(Ascii($"{length} {key}="));
                records.Write(value);
                records.WriteByte((byte)'\n');
            }

            var data = records.ToArray();
            var paxName = Ascii("PaxHeaders/" + Encoding.ASCII.GetString(Clip(name, 80)).Replace('\0', '_'));
            FillHeader(paxName, 0x1A4, 0, 0, data.Length, Math.Clamp(st.MTime, 0, MaxUstarTime), 'x', null, 0, 0);
            await output.WriteAsync(block, ct).ConfigureAwait(false);
            await output.WriteAsync(data, ct).ConfigureAwait(false);
            await PadAsync(data.Length, ct).ConfigureAwait(false);
        }

        FillHeader(Clip(name, 99), st.Mode & 0xFFF, Math.Min(st.Uid, MaxUstarId), Math.Min(st.Gid, MaxUstarId), Math.Min(size, 0x1FFFFFFFF),
            Math.Clamp(st.MTime, 0, MaxUstarTime), type,
            link is null ? null : Clip(link, 99), st.RdevMajor, st.RdevMinor);
        await output.WriteAsync(block, ct).ConfigureAwait(false);
    }

    private void FillHeader(byte[] name, uint mode, uint uid, uint gid, long size, long mtime, char type, byte[]? link, uint major, uint minor)
    {
        Array.Clear(block);
        name.CopyTo(block, 0);
        Octal(100, 8, mode);
        Octal(108, 8, uid);
        Octal(116, 8, gid);
        Octal(124, 12, size);
        Octal(136, 12, mtime);
        block[156] = (byte)type;
        link?.CopyTo(block, 157);
        "ustar\0"u8.CopyTo(block.AsSpan(257));
        "00"u8.CopyTo(block.AsSpan(263));
        if (type is '3' or '4')
        {
            Octal(329, 8, major);
            Octal(337, 8, minor);
        }

        block.AsSpan(148, 8).Fill((byte)' ');
        var sum = 0;
        foreach (var b in block)
        {
            sum += b;
        }

        Octal(148, 7, sum);
    }

    private void Octal(int offset, int width, long value)
    {
        var text = Convert.ToString(value, 8).PadLeft(width - 1, '0');
        Encoding.ASCII.GetBytes(text[^(width - 1)..]).CopyTo(block, offset);
        block[offset + width - 1] = 0;
    }

    private async Task PadAsync(long size, CancellationToken ct)
    {
        var pad = (int)((512 - size % 512) % 512);
        if (pad > 0)
        {
            Array.Clear(block);
            await output.WriteAsync(block.AsMemory(0, pad), ct).ConfigureAwait(false);
        }
    }

    private static byte[] Clip(byte[] value, int max) => value.Length <= max ? value : value[..max];

    private static byte[] Ascii(string s) => Encoding.ASCII.GetBytes(s);

    private static byte[] Concat(byte[] a, ReadOnlySpan<byte> b) => [.. a, .. b];

    private static bool IsAscii(byte[] b) => Ascii7(b);

    private static bool Ascii7(ReadOnlySpan<byte> b) => b.IndexOfAnyInRange((byte)0x80, (byte)0xFF) < 0;

    private static bool IsUtf8(byte[] b) => System.Text.Unicode.Utf8.IsValid(b);
}
