using System.Buffers.Binary;
using System.Numerics;

namespace RestoreFs.RestoreDaemon.Disks;

/// <summary>A run of a thin device: virtual blocks [Virtual, Virtual+Count) are data blocks [Data, Data+Count) of the pool.</summary>
internal readonly record struct ThinRun(long Virtual, long Data, long Count);

/// <summary>The pool metadata cannot be used (bad checksum, wrong magic, a node out of place, a loop).</summary>
internal sealed class ThinMetadataException(string message) : IOException(message);

/// <summary>
/// Reads a device-mapper thin pool's metadata (the kernel's persistent-data format: 4 KiB blocks, a superblock in
/// block 0, a two-level B-tree from device id to virtual block to data block) without the kernel: only reads, every
/// block's checksum and self-address checked, depth and node count bounded.
/// </summary>
internal sealed class ThinMetadata
{
    public const int BlockSize = 4096;
    private const ulong Magic = 27022010;
    private const uint SuperblockXor = 160774;
    private const uint NodeXor = 121107;
    private const uint InternalNode = 1;
    private const uint LeafNode = 2;
    private const int MaxDepth = 16;

    private readonly Func<long, byte[]> readBlock;
    private readonly long blockCount;

    /// <param name="readBlock">Reads metadata block N (4096 bytes); throws IOException when it cannot.</param>
    /// <param name="metadataBytes">Size of the metadata device (blocks past it are refused).</param>
    private ThinMetadata(Func<long, byte[]> readBlock, long metadataBytes)
    {
        this.readBlock = readBlock;
        blockCount = metadataBytes / BlockSize;
    }

    /// <summary>Data block size in 512-byte sectors.</summary>
    public uint DataBlockSectors { get; private init; }

    public ulong TransactionId { get; private init; }

    public ulong DataMappingRoot { get; private init; }

    public static ThinMetadata Open(Func<long, byte[]> readBlock, long metadataBytes)
    {
        if (metadataBytes < BlockSize)
        {
            throw new ThinMetadataException($"the pool metadata device has {metadataBytes} bytes, less than one block");
        }

        var reader = new ThinMetadata(readBlock, metadataBytes);
        var sb = reader.Block(0);
        if (BinaryPrimitives.ReadUInt64LittleEndian(sb.AsSpan(32)) != Magic)
        {
            throw new ThinMetadataException("the pool metadata has no thin superblock (wrong magic at byte 32 of block 0)");
        }

        Verify(sb, 0, SuperblockXor, "the pool metadata superblock");
        var incompat = BinaryPrimitives.ReadUInt32LittleEndian(sb.AsSpan(360));
        if ((incompat & ~1u) != 0)
        {
            throw new ThinMetadataException($"the pool metadata uses incompatible features 0x{incompat:x} this reader does not know");
        }

        var dataBlock = BinaryPrimitives.ReadUInt32LittleEndian(sb.AsSpan(336));
        if (dataBlock < 128 || dataBlock > 2097152 || dataBlock % 8 != 0)
        {
            throw new ThinMetadataException($"the pool metadata names a data block size of {dataBlock} sectors (64 KiB … 1 GiB in 4 KiB steps)");
        }

        return new ThinMetadata(readBlock, metadataBytes)
        {
            DataBlockSectors = dataBlock,
            TransactionId = BinaryPrimitives.ReadUInt64LittleEndian(sb.AsSpan(48)),
            DataMappingRoot = BinaryPrimitives.ReadUInt64LittleEndian(sb.AsSpan(320)),
        };
    }

    /// <summary>The runs of thin device <paramref name="deviceId"/>, sorted by virtual block; null when the pool has no such device.
    /// Mappings at or past <paramref name="virtualBlocks"/> are left out.</summary>
    public List<ThinRun>? Runs(ulong deviceId, long virtualBlocks)
    {
        ulong? root = null;
        var visited = 0L;
        Walk(DataMappingRoot, 0, ref visited, (key, value) =>
        {
            if (key == deviceId)
            {
                root = value;
            }
        });
        if (root is not { } deviceRoot)
        {
            return null;
        }

        var runs = new List<ThinRun>();
        visited = 0;
        var last = -1L;
        Walk(deviceRoot, 0, ref visited, (key, value) =>
        {
            if (key >= (ulong)virtualBlocks)
            {
                return;
            }

            var v = (long)key;
            if (v <= last)
            {
                throw new ThinMetadataException($"thin device {deviceId}: virtual block {v} out of order in the mapping tree");
            }

            last = v;
            var data = (long)(value >> 24);
            if (runs.Count > 0 && runs[^1] is var r && r.Virtual + r.Count == v && r.Data + r.Count == data)
            {
                runs[^1] = r with { Count = r.Count + 1 };
            }
            else
            {
                runs.Add(new ThinRun(v, data, 1));
            }
        });
        return runs;
    }

    private void Walk(ulong block, int depth, ref long visited, Action<ulong, ulong> leaf)
    {
        if (depth > MaxDepth || ++visited > blockCount)
        {
            throw new ThinMetadataException($"the pool metadata's mapping tree is deeper than {MaxDepth} levels or loops (block {block})");
        }

        if (block >= (ulong)blockCount)
        {
            throw new ThinMetadataException($"the pool metadata points at block {block}, past its {blockCount} blocks");
        }

        var node = Block((long)block);
        Verify(node, (long)block, NodeXor, $"pool metadata B-tree node {block}");
        var flags = BinaryPrimitives.ReadUInt32LittleEndian(node.AsSpan(4));
        var entries = BinaryPrimitives.ReadUInt32LittleEndian(node.AsSpan(16));
        var max = BinaryPrimitives.ReadUInt32LittleEndian(node.AsSpan(20));
        var valueSize = BinaryPrimitives.ReadUInt32LittleEndian(node.AsSpan(24));
        if (valueSize != 8 || entries > max || 32 + (long)max * (8 + valueSize) > BlockSize || (flags & (InternalNode | LeafNode)) is 0 or 3)
        {
            throw new ThinMetadataException($"pool metadata B-tree node {block} is malformed (flags {flags}, {entries}/{max} entries of {valueSize} bytes)");
        }

        var values = 32 + (int)max * 8;
        for (var i = 0; i < (int)entries; i++)
        {
            var key = BinaryPrimitives.ReadUInt64LittleEndian(node.AsSpan(32 + (i * 8)));
            var value = BinaryPrimitives.ReadUInt64LittleEndian(node.AsSpan(values + (i * 8)));
            if ((flags & InternalNode) != 0)
            {
                Walk(value, depth + 1, ref visited, leaf);
            }
            else
            {
                leaf(key, value);
            }
        }
    }

    private byte[] Block(long n)
    {
        var b = readBlock(n);
        return b.Length == BlockSize ? b : throw new ThinMetadataException($"pool metadata block {n}: read {b.Length} bytes");
    }

    private static void Verify(byte[] block, long n, uint xor, string what)
    {
        var stored = BinaryPrimitives.ReadUInt32LittleEndian(block);
        var computed = Crc32CRaw(block.AsSpan(4)) ^ xor;
        if (stored != computed)
        {
            throw new ThinMetadataException($"{what}: checksum 0x{stored:x8}, computed 0x{computed:x8}");
        }

        var self = BinaryPrimitives.ReadUInt64LittleEndian(block.AsSpan(8));
        if (self != (ulong)n)
        {
            throw new ThinMetadataException($"{what}: says it is block {self}, read from block {n}");
        }
    }

    /// <summary>CRC-32C seeded with all ones and without the final inversion (as the kernel's crc32c() returns it).</summary>
    internal static uint Crc32CRaw(ReadOnlySpan<byte> data)
    {
        var crc = uint.MaxValue;
        var i = 0;
        for (; i + 8 <= data.Length; i += 8)
        {
            crc = BitOperations.Crc32C(crc, BinaryPrimitives.ReadUInt64LittleEndian(data[i..]));
        }

        for (; i < data.Length; i++)
        {
            crc = BitOperations.Crc32C(crc, data[i]);
        }

        return crc;
    }
}
