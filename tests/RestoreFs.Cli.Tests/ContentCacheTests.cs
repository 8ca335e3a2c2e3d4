using RestoreFs.Cli.Hosting;

namespace RestoreFs.Cli.Tests;

/// <summary>The bounded cache behind files/ read-ahead and inline small files.</summary>
public sealed class ContentCacheTests
{
    [Fact]
    public void Least_recently_used_goes_first_and_the_bound_holds()
    {
        var cache = new ContentCache(1000);
        cache.Put("a", new byte[200]);
        cache.Put("b", new byte[200]);
        cache.Put("c", new byte[200]);
        Assert.NotNull(cache.Get("a")); // a is now the most recent
        cache.Put("d", new byte[200]);
        cache.Put("e", new byte[200]); // 1000 bytes: still all fit
        cache.Put("f", new byte[200]); // over: b, the least recently used, goes
        Assert.Null(cache.Get("b"));
        Assert.NotNull(cache.Get("a"));
        Assert.NotNull(cache.Get("f"));

        // An item larger than a quarter of the capacity is never cached (it would flush everything else).
        cache.Put("huge", new byte[300]);
        Assert.Null(cache.Get("huge"));

        // Replacing a key does not count it twice.
        cache.Put("a", new byte[10]);
        Assert.Equal(10, cache.Get("a")!.Length);
    }

    [Fact]
    public void Keys_separate_vms_paths_and_offsets()
    {
        Assert.NotEqual(ContentCache.KeyOf("vm1", "a/b"u8.ToArray(), 0), ContentCache.KeyOf("vm2", "a/b"u8.ToArray(), 0));
        Assert.NotEqual(ContentCache.KeyOf("vm1", "a/b"u8.ToArray(), 0), ContentCache.KeyOf("vm1", "a/b"u8.ToArray(), -1));
        Assert.NotEqual(ContentCache.KeyOf("vm1", "a/b"u8.ToArray(), 0), ContentCache.KeyOf("vm1", "a/c"u8.ToArray(), 0));
    }
}
