using System.Runtime.InteropServices;

namespace RestoreFs.Datastore;

/// <summary>
/// One-shot zstd decompression through the system's libzstd (about three times faster here than the managed port),
/// used for chunks when the library is present; ZstdSharp remains the fallback.
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
