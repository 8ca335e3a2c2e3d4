using System.Runtime.InteropServices;
using RestoreFs.Datastore;
using RestoreFs.TestSupport;

namespace RestoreFs.Datastore.Tests;

/// <summary>
/// Looking leaves no trace in a local datastore, access times included: PBS's garbage collection decides by a chunk's
/// atime, and relatime (the usual mount option) would set it on a read. Files and listed directories are opened with
/// O_NOATIME; a caller the kernel refuses that to (neither the files' owner nor root) still reads.
/// </summary>
[Collection(OpenModeCollection.Name)]
public sealed partial class AccessTimeTests : IDisposable
{
    private const int Chunk = BackupWriter.DefaultChunkSize;
    private static readonly DateTimeOffset T0 = DateTimeOffset.Parse("2026-01-02T03:04:05Z");
    private static readonly DateTime Old = new(2001, 2, 3, 4, 5, 6, DateTimeKind.Utc);
    private readonly TempDirectory dir = new("restorefs-atime");
    private readonly byte[] image = DatastoreBuilder.Data(3 * Chunk + 77, 11);
    private readonly SnapshotInfo snapshot;

    public AccessTimeTests()
    {
        snapshot = DatastoreBuilder.Write(Store, "vm/1", T0, new Dictionary<string, byte[]> { ["d"] = image },
            blobs: new Dictionary<string, byte[]> { ["qemu-server.conf"] = "memory: 512\n"u8.ToArray() });
    }

    private string Store => dir.Combine("store");

    public void Dispose() => dir.Dispose();

    /// <summary>Every file and directory of the store (the 65,536 chunk directories too) with an access time long ago,
    /// older than its modification time: relatime sets it again on the next read. The paths are listed first, so that
    /// neither the ageing nor the checks read a directory (which would set its atime themselves).</summary>
    private List<string> AgeAccessTimes()
    {
        var entries = Directory.EnumerateFileSystemEntries(Store, "*", SearchOption.AllDirectories).Append(Store).ToList();
        foreach (var entry in entries)
        {
            File.SetLastAccessTimeUtc(entry, Old);
        }

        return entries;
    }

    private void ReadEverything()
    {
        var reader = DatastoreReader.Open(Store);
        var snapshots = reader.ListNamespaces().SelectMany(reader.ListGroups).SelectMany(reader.ListSnapshots).ToList();
        Assert.Single(snapshots);
        var snap = reader.GetSnapshot(BackupNamespace.Root, snapshot.Name);
        Assert.Equal(image, DatastoreBuilder.ReadImage(reader, snap, "d"));
        Assert.Equal("memory: 512\n"u8.ToArray(), reader.ReadBlob(snap, "qemu-server.conf.blob", null));
    }

    /// <summary>Runs <paramref name="body"/> with the store opened by openat2 or by the component walk.</summary>
    private static void WithOpenMode(bool openat2, Action body)
    {
        var before = LocalStoreFiles.UseOpenat2;
        LocalStoreFiles.UseOpenat2 = openat2;
        try
        {
            body();
        }
        finally
        {
            LocalStoreFiles.UseOpenat2 = before;
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Listing_and_reading_a_snapshot_leaves_every_access_time_as_it_was(bool openat2)
    {
        Requires.Root();
        var entries = AgeAccessTimes();
        WithOpenMode(openat2, ReadEverything);
        var changed = entries.Where(e => File.GetLastAccessTimeUtc(e) != Old).Select(e => Path.GetRelativePath(Store, e)).ToList();
        Assert.True(changed.Count == 0, $"access times changed: {string.Join(", ", changed.Take(10))}");
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void A_reader_that_may_not_keep_access_times_still_lists_and_reads(bool openat2)
    {
        // As root, O_NOATIME is always allowed; on a thread of its own with another file-system uid (per thread on
        // Linux, and it drops the capability that allows it), the kernel refuses it as it would for a user who does
        // not own the store's files (mode 0644/0755: still readable).
        Requires.Root();
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            SetFsUid(65534);
            try
            {
                Assert.Equal(65534, SetFsUid(65534)); // the previous value: the switch took
                var files = new LocalStoreFiles(Store);
                var groups = files.ListDirectory("vm");
                Assert.NotNull(groups);
                Assert.Contains(groups, g => g.Name == "1");
                using var manifest = files.TryOpen(Path.Combine(Path.GetRelativePath(Store, snapshot.DirectoryPath), "index.json.blob"));
                Assert.NotNull(manifest);
            }
            catch (Exception e)
            {
                failure = e;
            }
            finally
            {
                SetFsUid(0);
            }
        });
        WithOpenMode(openat2, () =>
        {
            thread.Start();
            thread.Join();
        });
        Assert.Null(failure);
    }

    [LibraryImport("libc", EntryPoint = "setfsuid")]
    private static partial int SetFsUid(uint uid);
}

/// <summary>Tests that switch <see cref="LocalStoreFiles.UseOpenat2"/> (process-wide) run one at a time.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class OpenModeCollection
{
    public const string Name = "store open mode";
}
