using System.Buffers.Binary;
using System.Diagnostics;

namespace RestoreFs.Pxar.Tests;

/// <summary>Damaged variants of the vectors: each gives a PxarException naming the archive and an offset, quickly, never a hang or another exception.</summary>
public class HostileTests
{
    private const long RootGoodbye = 751; // v1 item map
    private const long DirGoodbye = 462;

    /// <summary>Opens and walks the whole archive; returns null when it is valid, the PxarException otherwise (any other exception fails).</summary>
    private static PxarException? TryWalk(byte[] meta, byte[]? payload = null)
    {
        var sw = Stopwatch.StartNew();
        try
        {
            using var a = PxarArchive.Open(new MemoryPxarSource(meta, "hostile.pxar"), payload is null ? null : new MemoryPxarSource(payload, "hostile.ppxar"));
            Vectors.Walk(a);
            foreach (var name in new[] { "a.txt", "dev", "dir", "fifo", "hl", "link", "dir/b" })
            {
                a.LookupPath(name);
            }

            return null;
        }
        catch (PxarException e)
        {
            Assert.True(e.Archive is "hostile.pxar" or "hostile.ppxar", e.Message);
            Assert.Contains("offset", e.Message);
            return e;
        }
        finally
        {
            Assert.True(sw.ElapsedMilliseconds < 2000, $"took {sw.ElapsedMilliseconds} ms");
        }
    }

    private static byte[] V1() => Vectors.Bytes("v1.pxar");

    [Fact]
    public void TruncationAtEvery64thByteIsRefused()
    {
        foreach (var (meta, payload) in new[] { ("v1.pxar", (string?)null), ("v2.mpxar", "v2.ppxar") })
        {
            var bytes = Vectors.Bytes(meta);
            var pbytes = payload is null ? null : Vectors.Bytes(payload);
            for (var length = 0; length < bytes.Length; length += 64)
            {
                Assert.NotNull(TryWalk(bytes[..length], pbytes));
            }

            for (var length = 0; pbytes is not null && length < pbytes.Length; length += 8)
            {
                Assert.NotNull(TryWalk(bytes, pbytes[..length]));
            }

            Assert.Null(TryWalk(bytes, pbytes));
        }
    }

    [Fact]
    public void EveryFlippedGoodbyeOffsetIsRefused()
    {
        var original = V1();
        // The root table's six records and the dir table's one; the tails too.
        var recordStarts = Enumerable.Range(0, 7).Select(i => RootGoodbye + 16 + 24 * i).Append(DirGoodbye + 16).Append(DirGoodbye + 16 + 24);
        foreach (var record in recordStarts)
        {
            var back = BinaryPrimitives.ReadUInt64LittleEndian(original.AsSpan((int)record + 8));
            foreach (var wrong in new ulong[] { 0UL, 1, back - 1, back + 1, back - 16, back + 16, back ^ 0x80, (ulong)original.Length, 1UL << 40, ulong.MaxValue })
            {
                var bytes = V1();
                BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan((int)record + 8), wrong);
                Assert.NotNull(TryWalk(bytes));
            }
        }
    }

    [Fact]
    public void SwappedGoodbyeOffsetsGiveAHashMismatch()
    {
        var bytes = V1();
        var first = (int)RootGoodbye + 16 + 8;
        var second = first + 24;
        var a = bytes.AsSpan(first, 8).ToArray();
        bytes.AsSpan(second, 8).CopyTo(bytes.AsSpan(first, 8));
        a.CopyTo(bytes.AsSpan(second, 8));
        var e = TryWalk(bytes);
        Assert.NotNull(e);
        Assert.Contains("hash mismatch", e.Message);
    }

    [Fact]
    public void AChangedNameHashIsRefused()
    {
        var bytes = V1();
        bytes[(int)RootGoodbye + 16] ^= 1; // hash of "dev"
        var e = TryWalk(bytes);
        Assert.NotNull(e);
        Assert.Contains("hash mismatch", e.Message);

        // A renamed child (same length) no longer matches its record either.
        bytes = V1();
        bytes[56 + 16] = (byte)'b'; // "a.txt" → "b.txt"
        e = TryWalk(bytes);
        Assert.NotNull(e);
        Assert.Contains("hash mismatch", e.Message);
    }

    [Fact]
    public void ASubdirectoryExtentCoveringItsParentIsRefused()
    {
        var bytes = V1();
        // dir's record: make its size reach past the root's goodbye table (a loop back into the parent).
        var dirRecord = (int)RootGoodbye + 16 + 24;
        BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(dirRecord + 16), (ulong)(bytes.Length - 295));
        Assert.Contains("outside its parent", TryWalk(bytes)!.Message);
    }

    [Fact]
    public void HardLinksThatPointForwardToThemselvesOrToALinkAreRefused()
    {
        const int hardlinkContent = 622 + 16;
        foreach (var back in new ulong[] { 0, 603 + 1, ulong.MaxValue, 547 - 1, 547 + 22 })
        {
            var bytes = V1();
            BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(hardlinkContent), back);
            Assert.NotNull(TryWalk(bytes));
        }
    }

    [Fact]
    public void AbsurdItemSizesAreRefused()
    {
        foreach (var at in new[] { 0, 56, 78, 134, 165, 187, 263, 445, 462, 622, 729, 751 })
        {
            foreach (var size in new ulong[] { 0UL, 15, 1UL << 40, ulong.MaxValue })
            {
                var bytes = V1();
                BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(at + 8), size);
                Assert.NotNull(TryWalk(bytes));
            }
        }
    }

    [Fact]
    public void APayloadStreamWithoutItsMarkersListsButEveryContentReadFails()
    {
        var meta = Vectors.Bytes("v2.mpxar");
        var good = Vectors.Bytes("v2.ppxar");
        foreach (var (at, marker) in new[] { (0, "PAYLOAD_START_MARKER"), (good.Length - PxarFormat.HeaderSize, "PAYLOAD_TAIL_MARKER") })
        {
            var payload = (byte[])good.Clone();
            payload[at] ^= 0x01;
            using var a = PxarArchive.Open(new MemoryPxarSource(meta, "hostile.mpxar"), new MemoryPxarSource(payload, "hostile.ppxar"));
            // Listing and looking up need only the metadata stream.
            Assert.Contains(a.List(a.Root), e => e.Name.AsSpan().SequenceEqual("a.txt"u8));
            var file = a.LookupPath("a.txt")!;
            Assert.True(file.ContentInPayloadStream);
            for (var attempt = 0; attempt < 2; attempt++) // not remembered as checked: every read reports it
            {
                var e = Assert.Throws<PxarException>(() => a.Read(file, 0, new byte[16]));
                Assert.Contains(marker, e.Message);
                Assert.Equal("hostile.ppxar", e.Archive);
            }
        }
    }

    [Fact]
    public void AWrongPayloadRefIsRefused()
    {
        var meta = Vectors.Bytes("v2.mpxar");
        var refType = BitConverter.GetBytes(PxarFormat.PayloadRef);
        var at = meta.AsSpan().IndexOf(refType);
        Assert.True(at > 0);
        foreach (var (offset, size) in new (ulong, ulong)[] { (16UL, 5UL), (17UL, 6UL), (38UL, 6UL), (0UL, 6UL), (16UL, ulong.MaxValue), (ulong.MaxValue, 1UL) })
        {
            var bytes = (byte[])meta.Clone();
            BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(at + 16), offset);
            BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(at + 24), size);
            Assert.Contains("PAYLOAD_REF", TryWalk(bytes, Vectors.Bytes("v2.ppxar"))!.Message);
        }
    }

    [Fact]
    public void EverySingleByteCorruptionEndsInAPxarExceptionOrAValidTree()
    {
        var sw = Stopwatch.StartNew();
        foreach (var (meta, payload) in new[] { ("v1.pxar", (string?)null), ("v2.mpxar", "v2.ppxar") })
        {
            var original = Vectors.Bytes(meta);
            var pbytes = payload is null ? null : Vectors.Bytes(payload);
            for (var i = 0; i < original.Length; i++)
            {
                foreach (var mask in new byte[] { 0x01, 0x80, 0xff })
                {
                    var bytes = (byte[])original.Clone();
                    bytes[i] ^= mask;
                    TryWalk(bytes, pbytes);
                }
            }
        }

        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(30), $"took {sw.Elapsed}");
    }
}
