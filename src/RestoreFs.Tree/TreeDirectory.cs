using System.Collections.Concurrent;
using System.Text;
using RestoreFs.Fuse;

namespace RestoreFs.Tree;

/// <summary>
/// A directory of the tree. Children are created on demand and kept, so a name keeps its inode for the life of
/// the mount. Immutable directories (inside a snapshot) list once; changing ones (root, groups) re-list every
/// time and forget children that disappeared.
/// </summary>
public abstract class TreeDirectory : FuseNode, IFuseDirectory
{
    private static readonly TimeSpan Long = TimeSpan.FromHours(1);
    private static readonly TimeSpan Short = TimeSpan.FromSeconds(1);

    private readonly ConcurrentDictionary<string, FuseNode> children = new(StringComparer.Ordinal);
    private volatile IReadOnlyList<string>? immutableNames;
    private bool unsettledListingGiven;

    protected TreeDirectory(TreeContext context, bool immutable)
    {
        Context = context;
        Immutable = immutable;
        Ino = context.Inodes.Next();
    }

    /// <summary>The root directory uses inode 1.</summary>
    protected TreeDirectory(TreeContext context, bool immutable, ulong ino)
    {
        Context = context;
        Immutable = immutable;
        Ino = ino;
    }

    public TreeContext Context { get; }

    public ulong Ino { get; }

    public bool Immutable { get; }

    public override TimeSpan EntryTimeout => Immutable ? Long : Short;

    public override TimeSpan AttrTimeout => Immutable ? Long : Short;

    public TimeSpan NegativeTimeout => ContentsSettled ? Long : Short;

    /// <summary>
    /// Asked at each open of the directory: true lets the kernel keep the listing it has. Once after a listing was
    /// given while the names were not settled, it says false, so that open replaces the listing the kernel kept.
    /// </summary>
    public bool ListingIsImmutable
    {
        get
        {
            if (!ContentsSettled)
            {
                return false;
            }

            return !Interlocked.Exchange(ref unsettledListingGiven, false);
        }
    }

    /// <summary>
    /// Whether the names of an immutable directory are final. A directory whose names come from something that could
    /// not be read yet (a snapshot's manifest while the store is out of reach) says no: its listing and its negative
    /// lookups are then neither kept here nor by the kernel, so it fills in once the store answers again.
    /// </summary>
    protected virtual bool ContentsSettled => Immutable;

    protected virtual DateTimeOffset MTime => Context.MountTime;

    public override FuseAttributes GetAttributes() =>
        new(Ino, 0, Modes.Directory, Context.Options.Uid, Context.Options.Gid, MTime, NLink: 2);

    /// <summary>The names this directory has right now.</summary>
    protected abstract IReadOnlyList<string> ListNames();

    /// <summary>Makes the node for <paramref name="name"/>, or null when there is no such entry.</summary>
    protected abstract FuseNode? CreateChild(string name);

    /// <summary>A child as a listing gives it: with its node (READDIRPLUS then hands the kernel its attributes), or
    /// name-only where the attributes would cost a read.</summary>
    protected virtual FuseDirectoryEntry ListEntry(byte[] name, FuseNode node) => new(name, node);

    /// <summary>For changing directories: whether a cached child still exists (default: re-list).</summary>
    protected virtual bool StillExists(string name) => ListNames().Contains(name, StringComparer.Ordinal);

    public ValueTask<FuseNode?> LookupAsync(ReadOnlyMemory<byte> name, FuseRequestContext ctx, CancellationToken ct)
    {
        if (!TryDecode(name.Span, out var text))
        {
            return ValueTask.FromResult<FuseNode?>(null);
        }

        return ValueTask.FromResult(Lookup(text));
    }

    public FuseNode? Lookup(string name)
    {
        if (children.TryGetValue(name, out var node))
        {
            if (Immutable || StillExists(name))
            {
                return node;
            }

            children.TryRemove(name, out _);
            return null;
        }

        if (Immutable && !ImmutableNames().Contains(name, StringComparer.Ordinal))
        {
            return null;
        }

        var created = CreateChild(name);
        return created is null ? null : children.GetOrAdd(name, created);
    }

    public ValueTask<IReadOnlyList<FuseDirectoryEntry>> ListAsync(FuseRequestContext ctx, CancellationToken ct)
    {
        IReadOnlyList<string> names;
        if (Immutable)
        {
            names = ImmutableNames();
        }
        else
        {
            names = ListNames();
            foreach (var gone in children.Keys.Except(names, StringComparer.Ordinal).ToList())
            {
                children.TryRemove(gone, out _);
            }
        }

        var entries = new List<FuseDirectoryEntry>(names.Count);
        foreach (var name in names)
        {
            var node = children.TryGetValue(name, out var existing) ? existing : CreateChild(name);
            if (node is null)
            {
                continue;
            }

            node = children.GetOrAdd(name, node);
            entries.Add(ListEntry(Encoding.UTF8.GetBytes(name), node));
        }

        return ValueTask.FromResult<IReadOnlyList<FuseDirectoryEntry>>(entries);
    }

    /// <summary>The names of an immutable directory: listed once, and kept once they are settled.</summary>
    private IReadOnlyList<string> ImmutableNames()
    {
        if (immutableNames is { } kept)
        {
            return kept;
        }

        var names = ListNames();
        if (ContentsSettled)
        {
            immutableNames = names;
        }
        else
        {
            Volatile.Write(ref unsettledListingGiven, true);
        }

        return names;
    }

    private static bool TryDecode(ReadOnlySpan<byte> bytes, out string text)
    {
        try
        {
            text = new UTF8Encoding(false, true).GetString(bytes);
            return true;
        }
        catch (DecoderFallbackException)
        {
            text = string.Empty;
            return false;
        }
    }
}
