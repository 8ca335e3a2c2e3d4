using RestoreFs.Fuse;

namespace RestoreFs.Tree.Files;

/// <summary>
/// Inode identity of <c>files/</c> within one snapshot's VM (see <see cref="FilesNodeRegistry.Links"/>): names whose guest (volume, dev, ino) is the same are one node
/// — one FUSE inode with the guest's nlink, so <c>cp -a</c> and <c>rsync -H</c> keep hard links. Only entries with
/// more than one link are remembered (the table grows with hard-linked files, not with files). The device number is
/// part of the key, so btrfs subvolumes and snapshots (each with a device number of its own) never share an inode;
/// the volume path is part of it because device numbers of different volumes are only unique within one VM boot.
/// </summary>
public sealed class LinkTable
{
    private readonly Dictionary<(string Volume, uint Major, uint Minor, ulong Ino), FuseNode> nodes = [];

    public int Count
    {
        get
        {
            lock (nodes)
            {
                return nodes.Count;
            }
        }
    }

    /// <summary>The node of an inode: the one made for an earlier name of it, else <paramref name="create"/>'s.</summary>
    public FuseNode NodeFor(byte[] childPath, RemoteEntry entry, Func<FuseNode> create)
    {
        if (entry is not { Dev: { } dev, Ino: { } ino, NLink: > 1 } || entry.Type is 'd' or 'v')
        {
            return create();
        }

        var key = (VolumeKey(childPath), dev.Major, dev.Minor, ino);
        lock (nodes)
        {
            if (!nodes.TryGetValue(key, out var node))
            {
                node = create();
                nodes[key] = node;
            }

            return node;
        }
    }

    /// <summary>The volume a files/ path lies in (<c>disk/part/N</c>, <c>disk/md/NAME</c>, <c>disk/lvm/VG/LV</c>, <c>disk/raw</c>); the whole
    /// path above that level.</summary>
    public static string VolumeKey(byte[] path)
    {
        var length = VolumeLength(path);
        return Convert.ToBase64String(path.AsSpan(0, length < 0 ? path.Length : length));
    }

    /// <summary>How many bytes of a files/ path name its volume (<c>disk/part/N</c>, <c>disk/md/NAME</c>, <c>disk/lvm/VG/LV</c>, <c>disk/zfs/POOL/DATASET</c>,
    /// <c>disk/raw</c>); -1 for a path above the volume level.</summary>
    public static int VolumeLength(ReadOnlySpan<byte> path)
    {
        var depth = 0;
        var second = ReadOnlySpan<byte>.Empty;
        var start = 0;
        for (var i = 0; i <= path.Length; i++)
        {
            if (i == path.Length || path[i] == (byte)'/')
            {
                depth++;
                if (depth == 2)
                {
                    second = path[start..i];
                }

                var want = second.SequenceEqual("part"u8) || second.SequenceEqual("md"u8) ? 3 : second.SequenceEqual("lvm"u8) || second.SequenceEqual("zfs"u8) ? 4 : second.SequenceEqual("raw"u8) ? 2 : int.MaxValue;
                if (depth >= want)
                {
                    return i;
                }

                start = i + 1;
            }
        }

        return -1;
    }
}
