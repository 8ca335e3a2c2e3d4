using RestoreFs.Datastore;

namespace RestoreFs.Tree;

/// <summary>What a mount of a datastore is configured with.</summary>
public sealed record TreeOptions
{
    /// <summary>The key for encrypted snapshots; null lists them but refuses reads with EACCES.</summary>
    public CryptConfig? Key { get; init; }

    /// <summary>Owner shown on every node (the mounting user).</summary>
    public uint Uid { get; init; }

    public uint Gid { get; init; }

    /// <summary>Decoded-chunk cache of the mount, shared by all open images (one budget, however many snapshots are browsed).</summary>
    public long ImageCacheBytes { get; init; } = 64L * 1024 * 1024;

    public int ReadAheadChunks { get; init; } = 4;

    /// <summary>Content of files/ held ahead of reads (small files inline with listings, read-ahead blocks of files
    /// read through the restore VM), all snapshots together.</summary>
    public long FilesCacheBytes { get; init; } = 32L * 1024 * 1024;

    /// <summary>How long a files/ listing that holds a volume which could not be mounted is kept before it is asked for
    /// again (the restore VM tries such a mount again after as long: what failed may have been the store, for a moment).</summary>
    public TimeSpan FailedMountRelist { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>The datastore's base directory.</summary>
    public required string StorePath { get; init; }

    /// <summary>Directory for sockets and state (NBD socket, VM map).</summary>
    public required string RuntimeDirectory { get; init; }

    /// <summary>Where the mount lives; companion <c>.img.dev</c> attaches loop devices over files below it.</summary>
    public required string MountPoint { get; init; }
}
