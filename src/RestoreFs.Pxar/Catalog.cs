using System.Buffers.Binary;

namespace RestoreFs.Pxar;

public enum PxarCatalogEntryType : byte
{
    Directory = (byte)'d',
    File = (byte)'f',
    Symlink = (byte)'l',
    Hardlink = (byte)'h',
    BlockDevice = (byte)'b',
    CharDevice = (byte)'c',
    Fifo = (byte)'p',
    Socket = (byte)'s',
}

/// <summary>One catalog entry: type, name, and for files size and mtime seconds, for directories the block offset.</summary>
public sealed record PxarCatalogEntry(PxarCatalogEntryType Type, byte[] Name, long Size = 0, long MtimeSeconds = 0, long ChildBlockOffset = -1)
{
    public string NameText => System.Text.Encoding.UTF8.GetString(Name);
}

/// <summary>Catalog varints: 7 bits a byte, least significant first; negative values end with a high-bit group and a 00 byte.</summary>
public static class CatalogVarint
{
    public static void Write(Stream output, ulong value)
    {
        Span<byte> buffer = stackalloc byte[10];
        var n = 0;
        while (value >= 0x80)
        {
            buffer[n++] = (byte)(value | 0x80);
            value >>= 7;
        }

        buffer[n++] = (byte)value;
        output.Write(buffer[..n]);
    }

    public static void WriteSigned(Stream output, long value)
    {
        if (value >= 0)
        {
            Write(output, (ulong)value);
            return;
        }

        var magnitude = value == long.MinValue ? 1UL << 63 : (ulong)-value;
        Span<byte> buffer = stackalloc byte[11];
        var n = 0;
        while (magnitude >= 0x80)
        {
            buffer[n++] = (byte)(magnitude | 0x80);
            magnitude >>= 7;
        }

        buffer[n++] = (byte)(magnitude | 0x80);
        buffer[n++] = 0;
        output.Write(buffer[..n]);
    }

    /// <summary>Decodes an unsigned varint at <paramref name="pos"/> of <paramref name="data"/>; null when malformed or cut.</summary>
    public static ulong? Read(ReadOnlySpan<byte> data, ref int pos)
    {
        ulong value = 0;
        for (var i = 0; i < 10; i++)
        {
            if (pos >= data.Length)
            {
                return null;
            }

            var b = data[pos++];
            value |= (ulong)(b & 0x7f) << (7 * i);
            if ((b & 0x80) == 0)
            {
                return value;
            }
        }

        return null;
    }

    public static long? ReadSigned(ReadOnlySpan<byte> data, ref int pos)
    {
        ulong value = 0;
        for (var i = 0; i < 11; i++)
        {
            if (pos >= data.Length)
            {
                return null;
            }

            var b = data[pos++];
            if (b == 0 && i > 0)
            {
                return -(long)value;
            }

            if (i < 10)
            {
                value |= (ulong)(b & 0x7f) << (7 * i);
            }

            if ((b & 0x80) == 0)
            {
                return (long)value;
            }
        }

        return null;
    }
}

/// <summary>Writes a catalog (<c>catalog.pcat1</c> stream): directory blocks as directories finish, the root block's offset last.</summary>
public sealed class PxarCatalogWriter
{
    public static readonly byte[] Magic = [0x91, 0xfd, 0x60, 0xf9, 0xc4, 0x67, 0x58, 0xd5];

    private readonly Stream output;
    private readonly Stack<(byte[] Name, List<PxarCatalogEntry> Entries)> dirs = new();
    private long position;
    private bool finished;

    public PxarCatalogWriter(Stream output)
    {
        this.output = output;
        output.Write(Magic);
        position = Magic.Length;
        dirs.Push(([], []));
    }

    public void BeginDirectory(ReadOnlySpan<byte> name) => dirs.Push((name.ToArray(), []));

    public void EndDirectory()
    {
        if (dirs.Count <= 1)
        {
            throw new InvalidOperationException("no open catalog directory");
        }

        var (name, entries) = dirs.Pop();
        var offset = WriteBlock(entries);
        dirs.Peek().Entries.Add(new PxarCatalogEntry(PxarCatalogEntryType.Directory, name, ChildBlockOffset: offset));
    }

    public void AddFile(ReadOnlySpan<byte> name, long size, long mtimeSeconds) =>
        dirs.Peek().Entries.Add(new PxarCatalogEntry(PxarCatalogEntryType.File, name.ToArray(), size, mtimeSeconds));

    /// <summary>A symlink, hard link, device, fifo or socket (no further fields).</summary>
    public void AddEntry(PxarCatalogEntryType type, ReadOnlySpan<byte> name)
    {
        if (type is PxarCatalogEntryType.Directory or PxarCatalogEntryType.File)
        {
            throw new ArgumentException("use BeginDirectory/AddFile", nameof(type));
        }

        dirs.Peek().Entries.Add(new PxarCatalogEntry(type, name.ToArray()));
    }

    public void Finish()
    {
        if (finished)
        {
            return;
        }

        if (dirs.Count != 1)
        {
            throw new InvalidOperationException($"{dirs.Count - 1} catalog directories are still open");
        }

        var root = WriteBlock(dirs.Pop().Entries);
        Span<byte> tail = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(tail, (ulong)root);
        output.Write(tail);
        output.Flush();
        finished = true;
    }

    private long WriteBlock(List<PxarCatalogEntry> entries)
    {
        var start = position;
        var table = new MemoryStream();
        CatalogVarint.Write(table, (ulong)entries.Count);
        foreach (var e in entries)
        {
            table.WriteByte((byte)e.Type);
            CatalogVarint.Write(table, (ulong)e.Name.Length);
            table.Write(e.Name);
            if (e.Type == PxarCatalogEntryType.Directory)
            {
                CatalogVarint.Write(table, (ulong)(start - e.ChildBlockOffset));
            }
            else if (e.Type == PxarCatalogEntryType.File)
            {
                CatalogVarint.Write(table, (ulong)e.Size);
                CatalogVarint.WriteSigned(table, e.MtimeSeconds);
            }
        }

        var block = new MemoryStream();
        CatalogVarint.Write(block, (ulong)table.Length);
        table.WriteTo(block);
        block.WriteTo(output);
        position += block.Length;
        return start;
    }
}

/// <summary>Reads a catalog stream: the root block from the offset at its end, then any directory's block. Bounded and checked.</summary>
public sealed class PxarCatalog
{
    /// <summary>Largest directory block read (a directory of some hundred thousand entries).</summary>
    public const int MaxBlockBytes = 64 * 1024 * 1024;

    private readonly IPxarSource source;

    public PxarCatalog(IPxarSource source)
    {
        this.source = source;
        Span<byte> head = stackalloc byte[8];
        if (source.Length < 16 || source.Read(0, head) != 8 || !head.SequenceEqual(PxarCatalogWriter.Magic))
        {
            throw new PxarException("not a catalog (magic or size)", source.Name, 0);
        }

        if (source.Read(source.Length - 8, head) != 8)
        {
            throw new PxarException("catalog is truncated", source.Name, source.Length - 8);
        }

        var root = BinaryPrimitives.ReadUInt64LittleEndian(head);
        if (root < 8 || root >= (ulong)source.Length - 8)
        {
            throw new PxarException($"catalog root block offset {root} is outside the catalog", source.Name, source.Length - 8);
        }

        RootOffset = (long)root;
    }

    public long RootOffset { get; }

    /// <summary>The catalog's name in errors (its index file).</summary>
    public string Name => source.Name;

    public IReadOnlyList<PxarCatalogEntry> Root => ReadBlock(RootOffset);

    /// <summary>The block of an archive's root directory: the root block's directory entry named after the archive's
    /// index file (<c>root.pxar.didx</c>); null when the catalog does not list it.</summary>
    public long? ArchiveBlock(string indexFile)
    {
        var name = System.Text.Encoding.UTF8.GetBytes(indexFile);
        return Root.FirstOrDefault(e => e.Type == PxarCatalogEntryType.Directory && e.Name.AsSpan().SequenceEqual(name))?.ChildBlockOffset;
    }

    /// <summary>The entries of the directory block at <paramref name="offset"/>; child blocks lie strictly before it.</summary>
    public IReadOnlyList<PxarCatalogEntry> ReadBlock(long offset)
    {
        var end = source.Length - 8;
        if (offset < 8 || offset >= end)
        {
            throw new PxarException("catalog block offset outside the catalog", source.Name, offset);
        }

        Span<byte> head = stackalloc byte[10];
        var got = source.Read(offset, head[..(int)Math.Min(10, end - offset)]);
        var pos = 0;
        var tableLength = CatalogVarint.Read(head[..got], ref pos);
        if (tableLength is null || tableLength > (ulong)(end - offset - pos) || tableLength > MaxBlockBytes)
        {
            throw new PxarException($"catalog block length {tableLength?.ToString() ?? "(malformed)"} does not fit", source.Name, offset);
        }

        var table = new byte[(int)tableLength];
        if (source.Read(offset + pos, table) != table.Length)
        {
            throw new PxarException("catalog is truncated", source.Name, offset + pos);
        }

        var at = 0;
        var count = CatalogVarint.Read(table, ref at);
        if (count is null || count > (ulong)table.Length)
        {
            throw new PxarException("catalog block entry count does not fit", source.Name, offset);
        }

        var entries = new List<PxarCatalogEntry>((int)count);
        for (ulong i = 0; i < count; i++)
        {
            if (at >= table.Length)
            {
                throw new PxarException("catalog block ends inside its entries", source.Name, offset);
            }

            var type = (PxarCatalogEntryType)table[at++];
            var nameLength = CatalogVarint.Read(table, ref at);
            if (nameLength is null or 0 || nameLength > (ulong)(table.Length - at))
            {
                throw new PxarException("catalog entry name does not fit", source.Name, offset + pos + at);
            }

            var name = table.AsSpan(at, (int)nameLength).ToArray();
            at += (int)nameLength;
            switch (type)
            {
                case PxarCatalogEntryType.Directory:
                {
                    var back = CatalogVarint.Read(table, ref at);
                    if (back is null or 0 || back > (ulong)(offset - 8))
                    {
                        throw new PxarException("catalog directory entry points outside the catalog (or forward)", source.Name, offset + pos + at);
                    }

                    entries.Add(new PxarCatalogEntry(type, name, ChildBlockOffset: offset - (long)back));
                    break;
                }

                case PxarCatalogEntryType.File:
                {
                    var size = CatalogVarint.Read(table, ref at);
                    var mtime = CatalogVarint.ReadSigned(table, ref at);
                    if (size is null || size > long.MaxValue || mtime is null)
                    {
                        throw new PxarException("catalog file entry is malformed", source.Name, offset + pos + at);
                    }

                    entries.Add(new PxarCatalogEntry(type, name, (long)size, mtime.Value));
                    break;
                }

                case PxarCatalogEntryType.Symlink or PxarCatalogEntryType.Hardlink or PxarCatalogEntryType.BlockDevice
                    or PxarCatalogEntryType.CharDevice or PxarCatalogEntryType.Fifo or PxarCatalogEntryType.Socket:
                    entries.Add(new PxarCatalogEntry(type, name));
                    break;
                default:
                    throw new PxarException($"unknown catalog entry type 0x{(byte)type:x2}", source.Name, offset + pos + at - 1);
            }
        }

        return entries;
    }
}
