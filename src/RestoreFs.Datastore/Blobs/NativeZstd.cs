using System.Runtime.InteropServices;

namespace RestoreFs.Datastore;

/// <summary>
/// zstd through the system's libzstd (about three times faster here than the managed port): chunk decompression,
/// and compression for backups, when the library is present; ZstdSharp remains the fallback.
/// </summary>
internal static unsafe partial class NativeZstd
{
    private const string Library = "libzstd.so.1";
    private static readonly bool Loaded = NativeLibrary.TryLoad(Library, out _);
    private static readonly ThreadLocal<Context> Contexts = new(() => new Context());

    public static bool Available => Loaded;

    /// <summary>Decompresses every frame of <paramref name="source"/>; returns the byte count or throws with zstd's message.</summary>
    public static int Decompress(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        var context = Contexts.Value!;
        fixed (byte* src = source)
        fixed (byte* dst = destination)
        {
            var result = ZSTD_decompressDCtx(context.Handle, dst, (nuint)destination.Length, src, (nuint)source.Length);
            if (ZSTD_isError(result) != 0)
            {
                throw new InvalidDataException(Marshal.PtrToStringUTF8(ZSTD_getErrorName(result)) ?? "zstd error");
            }

            return (int)result;
        }
    }

    private static readonly ThreadLocal<CompressionContext> CompressionContexts = new(() => new CompressionContext());

    /// <summary>
    /// Compresses <paramref name="source"/> into one frame in <paramref name="destination"/> at <paramref name="level"/>
    /// (a context per thread, reused); returns the frame's length, or -1 when the frame does not fit (so a destination
    /// one byte shorter than the source asks "strictly smaller or nothing" without a second copy).
    /// </summary>
    public static int Compress(ReadOnlySpan<byte> source, Span<byte> destination, int level)
    {
        var context = CompressionContexts.Value!;
        fixed (byte* src = source)
        fixed (byte* dst = destination)
        {
            var result = ZSTD_compressCCtx(context.Handle, dst, (nuint)destination.Length, src, (nuint)source.Length, level);
            if (ZSTD_isError(result) != 0)
            {
                if (ZSTD_getErrorCode(result) == DestinationTooSmall)
                {
                    return -1;
                }

                throw new InvalidDataException(Marshal.PtrToStringUTF8(ZSTD_getErrorName(result)) ?? "zstd error");
            }

            return (int)result;
        }
    }

    private const int ResetSessionOnly = 1;
    private const int ResetSessionAndParameters = 3;
    private const int StableOutBuffer = 1001; // ZSTD_d_stableOutBuffer: decode straight into the caller's buffer

    private static readonly System.Collections.Concurrent.ConcurrentBag<Context> StableContexts = [];

    /// <summary>
    /// A frame decoded from input that arrives in pieces, straight into one fixed output buffer (no window copy:
    /// libzstd's stable-output mode). Not thread-safe; one frame per decoder.
    /// </summary>
    public sealed class Decoder : IDisposable
    {
        private readonly byte* output;
        private readonly int capacity;
        private Context? context;
        private nuint position;

        /// <param name="output">Pinned for the decoder's lifetime.</param>
        public Decoder(byte* output, int capacity)
        {
            this.output = output;
            this.capacity = capacity;
            if (!StableContexts.TryTake(out context))
            {
                context = new Context();
                Check(ZSTD_DCtx_reset(context.Handle, ResetSessionAndParameters));
                ZSTD_DCtx_setParameter(context.Handle, StableOutBuffer, 1); // an older libzstd ignores it: still correct
            }
            else
            {
                Check(ZSTD_DCtx_reset(context.Handle, ResetSessionOnly));
            }
        }

        /// <summary>Bytes written to the output so far.</summary>
        public int Written => (int)position;

        /// <summary>True once the frame ended (with nothing after it).</summary>
        public bool Ended { get; private set; }

        /// <summary>Decodes the next piece of the frame; throws with zstd's message when the frame is damaged, ends
        /// before the input does, or grows past the output.</summary>
        public void Feed(ReadOnlySpan<byte> piece)
        {
            if (piece.IsEmpty)
            {
                return;
            }

            if (Ended)
            {
                throw new InvalidDataException("data after the end of the zstd frame");
            }

            fixed (byte* src = piece)
            {
                var input = new InBuffer { Source = src, Size = (nuint)piece.Length };
                var outBuffer = new OutBuffer { Destination = output, Size = (nuint)capacity, Position = position };
                while (input.Position < input.Size)
                {
                    var consumed = input.Position;
                    var before = outBuffer.Position;
                    var result = ZSTD_decompressStream(context!.Handle, &outBuffer, &input);
                    position = outBuffer.Position;
                    if (ZSTD_isError(result) != 0 && ZSTD_getErrorCode(result) == DestinationTooSmall)
                    {
                        // The stable output cannot take the next block: name what that means here.
                        throw new InvalidDataException($"frame decompresses to more than {capacity} bytes");
                    }

                    Check(result);
                    if (result == 0)
                    {
                        Ended = true;
                        if (input.Position != input.Size)
                        {
                            throw new InvalidDataException("data after the end of the zstd frame");
                        }

                        return;
                    }

                    if (input.Position == consumed && outBuffer.Position == before)
                    {
                        throw new InvalidDataException(outBuffer.Position == (nuint)capacity
                            ? $"frame decompresses to more than {capacity} bytes"
                            : "zstd decoder made no progress");
                    }
                }
            }
        }

        public void Dispose()
        {
            if (context is not null)
            {
                StableContexts.Add(context);
                context = null;
            }
        }
    }

    private static nuint Check(nuint result)
    {
        if (ZSTD_isError(result) != 0)
        {
            throw new InvalidDataException(Marshal.PtrToStringUTF8(ZSTD_getErrorName(result)) ?? "zstd error");
        }

        return result;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct InBuffer
    {
        public byte* Source;
        public nuint Size;
        public nuint Position;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct OutBuffer
    {
        public byte* Destination;
        public nuint Size;
        public nuint Position;
    }

    [LibraryImport(Library)]
    private static partial nuint ZSTD_decompressStream(nint context, OutBuffer* output, InBuffer* input);

    [LibraryImport(Library)]
    private static partial nuint ZSTD_DCtx_reset(nint context, int directive);

    [LibraryImport(Library)]
    private static partial nuint ZSTD_DCtx_setParameter(nint context, int parameter, int value);

    [LibraryImport(Library)]
    private static partial nint ZSTD_createDCtx();

    [LibraryImport(Library)]
    private static partial nuint ZSTD_freeDCtx(nint context);

    [LibraryImport(Library)]
    private static partial nuint ZSTD_decompressDCtx(nint context, byte* destination, nuint capacity, byte* source, nuint size);

    [LibraryImport(Library)]
    private static partial uint ZSTD_isError(nuint code);

    [LibraryImport(Library)]
    private static partial nint ZSTD_getErrorName(nuint code);

    private const int DestinationTooSmall = 70; // ZSTD_error_dstSize_tooSmall

    [LibraryImport(Library)]
    private static partial int ZSTD_getErrorCode(nuint code);

    [LibraryImport(Library)]
    private static partial nint ZSTD_createCCtx();

    [LibraryImport(Library)]
    private static partial nuint ZSTD_freeCCtx(nint context);

    [LibraryImport(Library)]
    private static partial nuint ZSTD_compressCCtx(nint context, byte* destination, nuint capacity, byte* source, nuint size, int level);

    private sealed class CompressionContext
    {
        public CompressionContext()
        {
            Handle = ZSTD_createCCtx();
        }

        ~CompressionContext() => ZSTD_freeCCtx(Handle);

        public nint Handle { get; }
    }

    private sealed class Context
    {
        public Context()
        {
            Handle = ZSTD_createDCtx();
        }

        ~Context() => ZSTD_freeDCtx(Handle);

        public nint Handle { get; }
    }
}
