using RestoreFs.Fuse.Nodes;

namespace RestoreFs.Fuse.Tests;

/// <summary>Node ids and lookup counts, kept on the nodes themselves: one id per node while the kernel holds it.</summary>
public sealed class NodeTableTests
{
    [Fact]
    public void A_node_keeps_its_id_until_every_lookup_is_forgotten_then_gets_a_new_one()
    {
        var root = new MemDir(1);
        var file = new MemFile(2, "x"u8.ToArray());
        var table = new NodeTable(root);

        var id = table.Lookup(file);
        Assert.NotEqual(1UL, id);
        Assert.Equal(id, table.Lookup(file));
        Assert.Same(file, table.Get(id));
        Assert.Equal(id, table.IdOf(file));
        Assert.Equal(2, table.Count);

        table.Forget(id, 1);
        Assert.Same(file, table.Get(id)); // one lookup is left
        table.Forget(id, 1);
        Assert.Null(table.Get(id));
        Assert.Null(table.IdOf(file));
        Assert.Equal(1, table.Count);

        var again = table.Lookup(file);
        Assert.NotEqual(id, again); // ids are never reused within a mount
        table.Forget(1, 5); // the root is never forgotten
        Assert.Same(root, table.Get(1));
    }

    [Fact]
    public void A_tree_mounted_again_gets_fresh_ids_not_the_ones_of_the_earlier_mount()
    {
        var root = new MemDir(1);
        var a = new MemFile(2, "a"u8.ToArray());
        var b = new MemFile(3, "b"u8.ToArray());
        var first = new NodeTable(root);
        first.Lookup(a);
        first.Lookup(b);

        // The earlier mount ended without forgetting its nodes; the new table must not take their ids as its own.
        var second = new NodeTable(root);
        Assert.Null(second.IdOf(b));
        var bSecond = second.Lookup(b); // takes the id a had in the first table
        Assert.Equal(first.IdOf(a), bSecond);
        var aSecond = second.Lookup(a); // a still carries that id from the first mount: it must get one of its own
        Assert.NotEqual(bSecond, aSecond);
        Assert.Same(a, second.Get(aSecond));
        Assert.Same(b, second.Get(bSecond));
        Assert.Equal(3, second.Count);
    }
}
