using RestoreFs.Datastore;

namespace RestoreFs.Datastore.Tests;

public sealed class GranularArrayPoolTests
{
    [Fact]
    public void Arrays_are_sized_to_the_request_rounded_to_64_KiB_not_to_a_power_of_two()
    {
        var pool = new GranularArrayPool(4);
        Assert.Equal((4 << 20) + (64 << 10), pool.Rent((4 << 20) + 12).Length);
        Assert.Equal(64 << 10, pool.Rent(1).Length);
        Assert.Equal(64 << 10, pool.Rent(0).Length);
    }

    [Fact]
    public void The_smallest_kept_array_that_fits_is_handed_out()
    {
        var pool = new GranularArrayPool(4);
        var small = pool.Rent(100_000);
        var large = pool.Rent(3_000_000);
        pool.Return(large);
        pool.Return(small);
        Assert.Same(small, pool.Rent(90_000));
        Assert.Same(large, pool.Rent(90_000));
        Assert.Equal(0, pool.FreeCount);
    }

    [Fact]
    public void At_most_keep_arrays_stay_and_the_larger_ones_win()
    {
        var pool = new GranularArrayPool(2);
        var a = pool.Rent(1 << 20);
        var b = pool.Rent(1 << 20);
        var big = pool.Rent(4 << 20);
        var tiny = pool.Rent(1);
        pool.Return(a);
        pool.Return(b);
        pool.Return(tiny); // full, and smaller than every kept array: dropped
        Assert.Equal(2, pool.FreeCount);
        pool.Return(big); // full: replaces a smaller one
        Assert.Equal(2, pool.FreeCount);
        Assert.Same(big, pool.Rent(2 << 20));
        pool.Clear();
        Assert.Equal(0, pool.FreeCount);
    }
}
