using RestoreFs.Datastore;
using RestoreFs.Fuse;

namespace RestoreFs.Tree;

/// <summary>
/// One snapshot: per disk image <c>&lt;disk&gt;.img</c>, its companions <c>.img.dev</c> and <c>.img.nbd</c>, the small
/// blobs decoded as plain files (<c>qemu-server.conf</c>, <c>client.log</c>, the manifest as <c>index.json</c>), and
/// <c>files/</c> for the files inside the disks. A finished snapshot never changes: long timeouts.
/// </summary>
public sealed class SnapshotDirectory : TreeDirectory
{
    public const string FilesName = "files";
    public const string DevSuffix = ".dev";
    public const string NbdSuffix = ".nbd";

    public SnapshotDirectory(TreeContext context, SnapshotState state)
        : base(context, immutable: true)
    {
        State = state;
    }

    public SnapshotState State { get; }

    protected override DateTimeOffset MTime => State.Time;

    /// <summary>The client's log is uploaded after the backup has finished (vzdump does so once its manifest is written);
    /// until it is there, the snapshot's names are not final for this long after the backup began.</summary>
    public static readonly TimeSpan LogUploadWindow = TimeSpan.FromDays(1);

    public const string ClientLogBlob = "client.log.blob";

    private volatile bool settled;

    /// <summary>
    /// Settled once the manifest has been read and the client's log is there, or the backup began more than
    /// <see cref="LogUploadWindow"/> ago (many snapshots never get a log: host backups, our own backups). Until then the
    /// names are listed again at each look, so a log uploaded after the first look appears without a remount. Asked only
    /// when looking inside, which reads the manifest anyway.
    /// </summary>
    protected override bool ContentsSettled
    {
        get
        {
            if (settled)
            {
                return true;
            }

            if (TryManifest() is null)
            {
                return false;
            }

            return settled = DateTimeOffset.UtcNow - State.Time > LogUploadWindow || HasLog();
        }
    }

    private bool HasLog()
    {
        try
        {
            return Context.Store.HasBlob(State.Snapshot, ClientLogBlob);
        }
        catch (DatastoreException)
        {
            return false; // not known now: asked again at the next look
        }
    }

    private Manifest? TryManifest()
    {
        try
        {
            return State.Manifest;
        }
        catch (DatastoreException e)
        {
            State.Translate(e, "index.json.blob");
            return null;
        }
    }

    private IEnumerable<string> BlobFiles() => Context.Store.ListBlobFiles(State.Snapshot);

    protected override IReadOnlyList<string> ListNames()
    {
        var names = new List<string>();
        var manifest = TryManifest();
        var images = manifest?.Files.Where(f => f.FileName.EndsWith(".img.fidx", StringComparison.Ordinal)).ToList() ?? [];
        foreach (var image in images)
        {
            var name = ImageName(image.FileName);
            names.Add(name);
            names.Add(name + DevSuffix);
            names.Add(name + NbdSuffix);
        }

        names.AddRange(PxarArchives(manifest).Select(a => a.Name));
        names.AddRange(BlobFiles().Select(b => b[..^".blob".Length]));
        if (images.Count > 0 && Context.Files is not null)
        {
            names.Add(FilesName);
        }

        return names;
    }

    /// <summary>An archive's directory not yet opened is listed by name: its attributes are its root entry's, a chunk
    /// to read, and a plain `ls` of the snapshot needs none of them.</summary>
    protected override FuseDirectoryEntry ListEntry(byte[] name, FuseNode node) =>
        node is Pxar.PxarRootDirectory { State.IsOpen: false } pxar
            ? FuseDirectoryEntry.NameOnly(name, Modes.Directory >> 12, pxar.Ino)
            : base.ListEntry(name, node);

    protected override FuseNode? CreateChild(string name)
    {
        if (name == FilesName)
        {
            return Context.Files is null ? null : new FilesRootDirectory(Context, State);
        }

        var manifest = TryManifest();
        if (PxarArchives(manifest).FirstOrDefault(a => a.Name == name) is { } pxar)
        {
            return new Pxar.PxarRootDirectory(new Pxar.PxarArchiveState(Context, State, pxar));
        }

        if (manifest is not null)
        {
            foreach (var file in manifest.Files.Where(f => f.FileName.EndsWith(".img.fidx", StringComparison.Ordinal)))
            {
                var image = ImageName(file.FileName);
                if (name == image)
                {
                    return new ImageFile(Context, State, file.FileName, (long)file.Size);
                }

                if (name == image + DevSuffix)
                {
                    return new AttachNode(Context, State, file.FileName, image);
                }

                if (name == image + NbdSuffix)
                {
                    return new NbdUriFile(Context, State, file.FileName);
                }
            }
        }

        var blob = name + ".blob";
        return Context.Store.HasBlob(State.Snapshot, blob) ? new BlobFile(Context, State, blob) : null;
    }

    /// <summary>The pxar archives of the snapshot (<c>root.pxar</c> for v1 or a split pair), each shown as a directory.</summary>
    private static IReadOnlyList<RestoreFs.Pxar.PxarArchiveInfo> PxarArchives(Manifest? manifest) =>
        manifest is null ? [] : RestoreFs.Pxar.SnapshotArchives.List(manifest);

    /// <summary><c>drive-scsi0.img.fidx</c> → <c>drive-scsi0.img</c>.</summary>
    public static string ImageName(string archive) => archive[..^".fidx".Length];

    /// <summary>Path of the image file below the mount point, for attaching a loop device over it.</summary>
    public string ImagePathInMount(string imageName)
    {
        var s = State.Snapshot;
        var parts = new List<string> { Context.Options.MountPoint, RootDirectory.SnapshotsName };
        if (s.Group.Namespace.Path.Length > 0)
        {
            foreach (var ns in s.Group.Namespace.Path.Split('/'))
            {
                parts.Add(NamespaceDirectory.ChildNamespacesName);
                parts.Add(ns);
            }
        }

        parts.AddRange([s.Group.Type, s.Group.Id, s.TimeName, imageName]);
        return Path.Combine([.. parts]);
    }
}
