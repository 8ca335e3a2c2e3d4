using System.Buffers.Binary;
using System.Text;

namespace RestoreFs.Nbd.Protocol;

/// <summary>A malformed option payload: a length field pointing past the data, a string over 4096 bytes, …</summary>
public sealed class NbdOptionFormatException(string message) : NbdException(message);

/// <summary>
/// Reads the fields of one option's payload with every length checked against what is left, so a length of
/// 0xFFFFFFFF (or any other lie) becomes an <see cref="NbdOptionFormatException"/> naming the field.
/// </summary>
public ref struct NbdOptionReader(ReadOnlySpan<byte> data)
{
    /// <summary>The protocol's bound for any string (export names, meta context queries).</summary>
    public const int MaxString = 4096;

    private readonly ReadOnlySpan<byte> data = data;
    private int position;

    public readonly int Remaining => data.Length - position;

    public uint ReadUInt32(string field)
    {
        Need(4, field);
        var value = BinaryPrimitives.ReadUInt32BigEndian(data[position..]);
        position += 4;
        return value;
    }

    public ushort ReadUInt16(string field)
    {
        Need(2, field);
        var value = BinaryPrimitives.ReadUInt16BigEndian(data[position..]);
        position += 2;
        return value;
    }

    /// <summary>A 32-bit length, then that many bytes of UTF-8.</summary>
    public string ReadString(string field)
    {
        var length = ReadUInt32(field + " length");
        if (length > MaxString)
        {
            throw new NbdOptionFormatException($"{field} length {length} is over the protocol's {MaxString} bytes");
        }

        if (length > (uint)Remaining)
        {
            throw new NbdOptionFormatException($"{field} length {length} is past the end of the option ({Remaining} bytes left)");
        }

        var text = Encoding.UTF8.GetString(data.Slice(position, (int)length));
        position += (int)length;
        return text;
    }

    /// <summary>A count of items of <paramref name="itemSize"/> bytes at least each; checked against what is left.</summary>
    public uint ReadCount(string field, int itemSize)
    {
        var count = ReadUInt32(field);
        if ((ulong)count * (ulong)itemSize > (ulong)Remaining)
        {
            throw new NbdOptionFormatException($"{field} {count} does not fit in the {Remaining} bytes left");
        }

        return count;
    }

    public readonly void End(string option)
    {
        if (Remaining != 0)
        {
            throw new NbdOptionFormatException($"{Remaining} trailing bytes after the {option} request");
        }
    }

    private readonly void Need(int count, string field)
    {
        if (Remaining < count)
        {
            throw new NbdOptionFormatException($"{field} is missing ({Remaining} of {count} bytes)");
        }
    }
}
