using System.Buffers.Binary;
using Microsoft.Extensions.Logging;

namespace RestoreFs.Nbd;

/// <summary>
/// Attaches the image file as a read-only loop device with partition scanning (losetup). Where the kernel makes no
/// partition devices (no partition-table support), RestoreFs reads the GPT or MBR itself and attaches one read-only
/// loop device per partition with its offset and size.
/// </summary>
public sealed class LoopAttacher(ILogger<LoopAttacher> log) : IBlockDeviceAttacher
{
    public async Task<AttachedDevice> AttachAsync(AttachRequest request, CancellationToken ct)
    {
        var device = await BlockDeviceAttacher.RunAsync("losetup", ["--find", "--show", "--read-only", "--partscan", request.ImagePath], ct)
            .ConfigureAwait(false);
        var attached = new List<string> { device };
        var partitions = new List<AttachedPartition>();
        try
        {
            var name = Path.GetFileName(device);
            await Task.Delay(200, ct).ConfigureAwait(false);
            var kernelPartitions = Directory.Exists($"/sys/block/{name}") &&
                                   Directory.EnumerateDirectories($"/sys/block/{name}", name + "p*").Any();
            if (!kernelPartitions)
            {
                foreach (var (number, offset, size) in PartitionTable.Read(request.ImagePath))
                {
                    var part = await BlockDeviceAttacher.RunAsync("losetup",
                        ["--find", "--show", "--read-only", "--offset", offset.ToString(System.Globalization.CultureInfo.InvariantCulture),
                            "--sizelimit", size.ToString(System.Globalization.CultureInfo.InvariantCulture), request.ImagePath], ct).ConfigureAwait(false);
                    attached.Add(part);
                    partitions.Add(new AttachedPartition(number, part, offset, size));
                }
            }

            log.LogInformation("Attached {Image} as read-only loop device {Device}{Partitions}", request.ImagePath, device,
                partitions.Count > 0 ? $" (partitions: {string.Join(", ", partitions.Select(p => $"{p.Number}={p.DevicePath}"))})" : string.Empty);
        }
        catch
        {
            await DetachAsync(attached).ConfigureAwait(false);
            throw;
        }

        return new AttachedDevice(device, "loop", partitions, () => new ValueTask(DetachAsync(attached)));
    }

    private async Task DetachAsync(IEnumerable<string> devices)
    {
        foreach (var d in devices.Reverse())
        {
            try
            {
                await BlockDeviceAttacher.RunAsync("losetup", ["-d", d], CancellationToken.None).ConfigureAwait(false);
            }
            catch (NbdException e)
            {
                log.LogWarning("detaching {Device} failed: {Reason}", d, e.Message);
            }
        }
    }
}

/// <summary>Reads GPT (or MBR primary) partition entries of a disk image: (number, byte offset, byte size).</summary>
public static class PartitionTable
{
    public static IReadOnlyList<(int Number, long Offset, long Size)> Read(string path)
    {
        using var file = File.OpenRead(path);
        var sector = new byte[512];
        var result = new List<(int, long, long)>();
        if (file.Read(sector) != 512 || sector[510] != 0x55 || sector[511] != 0xAA)
        {
            return result;
        }

        if (sector[450] == 0xEE)
        {
            file.Position = 512;
            var header = new byte[92];
            file.ReadExactly(header);
            if (!header.AsSpan(0, 8).SequenceEqual("EFI PART"u8))
            {
                return result;
            }

            var entriesLba = BinaryPrimitives.ReadInt64LittleEndian(header.AsSpan(72));
            var count = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(80));
            var entrySize = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(84));
            if (count is <= 0 or > 1024 || entrySize is < 128 or > 4096)
            {
                return result;
            }

            var entries = new byte[count * entrySize];
            file.Position = entriesLba * 512;
            file.ReadExactly(entries);
            for (var i = 0; i < count; i++)
            {
                var e = entries.AsSpan(i * entrySize, entrySize);
                if (e[..16].IndexOfAnyExcept((byte)0) < 0)
                {
                    continue;
                }

                var first = BinaryPrimitives.ReadInt64LittleEndian(e[32..]);
                var last = BinaryPrimitives.ReadInt64LittleEndian(e[40..]);
                result.Add((i + 1, first * 512, (last - first + 1) * 512));
            }

            return result;
        }

        for (var i = 0; i < 4; i++)
        {
            var e = sector.AsSpan(446 + 16 * i, 16);
            var type = e[4];
            var start = BinaryPrimitives.ReadUInt32LittleEndian(e[8..]);
            var sectors = BinaryPrimitives.ReadUInt32LittleEndian(e[12..]);
            if (type != 0 && type != 0x05 && type != 0x0F && sectors > 0)
            {
                result.Add((i + 1, start * 512L, sectors * 512L));
            }
        }

        return result;
    }
}
