using System.Buffers.Binary;

namespace RestoreFs.Pxar;

/// <summary>What an encoder stores of an entry besides its name and contents.</summary>
public sealed class PxarMetadata
{
    /// <summary>Full st_mode: file type bits and permissions.</summary>
    public required uint Mode { get; init; }

    public uint Uid { get; init; }

    public uint Gid { get; init; }

    public long MtimeSeconds { get; init; }

    public uint MtimeNanos { get; init; }

    public ulong Flags { get; init; }

    /// <summary>XATTR items, written in this order (PBS sorts them by name).</summary>
    public IReadOnlyList<PxarXattr> Xattrs { get; init; } = [];

    public PxarAcl? Acl { get; init; }

    public byte[]? Fcaps { get; init; }

    public ulong? QuotaProjectId { get; init; }
}

/// <summary>Copies of decoded metadata, for re-encoding an archive.</summary>
public static class PxarMetadataExtensions
{
    public static PxarMetadata ToMetadata(this PxarEntry entry) => new()
    {
        Mode = entry.Mode,
        Uid = entry.Stat.Uid,
        Gid = entry.Stat.Gid,
        MtimeSeconds = entry.Stat.MtimeSeconds,
        MtimeNanos = entry.Stat.MtimeNanos,
        Flags = entry.Stat.Flags,
        Xattrs = entry.Xattrs,
        Acl = entry.Acl.IsEmpty ? null : entry.Acl,
        Fcaps = entry.Fcaps,
        QuotaProjectId = entry.QuotaProjectId,
    };
}

/// <summary>Where a file's first name was written: what a later HARDLINK item refers to.</summary>
public readonly record struct PxarLinkTarget(long FilenameOffset, byte[] Path);

/// <summary>
/// Writes a pxar archive as a forward-only stream (no seeking back, so it can feed a chunker directly): format v1 into
/// one stream, or v2 split into a metadata and a payload stream. Children of a directory must be added in the raw
/// byte order of their names (the order PBS writes, which the goodbye tables and readers rely on).
/// </summary>
public sealed class PxarEncoder
{
    private readonly CountingOutput meta;
    private readonly CountingOutput? payload;
    private readonly Stack<OpenDirectory> dirs = new();
    private bool finished;

    private sealed class OpenDirectory(long filenameOffset, long entryOffset)
    {
        public long FilenameOffset { get; } = filenameOffset;

        public long EntryOffset { get; } = entryOffset;

        public List<(ulong Hash, long Offset, long Size)> Records { get; } = [];

        public byte[]? LastName { get; set; }

        public byte[] Name { get; init; } = [];
    }

    /// <summary>
    /// Starts an archive with its root directory. With <paramref name="payloadOutput"/> the archive is split (v2):
    /// FORMAT_VERSION 2, the optional <paramref name="prelude"/>, and file contents go to the payload stream.
    /// </summary>
    public PxarEncoder(Stream output, PxarMetadata root, Stream? payloadOutput = null, byte[]? prelude = null)
    {
        meta = new CountingOutput(output);
        if (payloadOutput is not null)
        {
            payload = new CountingOutput(payloadOutput);
            Span<byte> version = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(version, 2);
            WriteItem(meta, PxarFormat.FormatVersion, version);
            if (prelude is not null)
            {
                WriteItem(meta, PxarFormat.Prelude, prelude);
            }

            WriteHeader(payload, PxarFormat.PayloadStartMarker, 0);
        }
        else if (prelude is not null)
        {
            throw new ArgumentException("a PRELUDE exists only in split (v2) archives", nameof(prelude));
        }

        RequireType(root, 0x4000, "root");
        var entryOffset = meta.Position;
        WriteEntry(root);
        dirs.Push(new OpenDirectory(-1, entryOffset));
    }

    public bool IsSplit => payload is not null;

    /// <summary>Bytes written to the (metadata) stream so far.</summary>
    public long Position => meta.Position;

    /// <summary>A regular file: exactly <paramref name="size"/> bytes are copied from <paramref name="content"/>.</summary>
    public PxarLinkTarget AddFile(ReadOnlySpan<byte> name, PxarMetadata metadata, long size, Stream content, ReadOnlySpan<byte> pathInArchive = default)
    {
        RequireType(metadata, 0x8000, "file");
        var start = BeginChild(name);
        WriteEntry(metadata);
        long extra = 0;
        if (payload is null)
        {
            WriteHeader(meta, PxarFormat.Payload, size);
            Copy(content, meta, size);
        }
        else
        {
            var at = payload.Position;
            WriteHeader(payload, PxarFormat.Payload, size);
            Copy(content, payload, size);
            Span<byte> reference = stackalloc byte[16];
            BinaryPrimitives.WriteUInt64LittleEndian(reference, (ulong)at);
            BinaryPrimitives.WriteUInt64LittleEndian(reference[8..], (ulong)size);
            WriteItem(meta, PxarFormat.PayloadRef, reference);
            // As the reference encoder does: a new file's goodbye size also counts its payload bytes.
            extra = size;
        }

        EndChild(name, start, extra);
        return new PxarLinkTarget(start, pathInArchive.ToArray());
    }

    public PxarLinkTarget AddFile(ReadOnlySpan<byte> name, PxarMetadata metadata, byte[] content, ReadOnlySpan<byte> pathInArchive = default) =>
        AddFile(name, metadata, content.Length, new MemoryStream(content), pathInArchive);

    public void AddSymlink(ReadOnlySpan<byte> name, PxarMetadata metadata, ReadOnlySpan<byte> target)
    {
        RequireType(metadata, 0xA000, "symlink");
        if (target.Length == 0 || target.Length > 4096 || target.IndexOf((byte)0) >= 0)
        {
            throw new ArgumentException("symlink target must be 1…4096 bytes without NUL", nameof(target));
        }

        var start = BeginChild(name);
        WriteEntry(metadata);
        WriteItem(meta, PxarFormat.Symlink, [.. target, 0]);
        EndChild(name, start, 0);
    }

    public void AddDevice(ReadOnlySpan<byte> name, PxarMetadata metadata, ulong major, ulong minor)
    {
        var type = metadata.Mode & 0xF000;
        if (type is not (0x2000 or 0x6000))
        {
            throw new ArgumentException($"mode {Convert.ToString(metadata.Mode, 8)} is not a device", nameof(metadata));
        }

        var start = BeginChild(name);
        WriteEntry(metadata);
        Span<byte> dev = stackalloc byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(dev, major);
        BinaryPrimitives.WriteUInt64LittleEndian(dev[8..], minor);
        WriteItem(meta, PxarFormat.Device, dev);
        EndChild(name, start, 0);
    }

    /// <summary>A fifo or a socket (nothing but the entry).</summary>
    public void AddSpecial(ReadOnlySpan<byte> name, PxarMetadata metadata)
    {
        var type = metadata.Mode & 0xF000;
        if (type is not (0x1000 or 0xC000))
        {
            throw new ArgumentException($"mode {Convert.ToString(metadata.Mode, 8)} is not a fifo or socket", nameof(metadata));
        }

        var start = BeginChild(name);
        WriteEntry(metadata);
        EndChild(name, start, 0);
    }

    /// <summary>A further name of a file added before (<paramref name="target"/> from its <see cref="AddFile(ReadOnlySpan{byte}, PxarMetadata, long, Stream, ReadOnlySpan{byte})"/>).</summary>
    public void AddHardlink(ReadOnlySpan<byte> name, PxarLinkTarget target)
    {
        var start = BeginChild(name);
        if (target.FilenameOffset < 0 || target.FilenameOffset >= start)
        {
            throw new ArgumentException("hard link target must be an earlier file of this archive", nameof(target));
        }

        var content = new byte[8 + target.Path.Length + 1];
        BinaryPrimitives.WriteUInt64LittleEndian(content, (ulong)(start - target.FilenameOffset));
        target.Path.CopyTo(content, 8);
        WriteItem(meta, PxarFormat.Hardlink, content);
        EndChild(name, start, 0);
    }

    public void BeginDirectory(ReadOnlySpan<byte> name, PxarMetadata metadata)
    {
        RequireType(metadata, 0x4000, "directory");
        var start = BeginChild(name);
        var entryOffset = meta.Position;
        WriteEntry(metadata);
        dirs.Push(new OpenDirectory(start, entryOffset) { Name = name.ToArray() });
    }

    public void EndDirectory()
    {
        if (dirs.Count <= 1)
        {
            throw new InvalidOperationException("no open subdirectory (the root is closed by Finish)");
        }

        var dir = dirs.Pop();
        WriteGoodbye(dir);
        var parent = dirs.Peek();
        parent.Records.Add((PxarFormat.HashName(dir.Name), dir.FilenameOffset, meta.Position - dir.FilenameOffset));
    }

    /// <summary>Closes the root directory (and the payload stream of a split archive). Subdirectories must be closed.</summary>
    public void Finish()
    {
        if (finished)
        {
            return;
        }

        if (dirs.Count != 1)
        {
            throw new InvalidOperationException($"{dirs.Count - 1} directories are still open");
        }

        WriteGoodbye(dirs.Pop());
        if (payload is not null)
        {
            WriteHeader(payload, PxarFormat.PayloadTailMarker, 0);
            payload.Flush();
        }

        meta.Flush();
        finished = true;
    }

    // ---------------------------------------------------------------------------------------------------------------

    private long BeginChild(ReadOnlySpan<byte> name)
    {
        if (finished || dirs.Count == 0)
        {
            throw new InvalidOperationException("the archive is finished");
        }

        if (name.Length == 0 || name.Length > 4096 || name.IndexOf((byte)0) >= 0 || name.IndexOf((byte)'/') >= 0 ||
            name.SequenceEqual("."u8) || name.SequenceEqual(".."u8))
        {
            throw new ArgumentException($"invalid file name '{System.Text.Encoding.UTF8.GetString(name)}'", nameof(name));
        }

        var dir = dirs.Peek();
        if (dir.LastName is { } last && name.SequenceCompareTo(last) <= 0)
        {
            throw new ArgumentException($"names must be added in byte order ('{System.Text.Encoding.UTF8.GetString(name)}' after '{System.Text.Encoding.UTF8.GetString(last)}')",
                nameof(name));
        }

        dir.LastName = name.ToArray();
        var start = meta.Position;
        WriteItem(meta, PxarFormat.Filename, [.. name, 0]);
        return start;
    }

    private void EndChild(ReadOnlySpan<byte> name, long start, long extra)
    {
        dirs.Peek().Records.Add((PxarFormat.HashName(name), start, meta.Position - start + extra));
    }

    private void WriteGoodbye(OpenDirectory dir)
    {
        var goodbyeOffset = meta.Position;
        var sorted = dir.Records.OrderBy(r => r.Hash).ToArray();
        var tree = new (ulong Hash, long Offset, long Size)[sorted.Length];
        BuildTree(sorted, 0, sorted.Length, tree, 0);
        var size = PxarFormat.HeaderSize + PxarFormat.GoodbyeRecordSize * (tree.Length + 1);
        WriteHeader(meta, PxarFormat.Goodbye, size - PxarFormat.HeaderSize);
        Span<byte> record = stackalloc byte[24];
        foreach (var (hash, offset, length) in tree)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(record, hash);
            BinaryPrimitives.WriteUInt64LittleEndian(record[8..], (ulong)(goodbyeOffset - offset));
            BinaryPrimitives.WriteUInt64LittleEndian(record[16..], (ulong)length);
            meta.Write(record);
        }

        BinaryPrimitives.WriteUInt64LittleEndian(record, PxarFormat.GoodbyeTailMarker);
        BinaryPrimitives.WriteUInt64LittleEndian(record[8..], (ulong)(goodbyeOffset - (dir.FilenameOffset < 0 ? 0 : dir.EntryOffset)));
        BinaryPrimitives.WriteUInt64LittleEndian(record[16..], (ulong)size);
        meta.Write(record);
    }

    /// <summary>Permutes a sorted range into an implicit binary search tree (children of i at 2i+1, 2i+2), left-complete as casync does.</summary>
    public static void BuildTree<T>(T[] sorted, int from, int count, T[] tree, int index)
    {
        if (count == 0)
        {
            return;
        }

        var e = System.Numerics.BitOperations.Log2((uint)count);
        var p = 1 << e;
        var t = p + p / 2 - 1;
        var m = count > t ? p - 1 : p - 1 - (t - count);
        tree[index] = sorted[from + m];
        BuildTree(sorted, from, m, tree, 2 * index + 1);
        BuildTree(sorted, from + m + 1, count - m - 1, tree, 2 * index + 2);
    }

    private void WriteEntry(PxarMetadata m)
    {
        Span<byte> stat = stackalloc byte[PxarFormat.StatSize];
        stat.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(stat, m.Mode);
        BinaryPrimitives.WriteUInt64LittleEndian(stat[8..], m.Flags);
        BinaryPrimitives.WriteUInt32LittleEndian(stat[16..], m.Uid);
        BinaryPrimitives.WriteUInt32LittleEndian(stat[20..], m.Gid);
        BinaryPrimitives.WriteInt64LittleEndian(stat[24..], m.MtimeSeconds);
        BinaryPrimitives.WriteUInt32LittleEndian(stat[32..], m.MtimeNanos);
        WriteItem(meta, PxarFormat.Entry, stat);
        foreach (var x in m.Xattrs)
        {
            WriteItem(meta, PxarFormat.Xattr, [.. x.Name, 0, .. x.Value]);
        }

        if (m.Acl is { } acl)
        {
            Span<byte> two = stackalloc byte[16];
            foreach (var (type, list) in new[] { (PxarFormat.AclUser, acl.Users), (PxarFormat.AclGroup, acl.Groups) })
            {
                foreach (var e in list.OrderBy(e => e.Id).ThenBy(e => e.Permissions))
                {
                    BinaryPrimitives.WriteUInt64LittleEndian(two, e.Id);
                    BinaryPrimitives.WriteUInt64LittleEndian(two[8..], e.Permissions);
                    WriteItem(meta, type, two);
                }
            }

            if (acl.GroupObj is { } groupObj)
            {
                BinaryPrimitives.WriteUInt64LittleEndian(two, groupObj);
                WriteItem(meta, PxarFormat.AclGroupObj, two[..8]);
            }

            if (acl.Default is { } d)
            {
                Span<byte> four = stackalloc byte[32];
                BinaryPrimitives.WriteUInt64LittleEndian(four, d.UserObj);
                BinaryPrimitives.WriteUInt64LittleEndian(four[8..], d.GroupObj);
                BinaryPrimitives.WriteUInt64LittleEndian(four[16..], d.Other);
                BinaryPrimitives.WriteUInt64LittleEndian(four[24..], d.Mask);
                WriteItem(meta, PxarFormat.AclDefault, four);
            }

            foreach (var (type, list) in new[] { (PxarFormat.AclDefaultUser, acl.DefaultUsers), (PxarFormat.AclDefaultGroup, acl.DefaultGroups) })
            {
                foreach (var e in list.OrderBy(e => e.Id).ThenBy(e => e.Permissions))
                {
                    BinaryPrimitives.WriteUInt64LittleEndian(two, e.Id);
                    BinaryPrimitives.WriteUInt64LittleEndian(two[8..], e.Permissions);
                    WriteItem(meta, type, two);
                }
            }
        }

        if (m.Fcaps is not null)
        {
            WriteItem(meta, PxarFormat.Fcaps, m.Fcaps);
        }

        if (m.QuotaProjectId is { } projid)
        {
            Span<byte> q = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(q, projid);
            WriteItem(meta, PxarFormat.QuotaProjectId, q);
        }
    }

    private static void RequireType(PxarMetadata m, uint type, string what)
    {
        if ((m.Mode & 0xF000) != type)
        {
            throw new ArgumentException($"mode {Convert.ToString(m.Mode, 8)} is not a {what}'s");
        }
    }

    private static void WriteItem(CountingOutput output, ulong type, ReadOnlySpan<byte> content)
    {
        WriteHeader(output, type, content.Length);
        output.Write(content);
    }

    private static void WriteHeader(CountingOutput output, ulong type, long contentLength)
    {
        Span<byte> header = stackalloc byte[PxarFormat.HeaderSize];
        BinaryPrimitives.WriteUInt64LittleEndian(header, type);
        BinaryPrimitives.WriteUInt64LittleEndian(header[8..], (ulong)(contentLength + PxarFormat.HeaderSize));
        output.Write(header);
    }

    private static void Copy(Stream content, CountingOutput output, long size)
    {
        var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(1024 * 1024);
        try
        {
            var left = size;
            while (left > 0)
            {
                var n = content.Read(buffer, 0, (int)Math.Min(buffer.Length, left));
                if (n <= 0)
                {
                    throw new IOException($"file ended {left} bytes before its size {size} (changed while being archived?)");
                }

                output.Write(buffer.AsSpan(0, n));
                left -= n;
            }
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private sealed class CountingOutput(Stream stream)
    {
        public long Position { get; private set; }

        public void Write(ReadOnlySpan<byte> data)
        {
            stream.Write(data);
            Position += data.Length;
        }

        public void Flush() => stream.Flush();
    }
}
