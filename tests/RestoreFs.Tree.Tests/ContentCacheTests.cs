using RestoreFs.Tree.Files;

namespace RestoreFs.Tree.Tests;

/// <summary>The bounded cache behind files/ read-ahead and inline small files.</summary>
public sealed class ContentCacheTests
{
    private static ContentKey K(string name) => ContentKey.BlockAt("vm", System.Text.Encoding.UTF8.GetBytes(name), 0);

    [Fact]
    public void Least_recently_used_goes_first_and_the_bound_holds()
    {
        var cache = new ContentCache(1000);
        cache.Put(K("a"), new byte[200]);
        cache.Put(K("b"), new byte[200]);
        cache.Put(K("c"), new byte[200]);
        Assert.NotNull(cache.Get(K("a"))); // a is now the most recent
        cache.Put(K("d"), new byte[200]);
        cache.Put(K("e"), new byte[200]); // 1000 bytes: still all fit
        cache.Put(K("f"), new byte[200]); // over: b, the least recently used, goes
        Assert.Null(cache.Get(K("b")));
        Assert.NotNull(cache.Get(K("a")));
        Assert.NotNull(cache.Get(K("f")));

        // An item larger than a quarter of the capacity is never cached (it would flush everything else).
        cache.Put(K("huge"), new byte[300]);
        Assert.Null(cache.Get(K("huge")));

        // Replacing a key does not count it twice.
        cache.Put(K("a"), new byte[10]);
        Assert.Equal(10, cache.Get(K("a"))!.Length);
    }

    [Fact]
    public void Keys_separate_vms_paths_kinds_and_offsets()
    {
        var a = "a/b"u8.ToArray();
        Assert.NotEqual(ContentKey.BlockAt("vm1", a, 0), ContentKey.BlockAt("vm2", a, 0));
        Assert.NotEqual(ContentKey.BlockAt("vm1", a, 0), ContentKey.WholeFile("vm1", a));
        Assert.NotEqual(ContentKey.BlockAt("vm1", a, 0), ContentKey.BlockAt("vm1", a, 2 << 20));
        Assert.NotEqual(ContentKey.BlockAt("vm1", a, 0), ContentKey.BlockAt("vm1", "a/c"u8.ToArray(), 0));
        Assert.Equal(ContentKey.BlockAt("vm1", a, 0), ContentKey.BlockAt("vm1", "a/b"u8.ToArray(), 0));
    }

    [Fact]
    public void A_stopped_vm_leaves_nothing_behind()
    {
        var cache = new ContentCache(1000);
        cache.Put(ContentKey.BlockAt("vm1", "x"u8.ToArray(), 0), new byte[100]);
        cache.Put(ContentKey.WholeFile("vm2", "x"u8.ToArray()), new byte[50]);
        cache.RemoveVm("vm1");
        Assert.Null(cache.Get(ContentKey.BlockAt("vm1", "x"u8.ToArray(), 0)));
        Assert.NotNull(cache.Get(ContentKey.WholeFile("vm2", "x"u8.ToArray())));
        Assert.Equal(50, cache.Bytes);
    }
}
