using System.Buffers;
using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging;
using RestoreFs.Nbd.Protocol;
using static RestoreFs.Nbd.Protocol.NbdWire;

namespace RestoreFs.Nbd;

/// <summary>
/// One client: option haggling, then transmission with out-of-order replies. Every length a client sends is checked
/// before it is used; a malformed option or request gets the protocol's error and a log line, and where the framing is
/// lost (bad magic, an unskippable payload) the connection ends with a log line. Reply bytes in flight are bounded per
/// connection (no new request is read while more are unsent) and their buffers come from a pool of this connection,
/// dropped with it.
/// </summary>
internal sealed class NbdConnection(NbdServer server, Socket socket, int id, ILogger log)
{
    /// <summary>The largest option payload parsed (an export name is at most 4096 bytes; 64 KiB leaves room).</summary>
    internal const int MaxOptionBytes = 64 * 1024;

    /// <summary>An oversize option up to this is skipped and answered TOO_BIG; a larger one ends the connection.</summary>
    internal const long MaxOptionSkip = 16 * 1024 * 1024;

    /// <summary>Extents in one block status reply (the client asks again for the rest).</summary>
    internal const int MaxExtents = 16384;

    private const int MaxComplaints = 16;

    private readonly NetworkStream stream = new(socket, ownsSocket: false);
    private readonly SemaphoreSlim writeLock = new(1, 1);
    private readonly SemaphoreSlim replySent = new(0);
    private readonly ArrayPool<byte> buffers = ArrayPool<byte>.Create(Math.Max(64 * 1024, server.MaxRequestBytes), 4);
    private long inFlight;
    private int complaints;
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
        catch (Exception e)
        {
            log.LogError(e, "NBD client {Id} disconnected after an unexpected failure: {Reason}", id, e.Message);
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
        var header = new byte[16];
        while (true)
        {
            if (!await ReadHeaderAsync(header, "an option", ct).ConfigureAwait(false))
            {
                log.LogDebug("NBD client {Id} left during the handshake", id);
                return false;
            }

            var magic = BinaryPrimitives.ReadUInt64BigEndian(header);
            if (magic != OptionMagic)
            {
                throw new NbdException($"bad option magic 0x{magic:x16}: the option framing is lost");
            }

            var option = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
            var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
            if (length > MaxOptionBytes)
            {
                var reason = $"option {option} with {length} bytes of data (limit {MaxOptionBytes})";
                if (option == OptExportName)
                {
                    throw new NbdException(reason + "; EXPORT_NAME has no error reply");
                }

                if (length > MaxOptionSkip)
                {
                    await OptionReplyAsync(option, RepErrTooBig, Encoding.UTF8.GetBytes(reason), ct).ConfigureAwait(false);
                    throw new NbdException(reason + ", too much to skip");
                }

                Complain("{Reason}: skipped, answered TOO_BIG", reason);
                await SkipAsync(length, ct).ConfigureAwait(false);
                await OptionReplyAsync(option, RepErrTooBig, Encoding.UTF8.GetBytes(reason), ct).ConfigureAwait(false);
                continue;
            }

            var data = await ReadExactAsync((int)length, ct).ConfigureAwait(false);
            try
            {
                if (await OptionAsync(option, data, ct).ConfigureAwait(false) is { } done)
                {
                    return done;
                }
            }
            catch (NbdOptionFormatException e) when (option != OptExportName)
            {
                Complain("malformed option {Option}: {Reason}", option, e.Message);
                await OptionReplyAsync(option, RepErrInvalid, Encoding.UTF8.GetBytes(e.Message), ct).ConfigureAwait(false);
            }
        }
    }

    /// <summary>One option: null to go on haggling, true to start transmission, false to end.</summary>
    private async Task<bool?> OptionAsync(uint option, byte[] data, CancellationToken ct)
    {
        switch (option)
        {
            case OptExportName:
                var name = Encoding.UTF8.GetString(data);
                if (!server.TryGetExport(name, out var source, out _))
                {
                    throw new NbdException($"unknown export '{Shorten(name)}' (EXPORT_NAME)");
                }

                (export, exportName) = (source, name);
                var reply = new byte[noZeroes ? 10 : 134];
                BinaryPrimitives.WriteUInt64BigEndian(reply, (ulong)source.Size);
                BinaryPrimitives.WriteUInt16BigEndian(reply.AsSpan(8), TransmissionFlags(source));
                await stream.WriteAsync(reply, ct).ConfigureAwait(false);
                return true;
            case OptAbort:
                await OptionReplyAsync(option, RepAck, [], ct).ConfigureAwait(false);
                return false;
            case OptList:
                new NbdOptionReader(data).End("LIST");
                foreach (var (listed, description) in server.ListExports())
                {
                    var bytes = Encoding.UTF8.GetBytes(listed);
                    var text = Encoding.UTF8.GetBytes(description ?? string.Empty);
                    var entry = new byte[4 + bytes.Length + text.Length];
                    BinaryPrimitives.WriteUInt32BigEndian(entry, (uint)bytes.Length);
                    bytes.CopyTo(entry, 4);
                    text.CopyTo(entry, 4 + bytes.Length);
                    await OptionReplyAsync(option, RepServer, entry, ct).ConfigureAwait(false);
                }

                await OptionReplyAsync(option, RepAck, [], ct).ConfigureAwait(false);
                return null;
            case OptStructuredReply:
                new NbdOptionReader(data).End("STRUCTURED_REPLY");
                structured = true;
                await OptionReplyAsync(option, RepAck, [], ct).ConfigureAwait(false);
                return null;
            case OptInfo:
            case OptGo:
                return await InfoOrGoAsync(option, data, ct).ConfigureAwait(false) && option == OptGo ? true : null;
            case OptListMetaContext:
            case OptSetMetaContext:
                await MetaContextAsync(option, data, ct).ConfigureAwait(false);
                return null;
            case OptStartTls:
                await OptionReplyAsync(option, RepErrPolicy, Encoding.UTF8.GetBytes("TLS is not offered on this local socket"), ct).ConfigureAwait(false);
                return null;
            default:
                Complain("option {Option} is not supported: answered UNSUP", option);
                await OptionReplyAsync(option, RepErrUnsup, Encoding.UTF8.GetBytes($"option {option} is not supported"), ct).ConfigureAwait(false);
                return null;
        }
    }

    /// <summary>Read-only unless the export is an <see cref="IWritableBlockSource"/> (a throwaway overlay).</summary>
    private static ushort TransmissionFlags(IBlockSource source) =>
        (ushort)(TxHasFlags | TxSendFlush | TxSendCache | TxCanMultiConn | TxSendDf | (source is IWritableBlockSource ? 0 : TxReadOnly));

    private static (string Name, HashSet<ushort> Wanted) ParseInfoOrGo(byte[] data)
    {
        var reader = new NbdOptionReader(data);
        var name = reader.ReadString("export name");
        var count = reader.ReadUInt16("information request count");
        if (count * 2 != reader.Remaining)
        {
            throw new NbdOptionFormatException($"{count} information requests in {reader.Remaining} bytes");
        }

        var wanted = new HashSet<ushort>();
        for (var i = 0; i < count; i++)
        {
            wanted.Add(reader.ReadUInt16("information request"));
        }

        return (name, wanted);
    }

    private async Task<bool> InfoOrGoAsync(uint option, byte[] data, CancellationToken ct)
    {
        var (name, wanted) = ParseInfoOrGo(data);
        if (!server.TryGetExport(name, out var source, out var description))
        {
            await OptionReplyAsync(option, RepErrUnknown, Encoding.UTF8.GetBytes($"no export named '{Shorten(name)}'"), ct).ConfigureAwait(false);
            return false;
        }

        var info = new byte[12];
        BinaryPrimitives.WriteUInt16BigEndian(info, InfoExport);
        BinaryPrimitives.WriteUInt64BigEndian(info.AsSpan(2), (ulong)source.Size);
        BinaryPrimitives.WriteUInt16BigEndian(info.AsSpan(10), TransmissionFlags(source));
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

    private static (string Name, List<string> Queries) ParseMetaContext(byte[] data)
    {
        var reader = new NbdOptionReader(data);
        var name = reader.ReadString("export name");
        var count = reader.ReadCount("query count", 4);
        var queries = new List<string>();
        for (var i = 0; i < count; i++)
        {
            queries.Add(reader.ReadString("query"));
        }

        reader.End("meta context");
        return (name, queries);
    }

    private async Task MetaContextAsync(uint option, byte[] data, CancellationToken ct)
    {
        var (name, queries) = ParseMetaContext(data);
        if (option == OptSetMetaContext && !structured)
        {
            await OptionReplyAsync(option, RepErrInvalid, Encoding.UTF8.GetBytes("negotiate structured replies first"), ct).ConfigureAwait(false);
            return;
        }

        if (!server.TryGetExport(name, out _, out _))
        {
            await OptionReplyAsync(option, RepErrUnknown, Encoding.UTF8.GetBytes($"no export named '{Shorten(name)}'"), ct).ConfigureAwait(false);
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
        var request = new byte[28];
        try
        {
            while (true)
            {
                if (!await ReadHeaderAsync(request, "a request", ct).ConfigureAwait(false))
                {
                    log.LogDebug("NBD client {Id} left without NBD_CMD_DISC", id);
                    return;
                }

                var magic = BinaryPrimitives.ReadUInt32BigEndian(request);
                if (magic != RequestMagic)
                {
                    throw new NbdException($"bad request magic 0x{magic:x8}: the request framing is lost");
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
                        log.LogDebug("NBD client {Id} disconnects", id);
                        await Task.WhenAll(pending).ConfigureAwait(false);
                        return;
                    case CmdWrite:
                        if (length > server.MaxRequestBytes)
                        {
                            throw new NbdException($"write of {length} bytes (over the {server.MaxRequestBytes}-byte limit): its payload is not skipped");
                        }

                        if (source is not IWritableBlockSource writable)
                        {
                            await SkipAsync(length, ct).ConfigureAwait(false);
                            await ErrorReplyAsync(cookie, EPerm, "the export is read-only", ct).ConfigureAwait(false);
                            break;
                        }

                        // The payload is read before anything else: the framing stays intact whatever the answer.
                        await Task.WhenAll(pending).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
                        await WriteAsync(writable, cookie, offset, length, ct).ConfigureAwait(false);
                        break;
                    case CmdTrim:
                    case CmdWriteZeroes:
                        await ErrorReplyAsync(cookie, source is IWritableBlockSource ? ENotSup : EPerm,
                            source is IWritableBlockSource ? "not supported (not advertised)" : "the export is read-only", ct).ConfigureAwait(false);
                        break;
                    case CmdFlush:
                        await SimpleReplyAsync(cookie, 0, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
                        break;
                    case CmdRead:
                    case CmdCache:
                    case CmdBlockStatus:
                        if (CheckRange(source, type, offset, length) is { } refusal)
                        {
                            Complain("{Command} of {Offset}+{Length}: {Reason}", CommandName(type), offset, length, refusal.Reason);
                            await ErrorReplyAsync(cookie, refusal.Error, $"{CommandName(type)} of {offset}+{length}: {refusal.Reason}", ct).ConfigureAwait(false);
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
                            // Backpressure: the reply's bytes count until they are sent; while too many are unsent no
                            // new request is read, so a client that never reads costs a bounded amount of memory.
                            await AcquireAsync(length, ct).ConfigureAwait(false);
                            pending.Add(Task.Run(() => ReadAndReleaseAsync(source, cookie, (long)offset, (int)length, (flags & CmdFlagDf) != 0, ct), CancellationToken.None));
                        }

                        break;
                    default:
                        Complain("unknown command {Type}", type);
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

    private static string CommandName(ushort type) => type switch
    {
        CmdRead => "read",
        CmdCache => "cache",
        CmdBlockStatus => "block status",
        _ => $"command {type}",
    };

    // Only a read carries a payload bounded by the advertised maximum (EOVERFLOW beyond it); for block status and
    // cache the length is an effect length that may be larger (nbdinfo --map asks for up to 4 GiB at once).
    private (uint Error, string Reason)? CheckRange(IBlockSource source, ushort type, ulong offset, uint length)
    {
        if (length == 0)
        {
            return (EInval, "zero length");
        }

        if (type == CmdRead && length > server.MaxRequestBytes)
        {
            return (EOverflow, $"over the {server.MaxRequestBytes}-byte maximum read");
        }

        var size = (ulong)source.Size;
        return offset > size || length > size - offset ? (EInval, $"past the end of the {size}-byte export") : null;
    }

    private async Task AcquireAsync(long bytes, CancellationToken ct)
    {
        var waited = false;
        while (Volatile.Read(ref inFlight) > 0 && Volatile.Read(ref inFlight) + bytes > server.MaxInFlightBytes)
        {
            if (!waited)
            {
                log.LogDebug("NBD client {Id}: {Bytes} reply bytes unsent, no new request read until the client reads", id, Volatile.Read(ref inFlight));
                waited = true;
            }

            await replySent.WaitAsync(ct).ConfigureAwait(false);
        }

        Interlocked.Add(ref inFlight, bytes);
    }

    private async Task ReadAndReleaseAsync(IBlockSource source, ulong cookie, long offset, int length, bool noFragment, CancellationToken ct)
    {
        try
        {
            await ReadAsync(source, cookie, offset, length, noFragment, ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            log.LogDebug("NBD client {Id}: reply to {Offset}+{Length} not sent: {Reason}", id, offset, length, e.Message);
        }
        catch (Exception e)
        {
            log.LogError(e, "NBD client {Id}: read of {Export} at {Offset}+{Length} failed unexpectedly", id, exportName, offset, length);
        }
        finally
        {
            Interlocked.Add(ref inFlight, -length);
            replySent.Release();
        }
    }

    /// <summary>A whole header; false when the client left between two; a partial one is a lost framing.</summary>
    private async Task<bool> ReadHeaderAsync(byte[] header, string what, CancellationToken ct)
    {
        var n = await stream.ReadAtLeastAsync(header, header.Length, throwOnEndOfStream: false, ct).ConfigureAwait(false);
        return n == header.Length ? true
            : n == 0 ? false
            : throw new NbdException($"the client left inside {what} header ({n} of {header.Length} bytes)");
    }

    private async Task SkipAsync(long length, CancellationToken ct)
    {
        var scratch = buffers.Rent((int)Math.Min(length, 64 * 1024));
        try
        {
            for (var left = length; left > 0;)
            {
                var part = (int)Math.Min(left, scratch.Length);
                await stream.ReadExactlyAsync(scratch.AsMemory(0, part), ct).ConfigureAwait(false);
                left -= part;
            }
        }
        finally
        {
            buffers.Return(scratch);
        }
    }

    private void Complain(string message, params object?[] args)
    {
        var n = Interlocked.Increment(ref complaints);
        if (n <= MaxComplaints)
        {
#pragma warning disable CA2254 // the template is one of this class's constants
            log.LogWarning("NBD client {Id}: " + message, [id, .. args]);
#pragma warning restore CA2254
        }
        else if (n == MaxComplaints + 1)
        {
            log.LogWarning("NBD client {Id}: more malformed requests, no longer logged", id);
        }
    }

    private static string Shorten(string text) => text.Length > 200 ? text[..200] + "…" : text;

    private async Task ReadAsync(IBlockSource source, ulong cookie, long offset, int length, bool noFragment, CancellationToken ct)
    {
        var buffer = buffers.Rent(Math.Max(1, length));
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
            buffers.Return(buffer);
        }
    }

    /// <summary>NBD_CMD_WRITE on a writable export: payload read whole (bounded by the request maximum), range checked, written.</summary>
    private async Task WriteAsync(IWritableBlockSource target, ulong cookie, ulong offset, uint length, CancellationToken ct)
    {
        var buffer = buffers.Rent((int)Math.Max(1, length));
        try
        {
            await stream.ReadExactlyAsync(buffer.AsMemory(0, (int)length), ct).ConfigureAwait(false);
            var size = (ulong)target.Size;
            if (length == 0 || offset > size || length > size - offset)
            {
                Complain("write of {Offset}+{Length}: {Reason}", offset, length, length == 0 ? "zero length" : "past the end");
                await ErrorReplyAsync(cookie, EInval, $"write of {offset}+{length}: {(length == 0 ? "zero length" : $"past the end of the {size}-byte export")}", ct)
                    .ConfigureAwait(false);
                return;
            }

            try
            {
                await target.WriteAsync((long)offset, buffer.AsMemory(0, (int)length), ct).ConfigureAwait(false);
            }
            catch (Exception e) when (e is IOException or NbdException)
            {
                log.LogWarning("NBD write to {Export} at {Offset}+{Length} failed: {Reason}", exportName, offset, length, e.Message);
                await ErrorReplyAsync(cookie, e is NbdOverlayFullException ? ENoSpc : EIo, e.Message, ct).ConfigureAwait(false);
                return;
            }

            await SimpleReplyAsync(cookie, 0, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
        }
        finally
        {
            buffers.Return(buffer);
        }
    }

    private async Task BlockStatusAsync(IBlockSource source, ulong cookie, long offset, uint length, bool one, CancellationToken ct)
    {
        if (!structured || !baseAllocation)
        {
            await ErrorReplyAsync(cookie, EInval, "block status needs structured replies and the base:allocation context", ct).ConfigureAwait(false);
            return;
        }

        List<BlockExtent> extents;
        try
        {
            extents = source.GetExtents(offset, length).Take(one ? 1 : MaxExtents).ToList();
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            // The source could not be opened (its store out of reach): this request fails, the connection stays.
            log.LogWarning("NBD block status of {Export} at {Offset}+{Length} failed: {Reason}", exportName, offset, length, e.Message);
            await ErrorReplyAsync(cookie, EIo, e.Message, ct).ConfigureAwait(false);
            return;
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
