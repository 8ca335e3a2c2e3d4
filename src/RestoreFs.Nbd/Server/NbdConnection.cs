using System.Buffers;
using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging;
using static RestoreFs.Nbd.Protocol.NbdWire;

namespace RestoreFs.Nbd;

/// <summary>One client: option haggling, then transmission with out-of-order replies.</summary>
internal sealed class NbdConnection(NbdServer server, Socket socket, int id, ILogger log)
{
    private readonly NetworkStream stream = new(socket, ownsSocket: false);
    private readonly SemaphoreSlim writeLock = new(1, 1);
    private bool structured;
    private bool noZeroes;
    private bool baseAllocation;
    private IBlockSource? export;
    private string exportName = string.Empty;

    public async Task RunAsync(CancellationToken ct)
    {
        try
        {
            if (await HandshakeAsync(ct).ConfigureAwait(false))
            {
                log.LogDebug("NBD client {Id} attached to export {Export}", id, exportName);
                await TransmitAsync(ct).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is IOException or SocketException or EndOfStreamException or OperationCanceledException or ObjectDisposedException)
        {
            log.LogDebug("NBD client {Id} went away: {Reason}", id, e.Message);
        }
        catch (NbdException e)
        {
            log.LogWarning("NBD client {Id} disconnected: {Reason}", id, e.Message);
        }
    }

    private async Task<bool> HandshakeAsync(CancellationToken ct)
    {
        var hello = new byte[18];
        BinaryPrimitives.WriteUInt64BigEndian(hello, NbdMagic);
        BinaryPrimitives.WriteUInt64BigEndian(hello.AsSpan(8), OptionMagic);
        BinaryPrimitives.WriteUInt16BigEndian(hello.AsSpan(16), FlagFixedNewstyle | FlagNoZeroes);
        await stream.WriteAsync(hello, ct).ConfigureAwait(false);
        var clientFlags = BinaryPrimitives.ReadUInt32BigEndian(await ReadExactAsync(4, ct).ConfigureAwait(false));
        if ((clientFlags & ClientFlagFixedNewstyle) == 0)
        {
            throw new NbdException("client does not speak fixed newstyle");
        }

        noZeroes = (clientFlags & ClientFlagNoZeroes) != 0;
        while (true)
        {
            var header = await ReadExactAsync(16, ct).ConfigureAwait(false);
            if (BinaryPrimitives.ReadUInt64BigEndian(header) != OptionMagic)
            {
                throw new NbdException("bad option magic");
            }

            var option = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
            var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
            if (length > 65536)
            {
                throw new NbdException($"option {option} with {length} bytes of data");
            }

            var data = await ReadExactAsync((int)length, ct).ConfigureAwait(false);
            switch (option)
            {
                case OptExportName:
                    var name = Encoding.UTF8.GetString(data);
                    if (!server.TryGetExport(name, out var source, out _))
                    {
                        throw new NbdException($"unknown export '{name}' (EXPORT_NAME)");
                    }

                    (export, exportName) = (source, name);
                    var reply = new byte[noZeroes ? 10 : 134];
                    BinaryPrimitives.WriteUInt64BigEndian(reply, (ulong)source.Size);
                    BinaryPrimitives.WriteUInt16BigEndian(reply.AsSpan(8), TransmissionFlags);
                    await stream.WriteAsync(reply, ct).ConfigureAwait(false);
                    return true;
                case OptAbort:
                    await OptionReplyAsync(option, RepAck, [], ct).ConfigureAwait(false);
                    return false;
                case OptList:
                    if (length != 0)
                    {
                        await OptionReplyAsync(option, RepErrInvalid, [], ct).ConfigureAwait(false);
                        break;
                    }

                    foreach (var (exportName, description) in server.ListExports())
                    {
                        var bytes = Encoding.UTF8.GetBytes(exportName);
                        var text = Encoding.UTF8.GetBytes(description ?? string.Empty);
                        var entry = new byte[4 + bytes.Length + text.Length];
                        BinaryPrimitives.WriteUInt32BigEndian(entry, (uint)bytes.Length);
                        bytes.CopyTo(entry, 4);
                        text.CopyTo(entry, 4 + bytes.Length);
                        await OptionReplyAsync(option, RepServer, entry, ct).ConfigureAwait(false);
                    }

                    await OptionReplyAsync(option, RepAck, [], ct).ConfigureAwait(false);
                    break;
                case OptStructuredReply:
                    if (length != 0)
                    {
                        await OptionReplyAsync(option, RepErrInvalid, [], ct).ConfigureAwait(false);
                        break;
                    }

                    structured = true;
                    await OptionReplyAsync(option, RepAck, [], ct).ConfigureAwait(false);
                    break;
                case OptInfo:
                case OptGo:
                    if (await InfoOrGoAsync(option, data, ct).ConfigureAwait(false) && option == OptGo)
                    {
                        return true;
                    }

                    break;
                case OptListMetaContext:
                case OptSetMetaContext:
                    await MetaContextAsync(option, data, ct).ConfigureAwait(false);
                    break;
                case OptStartTls:
                    await OptionReplyAsync(option, RepErrPolicy, Encoding.UTF8.GetBytes("TLS is not offered on this local socket"), ct).ConfigureAwait(false);
                    break;
                default:
                    await OptionReplyAsync(option, RepErrUnsup, Encoding.UTF8.GetBytes($"option {option} is not supported"), ct).ConfigureAwait(false);
                    break;
            }
        }
    }

    private static ushort TransmissionFlags => TxHasFlags | TxReadOnly | TxSendFlush | TxSendCache | TxCanMultiConn | TxSendDf;

    private async Task<bool> InfoOrGoAsync(uint option, byte[] data, CancellationToken ct)
    {
        if (data.Length < 6)
        {
            await OptionReplyAsync(option, RepErrInvalid, Encoding.UTF8.GetBytes("short INFO/GO request"), ct).ConfigureAwait(false);
            return false;
        }

        var nameLength = (int)BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > data.Length - 6)
        {
            await OptionReplyAsync(option, RepErrInvalid, Encoding.UTF8.GetBytes("export name longer than the request"), ct).ConfigureAwait(false);
            return false;
        }

        var name = Encoding.UTF8.GetString(data, 4, nameLength);
        var requests = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(4 + nameLength));
        if (data.Length != 6 + nameLength + 2 * requests)
        {
            await OptionReplyAsync(option, RepErrInvalid, Encoding.UTF8.GetBytes("malformed information requests"), ct).ConfigureAwait(false);
            return false;
        }

        if (!server.TryGetExport(name, out var source, out var description))
        {
            await OptionReplyAsync(option, RepErrUnknown, Encoding.UTF8.GetBytes($"no export named '{name}'"), ct).ConfigureAwait(false);
            return false;
        }

        var wanted = Enumerable.Range(0, requests).Select(i => BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(6 + nameLength + 2 * i))).ToHashSet();
        var info = new byte[12];
        BinaryPrimitives.WriteUInt16BigEndian(info, InfoExport);
        BinaryPrimitives.WriteUInt64BigEndian(info.AsSpan(2), (ulong)source.Size);
        BinaryPrimitives.WriteUInt16BigEndian(info.AsSpan(10), TransmissionFlags);
        await OptionReplyAsync(option, RepInfo, info, ct).ConfigureAwait(false);
        var block = new byte[14];
        BinaryPrimitives.WriteUInt16BigEndian(block, InfoBlockSize);
        BinaryPrimitives.WriteUInt32BigEndian(block.AsSpan(2), 1);
        BinaryPrimitives.WriteUInt32BigEndian(block.AsSpan(6), 4096);
        BinaryPrimitives.WriteUInt32BigEndian(block.AsSpan(10), (uint)server.MaxRequestBytes);
        await OptionReplyAsync(option, RepInfo, block, ct).ConfigureAwait(false);
        if (wanted.Contains(InfoName))
        {
            await OptionReplyAsync(option, RepInfo, [0, (byte)InfoName, .. Encoding.UTF8.GetBytes(name)], ct).ConfigureAwait(false);
        }

        if (wanted.Contains(InfoDescription) && description is not null)
        {
            await OptionReplyAsync(option, RepInfo, [0, (byte)InfoDescription, .. Encoding.UTF8.GetBytes(description)], ct).ConfigureAwait(false);
        }

        await OptionReplyAsync(option, RepAck, [], ct).ConfigureAwait(false);
        if (option == OptGo)
        {
            (export, exportName) = (source, name);
        }

        return true;
    }

    private async Task MetaContextAsync(uint option, byte[] data, CancellationToken ct)
    {
        if (option == OptSetMetaContext && !structured)
        {
            await OptionReplyAsync(option, RepErrInvalid, Encoding.UTF8.GetBytes("negotiate structured replies first"), ct).ConfigureAwait(false);
            return;
        }

        try
        {
            var nameLength = (int)BinaryPrimitives.ReadUInt32BigEndian(data);
            var name = Encoding.UTF8.GetString(data, 4, nameLength);
            var position = 4 + nameLength;
            var count = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(position));
            position += 4;
            var queries = new List<string>();
            for (var i = 0; i < count; i++)
            {
                var length = (int)BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(position));
                queries.Add(Encoding.UTF8.GetString(data, position + 4, length));
                position += 4 + length;
            }

            if (!server.TryGetExport(name, out _, out _))
            {
                await OptionReplyAsync(option, RepErrUnknown, Encoding.UTF8.GetBytes($"no export named '{name}'"), ct).ConfigureAwait(false);
                return;
            }

            var match = (option == OptListMetaContext && queries.Count == 0) ||
                        queries.Any(q => q == BaseAllocation || (option == OptListMetaContext && q == "base:"));
            if (match)
            {
                var reply = new byte[4 + BaseAllocation.Length];
                BinaryPrimitives.WriteUInt32BigEndian(reply, BaseAllocationId);
                Encoding.ASCII.GetBytes(BaseAllocation).CopyTo(reply, 4);
                await OptionReplyAsync(option, RepMetaContext, reply, ct).ConfigureAwait(false);
            }

            if (option == OptSetMetaContext)
            {
                baseAllocation = match;
            }

            await OptionReplyAsync(option, RepAck, [], ct).ConfigureAwait(false);
        }
        catch (ArgumentOutOfRangeException)
        {
            await OptionReplyAsync(option, RepErrInvalid, Encoding.UTF8.GetBytes("malformed meta context request"), ct).ConfigureAwait(false);
        }
    }

    private async Task OptionReplyAsync(uint option, uint type, byte[] data, CancellationToken ct)
    {
        var reply = new byte[20 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(reply, OptionReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(12), type);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(16), (uint)data.Length);
        data.CopyTo(reply, 20);
        await stream.WriteAsync(reply, ct).ConfigureAwait(false);
    }

    private async Task TransmitAsync(CancellationToken ct)
    {
        var source = export!;
        var pending = new List<Task>();
        try
        {
            while (true)
            {
                var request = await ReadExactAsync(28, ct).ConfigureAwait(false);
                if (BinaryPrimitives.ReadUInt32BigEndian(request) != RequestMagic)
                {
                    throw new NbdException("bad request magic");
                }

                var flags = BinaryPrimitives.ReadUInt16BigEndian(request.AsSpan(4));
                var type = BinaryPrimitives.ReadUInt16BigEndian(request.AsSpan(6));
                var cookie = BinaryPrimitives.ReadUInt64BigEndian(request.AsSpan(8));
                var offset = BinaryPrimitives.ReadUInt64BigEndian(request.AsSpan(16));
                var length = BinaryPrimitives.ReadUInt32BigEndian(request.AsSpan(24));
                pending.RemoveAll(t => t.IsCompleted);
                switch (type)
                {
                    case CmdDisc:
                        await Task.WhenAll(pending).ConfigureAwait(false);
                        return;
                    case CmdWrite:
                        if (length > server.MaxRequestBytes)
                        {
                            throw new NbdException($"write of {length} bytes (over the limit)");
                        }

                        await ReadExactAsync((int)length, ct).ConfigureAwait(false);
                        await ErrorReplyAsync(cookie, EPerm, "the export is read-only", ct).ConfigureAwait(false);
                        break;
                    case CmdTrim:
                    case CmdWriteZeroes:
                        await ErrorReplyAsync(cookie, EPerm, "the export is read-only", ct).ConfigureAwait(false);
                        break;
                    case CmdFlush:
                        await SimpleReplyAsync(cookie, 0, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
                        break;
                    case CmdRead:
                    case CmdCache:
                    case CmdBlockStatus:
                        if (!InRange(source, offset, length, payload: type == CmdRead))
                        {
                            await ErrorReplyAsync(cookie, EInval, $"range {offset}+{length} is outside the {source.Size}-byte export or too long", ct).ConfigureAwait(false);
                            break;
                        }

                        if (type == CmdCache)
                        {
                            await SimpleReplyAsync(cookie, 0, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
                        }
                        else if (type == CmdBlockStatus)
                        {
                            await BlockStatusAsync(source, cookie, (long)offset, length, (flags & CmdFlagReqOne) != 0, ct).ConfigureAwait(false);
                        }
                        else
                        {
                            pending.Add(Task.Run(() => ReadAsync(source, cookie, (long)offset, (int)length, (flags & CmdFlagDf) != 0, ct), ct));
                        }

                        break;
                    default:
                        await ErrorReplyAsync(cookie, EInval, $"unknown command {type}", ct).ConfigureAwait(false);
                        break;
                }
            }
        }
        finally
        {
            await Task.WhenAll(pending).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
    }

    // Only a read carries a payload bounded by the advertised maximum; for block status and cache the length is an
    // effect length that may be larger (nbdinfo --map asks for up to 4 GiB at once).
    private bool InRange(IBlockSource source, ulong offset, uint length, bool payload) =>
        (!payload || length <= server.MaxRequestBytes) && (payload || length > 0)
        && offset <= (ulong)source.Size && offset + length <= (ulong)source.Size;

    private async Task ReadAsync(IBlockSource source, ulong cookie, long offset, int length, bool noFragment, CancellationToken ct)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(Math.Max(1, length));
        try
        {
            if (structured && !noFragment && length > 0 && source.GetExtents(offset, length).ToList() is { Count: > 1 } extents)
            {
                // Zero runs travel as holes: nothing to read or send for them.
                for (var i = 0; i < extents.Count; i++)
                {
                    var e = extents[i];
                    var last = i == extents.Count - 1;
                    if (e.IsZero)
                    {
                        var hole = new byte[12];
                        BinaryPrimitives.WriteUInt64BigEndian(hole, (ulong)e.Offset);
                        BinaryPrimitives.WriteUInt32BigEndian(hole.AsSpan(8), (uint)e.Length);
                        await ChunkAsync(cookie, last ? ReplyFlagDone : (ushort)0, ReplyTypeOffsetHole, hole, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
                    }
                    else
                    {
                        var part = buffer.AsMemory(0, (int)e.Length);
                        await source.ReadAsync(e.Offset, part, ct).ConfigureAwait(false);
                        var head = new byte[8];
                        BinaryPrimitives.WriteUInt64BigEndian(head, (ulong)e.Offset);
                        await ChunkAsync(cookie, last ? ReplyFlagDone : (ushort)0, ReplyTypeOffsetData, head, part, ct).ConfigureAwait(false);
                    }
                }

                return;
            }

            await source.ReadAsync(offset, buffer.AsMemory(0, length), ct).ConfigureAwait(false);
            if (structured)
            {
                var head = new byte[8];
                BinaryPrimitives.WriteUInt64BigEndian(head, (ulong)offset);
                await ChunkAsync(cookie, ReplyFlagDone, ReplyTypeOffsetData, head, buffer.AsMemory(0, length), ct).ConfigureAwait(false);
            }
            else
            {
                await SimpleReplyAsync(cookie, 0, buffer.AsMemory(0, length), ct).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is not (OperationCanceledException or IOException { InnerException: SocketException } or SocketException))
        {
            log.LogWarning("NBD read of {Export} at {Offset}+{Length} failed: {Reason}", exportName, offset, length, e.Message);
            await ErrorReplyAsync(cookie, EIo, e.Message, ct).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private async Task BlockStatusAsync(IBlockSource source, ulong cookie, long offset, uint length, bool one, CancellationToken ct)
    {
        if (!structured || !baseAllocation)
        {
            await ErrorReplyAsync(cookie, EInval, "block status needs structured replies and the base:allocation context", ct).ConfigureAwait(false);
            return;
        }

        var extents = source.GetExtents(offset, length).ToList();
        if (one && extents.Count > 1)
        {
            extents = [extents[0]];
        }

        var payload = new byte[4 + 8 * extents.Count];
        BinaryPrimitives.WriteUInt32BigEndian(payload, BaseAllocationId);
        for (var i = 0; i < extents.Count; i++)
        {
            BinaryPrimitives.WriteUInt32BigEndian(payload.AsSpan(4 + 8 * i), (uint)extents[i].Length);
            BinaryPrimitives.WriteUInt32BigEndian(payload.AsSpan(8 + 8 * i), extents[i].IsZero ? StateHole | StateZero : 0);
        }

        await ChunkAsync(cookie, ReplyFlagDone, ReplyTypeBlockStatus, payload, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
    }

    private async Task ErrorReplyAsync(ulong cookie, uint error, string message, CancellationToken ct)
    {
        if (!structured)
        {
            await SimpleReplyAsync(cookie, error, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
            return;
        }

        var text = Encoding.UTF8.GetBytes(message.Length > 200 ? message[..200] : message);
        var payload = new byte[6 + text.Length];
        BinaryPrimitives.WriteUInt32BigEndian(payload, error);
        BinaryPrimitives.WriteUInt16BigEndian(payload.AsSpan(4), (ushort)text.Length);
        text.CopyTo(payload, 6);
        await ChunkAsync(cookie, ReplyFlagDone, ReplyTypeError, payload, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
    }

    private async Task SimpleReplyAsync(ulong cookie, uint error, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        var head = new byte[16];
        BinaryPrimitives.WriteUInt32BigEndian(head, SimpleReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(head.AsSpan(4), error);
        BinaryPrimitives.WriteUInt64BigEndian(head.AsSpan(8), cookie);
        await SendAsync(head, data, ct).ConfigureAwait(false);
    }

    private async Task ChunkAsync(ulong cookie, ushort flags, ushort type, byte[] head, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        var header = new byte[20 + head.Length];
        BinaryPrimitives.WriteUInt32BigEndian(header, StructuredReplyMagic);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(6), type);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(16), (uint)(head.Length + data.Length));
        head.CopyTo(header, 20);
        await SendAsync(header, data, ct).ConfigureAwait(false);
    }

    private async Task SendAsync(byte[] header, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        await writeLock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            await stream.WriteAsync(header, ct).ConfigureAwait(false);
            if (!data.IsEmpty)
            {
                await stream.WriteAsync(data, ct).ConfigureAwait(false);
            }
        }
        finally
        {
            writeLock.Release();
        }
    }

    private async Task<byte[]> ReadExactAsync(int count, CancellationToken ct)
    {
        var buffer = new byte[count];
        await stream.ReadExactlyAsync(buffer, ct).ConfigureAwait(false);
        return buffer;
    }
}
