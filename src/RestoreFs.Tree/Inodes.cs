namespace RestoreFs.Tree;

/// <summary>
/// Allocates inode numbers for the mounted tree. Numbers are never derived from hashes (collisions would make
/// tools see false hard links) and never reused within a mount. The root is 1.
/// </summary>
public sealed class Inodes
{
    private long next = 1;

    public ulong Next() => (ulong)Interlocked.Increment(ref next);
}
