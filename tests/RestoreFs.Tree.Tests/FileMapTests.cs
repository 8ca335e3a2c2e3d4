using RestoreFs.RestoreApi;
using RestoreFs.Tree.Files;

namespace RestoreFs.Tree.Tests;

/// <summary>File maps from the guest: the host's checks of their extents, and SEEK_DATA/SEEK_HOLE over them.</summary>
public sealed class FileMapTests
{
    private static readonly FileExtent[] Two = [new(4096, 1 << 20, 4096), new(8192, 2 << 20, 4096), new(65536, 3 << 20, 4096)];

    [Fact]
    public void Seek_follows_the_extents_and_the_end_is_a_hole()
    {
        var map = new FileMap("d.img.fidx", Two, 100_000);
        Assert.Equal(4096, map.Seek(0, data: true));
        Assert.Equal(0, map.Seek(0, data: false));
        Assert.Equal(12288, map.Seek(4096, data: false)); // two adjacent extents are one run of data
        Assert.Equal(9000, map.Seek(9000, data: true));
        Assert.Equal(65536, map.Seek(12288, data: true));
        Assert.Equal(69632, map.Seek(65536, data: false));
        Assert.Equal(-1, map.Seek(69632, data: true));
        Assert.Equal(70000, map.Seek(70000, data: false));
        Assert.Equal(-1, new FileMap("d", [], 10).Seek(0, data: true));
    }

    [Fact]
    public void Extents_are_checked_with_checked_arithmetic_against_file_image_and_volume()
    {
        Assert.Null(GuestAnswers.CheckExtents(Two, 100_000, 0, 4 << 20));
        Assert.NotNull(GuestAnswers.CheckExtents(Two, 69_000, 0, 4 << 20)); // past the file's size
        Assert.NotNull(GuestAnswers.CheckExtents(Two, 100_000, 0, 3 << 20)); // past the volume's end
        Assert.NotNull(GuestAnswers.CheckExtents(Two, 100_000, 2 << 20, 4 << 20)); // before the volume's start
        Assert.NotNull(GuestAnswers.CheckExtents([Two[1], Two[0]], 100_000, 0, 4 << 20)); // not sorted
        Assert.NotNull(GuestAnswers.CheckExtents([new(0, 0, 8192), new(4096, 8192, 4096)], 100_000, 0, 4 << 20)); // overlapping
        Assert.NotNull(GuestAnswers.CheckExtents([new(0, 0, 0)], 100_000, 0, 4 << 20)); // empty
        Assert.NotNull(GuestAnswers.CheckExtents([new(0, -4096, 4096)], 100_000, 0, 4 << 20)); // negative
        Assert.NotNull(GuestAnswers.CheckExtents([new(long.MaxValue - 10, 0, 4096)], long.MaxValue, 0, long.MaxValue)); // overflow
        Assert.NotNull(GuestAnswers.CheckExtents([new(0, long.MaxValue - 10, 4096)], long.MaxValue, 0, long.MaxValue)); // overflow
    }
}
