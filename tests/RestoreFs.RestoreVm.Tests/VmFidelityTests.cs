using System.Text;
using RestoreFs.RestoreApi;

namespace RestoreFs.RestoreVm.Tests;

/// <summary>The daemon's faithful-entry API inside the real restore VM (its kernel, its /proc, its ntfs-3g): stat
/// fields, inline and endpoint xattrs (symlinks not followed), seek; the file-by-file comparisons run on the host
/// against loop devices (RestoreFs.RestoreDaemon.Tests/FidelityTests).</summary>
public sealed class VmFidelityTests(VmFixture f) : IClassFixture<VmFixture>
{
    private const string P1 = VmFixture.LongSerial + ".img.fidx/part/1";

    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    [Fact]
    public async Task Entries_carry_inode_identity_ns_times_and_xattrs_and_seek_and_xattrs_answer_in_the_vm()
    {
        var client = f.Session.Client;
        var entries = new List<ArchiveEntry>();
        await foreach (var e in client.ListAsync(B(P1 + "/home/admin"), new ListOptions(Xattrs: true), CancellationToken.None))
        {
            entries.Add(e);
        }

        Assert.NotEmpty(entries);
        Assert.All(entries, e =>
        {
            Assert.NotNull(e.Ino);
            Assert.NotNull(e.Dev);
            Assert.NotNull(e.NLink);
            Assert.NotNull(e.MTimeNs);
            Assert.NotNull(e.CTime);
            Assert.NotNull(e.Blocks);
            Assert.True(e.Xattrs is not null, $"{Encoding.UTF8.GetString(e.Name)}: no inline xattrs");
        });
        Assert.Single(entries.Select(e => e.Dev).Distinct());

        var link = entries.First(e => e.Type == EntryTypes.Symlink);
        Assert.NotNull(await client.XattrsAsync([.. B(P1 + "/home/admin/"), .. link.Name], CancellationToken.None));
        var file = entries.First(e => e.Type == EntryTypes.File && e.Size > 0);
        var path = (byte[])[.. B(P1 + "/home/admin/"), .. file.Name];
        Assert.Equal(0, await client.SeekAsync(path, 0, true, CancellationToken.None));
        Assert.Equal((long)file.Size!.Value, await client.SeekAsync(path, 0, false, CancellationToken.None));
        Assert.Equal(-1, await client.SeekAsync(path, (long)file.Size!.Value, true, CancellationToken.None));

        // Volume roots carry their root's stat; NTFS mounts through ntfs-3g with streams as xattrs.
        var part = (await ListAll(client, VmFixture.LongSerial + ".img.fidx/part")).First(e => Encoding.UTF8.GetString(e.Name) == "1");
        Assert.Equal(2UL, part.Ino); // ext4's root inode
        var ntfs = await ListAll(client, "ntfs.img.fidx/raw");
        Assert.NotEmpty(ntfs);
        Assert.All(await client.XattrsAsync(B("ntfs.img.fidx/raw/" + Encoding.UTF8.GetString(ntfs.First(e => e.Type == EntryTypes.File || e.Type == EntryTypes.Directory).Name)),
            CancellationToken.None), x => Assert.Null(x.Error));
    }

    private static async Task<List<ArchiveEntry>> ListAll(IRestoreClient client, string path)
    {
        var list = new List<ArchiveEntry>();
        await foreach (var e in client.ListAsync(B(path), CancellationToken.None))
        {
            list.Add(e);
        }

        return list;
    }
}
