using System.Text;

namespace RestoreFs.Pxar.Tests;

/// <summary>The encoder against the real encoder's vectors, byte for byte, and the goodbye tree permutation.</summary>
public class EncoderTests
{
    /// <summary>Re-encodes a decoded archive through the encoder's public API (entries in stream order).</summary>
    internal static void Copy(PxarArchive source, PxarEncoder encoder, PxarEntry dir, Dictionary<long, PxarLinkTarget> firstNames)
    {
        foreach (var child in source.List(dir))
        {
            if (child.IsHardlink)
            {
                var target = firstNames[child.HardlinkTargetOffset!.Value];
                encoder.AddHardlink(child.Name, target with { Path = child.HardlinkPath! });
                continue;
            }

            var meta = child.ToMetadata();
            switch (child.Kind)
            {
                case PxarEntryKind.Directory:
                    encoder.BeginDirectory(child.Name, meta);
                    Copy(source, encoder, child, firstNames);
                    encoder.EndDirectory();
                    break;
                case PxarEntryKind.File:
                    using (var content = source.OpenRead(child))
                    {
                        firstNames[child.FilenameOffset] = encoder.AddFile(child.Name, meta, child.Size, content);
                    }

                    break;
                case PxarEntryKind.Symlink:
                    encoder.AddSymlink(child.Name, meta, child.SymlinkTarget);
                    break;
                case PxarEntryKind.CharDevice or PxarEntryKind.BlockDevice:
                    encoder.AddDevice(child.Name, meta, child.DeviceMajor, child.DeviceMinor);
                    break;
                default:
                    encoder.AddSpecial(child.Name, meta);
                    break;
            }
        }
    }

    [Fact]
    public void TheEncoderReproducesTheV1VectorByteForByte()
    {
        using var source = Vectors.V1();
        var output = new MemoryStream();
        var encoder = new PxarEncoder(output, source.Root.ToMetadata());
        Copy(source, encoder, source.Root, []);
        encoder.Finish();
        Assert.Equal(Convert.ToHexStringLower(Vectors.Bytes("v1.pxar")), Convert.ToHexStringLower(output.ToArray()));
    }

    [Fact]
    public void TheEncoderReproducesTheSplitV2VectorByteForByte()
    {
        foreach (var make in new Func<PxarArchive>[] { Vectors.V1, Vectors.V2 })
        {
            using var source = make();
            var meta = new MemoryStream();
            var payload = new MemoryStream();
            var encoder = new PxarEncoder(meta, source.Root.ToMetadata(), payload, "{\"exclude-patterns\":\"/tmp\\n\"}"u8.ToArray());
            Copy(source, encoder, source.Root, []);
            encoder.Finish();
            Assert.Equal(Convert.ToHexStringLower(Vectors.Bytes("v2.mpxar")), Convert.ToHexStringLower(meta.ToArray()));
            Assert.Equal(Convert.ToHexStringLower(Vectors.Bytes("v2.ppxar")), Convert.ToHexStringLower(payload.ToArray()));
        }
    }

    [Fact]
    public void GoodbyeTreePermutationMatchesTheCratesTable()
    {
        int[][] expected =
        [
            [0], [1, 0], [1, 0, 2], [2, 1, 3, 0], [3, 1, 4, 0, 2], [3, 1, 5, 0, 2, 4], [3, 1, 5, 0, 2, 4, 6],
            [4, 2, 6, 1, 3, 5, 7, 0], [5, 3, 7, 1, 4, 6, 8, 0, 2], [6, 3, 8, 1, 5, 7, 9, 0, 2, 4],
        ];
        for (var n = 1; n <= expected.Length; n++)
        {
            var tree = new int[n];
            PxarEncoder.BuildTree(Enumerable.Range(0, n).ToArray(), 0, n, tree, 0);
            Assert.Equal(expected[n - 1], tree);
        }
    }

    [Fact]
    public void NamesOutOfOrderAreRefused()
    {
        var encoder = new PxarEncoder(new MemoryStream(), new PxarMetadata { Mode = 0x41ed });
        encoder.AddSpecial("b"u8, new PxarMetadata { Mode = 0x11a4 });
        Assert.Throws<ArgumentException>(() => encoder.AddSpecial("a"u8, new PxarMetadata { Mode = 0x11a4 }));
        Assert.Throws<ArgumentException>(() => encoder.AddSpecial("b"u8, new PxarMetadata { Mode = 0x11a4 }));
        Assert.Throws<ArgumentException>(() => encoder.AddSpecial(".."u8, new PxarMetadata { Mode = 0x11a4 }));
        Assert.Throws<ArgumentException>(() => encoder.AddSpecial("c/d"u8, new PxarMetadata { Mode = 0x11a4 }));
    }

    [Fact]
    public void ALargeDirectoryWithCollidingLookupsRoundTrips()
    {
        var output = new MemoryStream();
        var encoder = new PxarEncoder(output, new PxarMetadata { Mode = 0x41ed });
        var names = Enumerable.Range(0, 5000).Select(i => Encoding.UTF8.GetBytes($"f{i:D5}")).ToArray();
        foreach (var name in names)
        {
            encoder.AddFile(name, new PxarMetadata { Mode = 0x81a4, MtimeSeconds = -1, MtimeNanos = 999_000_000 }, name);
        }

        encoder.Finish();
        // Small table cache so large tables are searched record by record from the source.
        using var a = PxarArchive.Open(new MemoryPxarSource(output.ToArray(), "big"), options: new PxarArchiveOptions(MaxCachedTableBytes: 1024));
        Assert.Equal(5000, a.List(a.Root).Count);
        foreach (var name in names)
        {
            var e = a.Lookup(a.Root, name)!;
            Assert.Equal(name, Vectors.ReadAll(a, e));
            Assert.Equal((-1L, 999_000_000u), (e.Stat.MtimeSeconds, e.Stat.MtimeNanos));
        }
    }
}
