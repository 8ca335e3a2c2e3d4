using System.Buffers.Binary;

namespace RestoreFs.Fuzz;

/// <summary>
/// Deterministic byte mutations from a seeded <see cref="Random"/>: bit flips, byte insertion and deletion,
/// interesting integers written over length-like fields (either endianness), splices of two corpus inputs,
/// truncations and duplicated ranges. The same seed gives the same sequence of inputs.
/// </summary>
public sealed class Mutator(int seed, int maxLength = 256 * 1024)
{
    private static readonly long[] Interesting =
    [
        0, 1, -1, 2, 7, 8, 12, 16, 31, 32, 40, 44, 63, 64, 127, 128, 255, 256, 4095, 4096, 4097, 65535, 65536,
        0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff, 0x100000000, long.MaxValue, long.MinValue,
        128L << 20, (128L << 20) + 1, 1L << 40,
    ];

    private readonly Random random = new(seed);

    public byte[] Mutate(IReadOnlyList<byte[]> corpus)
    {
        var data = corpus.Count == 0 ? [] : corpus[random.Next(corpus.Count)];
        var steps = 1 + random.Next(random.Next(2) == 0 ? 2 : 8);
        for (var i = 0; i < steps; i++)
        {
            data = Step(data, corpus);
        }

        return data.Length > maxLength ? data[..maxLength] : data;
    }

    private byte[] Step(byte[] data, IReadOnlyList<byte[]> corpus)
    {
        var list = new List<byte>(data);
        switch (random.Next(data.Length == 0 ? 1 : 9))
        {
            case 0: // insert random bytes
            {
                var at = random.Next(list.Count + 1);
                var bytes = new byte[1 + random.Next(random.Next(2) == 0 ? 4 : 64)];
                random.NextBytes(bytes);
                list.InsertRange(at, bytes);
                return [.. list];
            }

            case 1: // flip one bit
            {
                var copy = (byte[])data.Clone();
                copy[random.Next(copy.Length)] ^= (byte)(1 << random.Next(8));
                return copy;
            }

            case 2: // set a random byte
            {
                var copy = (byte[])data.Clone();
                copy[random.Next(copy.Length)] = (byte)random.Next(256);
                return copy;
            }

            case 3: // delete a range
            {
                var at = random.Next(list.Count);
                list.RemoveRange(at, Math.Min(list.Count - at, 1 + random.Next(random.Next(2) == 0 ? 4 : 256)));
                return [.. list];
            }

            case 4: // truncate
                return data[..random.Next(data.Length)];
            case 5: // interesting integer over a field, 1/2/4/8 bytes, little or big endian
            {
                var copy = (byte[])data.Clone();
                var width = 1 << random.Next(4);
                if (copy.Length < width)
                {
                    return copy;
                }

                var at = random.Next(copy.Length - width + 1);
                var value = Interesting[random.Next(Interesting.Length)];
                if (random.Next(4) == 0)
                {
                    value += random.Next(-3, 4);
                }

                Span<byte> bytes = stackalloc byte[8];
                if (random.Next(2) == 0)
                {
                    BinaryPrimitives.WriteInt64LittleEndian(bytes, value);
                    bytes[..width].CopyTo(copy.AsSpan(at));
                }
                else
                {
                    BinaryPrimitives.WriteInt64BigEndian(bytes, value);
                    bytes[(8 - width)..].CopyTo(copy.AsSpan(at));
                }

                return copy;
            }

            case 6: // splice with another corpus input
            {
                var other = corpus[random.Next(corpus.Count)];
                var cut = random.Next(data.Length + 1);
                var from = random.Next(other.Length + 1);
                return [.. data.AsSpan(0, cut), .. other.AsSpan(from)];
            }

            case 7: // duplicate a range in place
            {
                var at = random.Next(data.Length);
                var length = Math.Min(data.Length - at, 1 + random.Next(64));
                list.InsertRange(random.Next(list.Count + 1), data.AsSpan(at, length).ToArray());
                return [.. list];
            }

            default: // ASCII digit or JSON-ish token in text formats
            {
                var tokens = new[] { "0", "-1", "1e999", "\"", "{", "}", "[", "]", ",", ":", "null", "\r\n", "\n", " ", "\\u0000", "18446744073709551616", "%", "%zz", "\0" };
                var token = System.Text.Encoding.ASCII.GetBytes(tokens[random.Next(tokens.Length)]);
                list.InsertRange(random.Next(list.Count + 1), token);
                return [.. list];
            }
        }
    }
}
