using System.Text;

namespace RestoreFs.RestoreVm;

/// <summary>
/// Gives a VM its ticket through the initramfs, never through a command line. The kernel unpacks
/// concatenated archives, but an lz4 legacy stream has no end marker, so an archive appended after it
/// fails to decode ("Initramfs unpacking failed"). The ticket archive therefore goes first: an
/// uncompressed newc cpio holding <c>ticket</c> (mode 0400), zero-padded to 512 bytes, then the image.
/// </summary>
public static class Initramfs
{
    private const int Alignment = 512;

    /// <summary>Writes a private (mode 0600) copy of <paramref name="imagePath"/> carrying the ticket
    /// into <paramref name="directory"/> and returns its path.</summary>
    public static string AppendTicket(string imagePath, ReadOnlySpan<byte> ticket, string directory) =>
        AppendTicket(imagePath, ticket, directory, null);

    /// <summary>As <see cref="AppendTicket(string, ReadOnlySpan{byte}, string)"/>, with <paramref name="guestKeys"/> (when
    /// given) as a second entry <c>guest-keys</c> (0400): the LUKS passphrases, which reach the VM this way only.</summary>
    public static string AppendTicket(string imagePath, ReadOnlySpan<byte> ticket, string directory, byte[]? guestKeys)
    {
        if (ticket.IsEmpty) throw new ArgumentException("ticket is empty", nameof(ticket));
        if (!File.Exists(imagePath)) throw new FileNotFoundException($"restore image initramfs not found: {imagePath}", imagePath);
        Directory.CreateDirectory(directory);
        var path = Path.Combine(directory, $"initramfs-{Guid.NewGuid():N}.img");
        var options = new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        };
        try
        {
            using var output = new FileStream(path, options);
            var archive = BuildTicketArchive(ticket, guestKeys);
            output.Write(archive);
            using var image = File.OpenRead(imagePath);
            image.CopyTo(output);
        }
        catch
        {
            File.Delete(path);
            throw;
        }
        return path;
    }

    /// <summary>The newc cpio archive with the single entry <c>ticket</c> (0400, root), padded to 512 bytes.</summary>
    public static byte[] BuildTicketArchive(ReadOnlySpan<byte> ticket, byte[]? guestKeys = null)
    {
        var stream = new MemoryStream();
        WriteEntry(stream, 1, "ticket", 0x8000 | 0x100, ticket);
        if (guestKeys is { Length: > 0 })
        {
            WriteEntry(stream, 2, "guest-keys", 0x8000 | 0x100, guestKeys);
        }

        WriteEntry(stream, 0, "TRAILER!!!", 0, ReadOnlySpan<byte>.Empty);
        Pad(stream, Alignment);
        return stream.ToArray();
    }

    private static void WriteEntry(MemoryStream stream, int inode, string name, int mode, ReadOnlySpan<byte> data)
    {
        var nameBytes = Encoding.ASCII.GetBytes(name);
        var header = new StringBuilder("070701");
        foreach (var field in new[] { inode, mode, 0, 0, 1, 0, data.Length, 0, 0, 0, 0, nameBytes.Length + 1, 0 })
            header.Append(field.ToString("X8"));
        stream.Write(Encoding.ASCII.GetBytes(header.ToString()));
        stream.Write(nameBytes);
        stream.WriteByte(0);
        Pad(stream, 4);
        stream.Write(data);
        Pad(stream, 4);
    }

    private static void Pad(MemoryStream stream, int alignment)
    {
        while (stream.Length % alignment != 0) stream.WriteByte(0);
    }
}
