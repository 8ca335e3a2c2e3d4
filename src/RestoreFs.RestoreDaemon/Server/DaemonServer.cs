using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using RestoreFs.RestoreApi;
using RestoreFs.RestoreDaemon.Disks;
using RestoreFs.RestoreDaemon.Handlers;
using ZstdSharp;

namespace RestoreFs.RestoreDaemon.Server;

public sealed record DaemonServerOptions(string Ticket, TimeSpan IdleTimeout, TimeSpan AuthFailureDelay, int MaxExtractions = 8, int MaxReadBytes = 16 << 20)
{
    /// <summary>The kernel's disk read errors (in the VM): a listing during which its volume could not be read ends
    /// with an error entry instead of looking complete.</summary>
    internal KernelIoErrors? IoErrors { get; init; }
}

/// <summary>
/// The restore daemon's API: <c>/api2/json/{status,list,read,extract,stop}</c> over HTTP/1.1, one request per stream.
/// Every request but <c>status</c> needs the ticket in <c>Authorization</c>; a wrong one is answered 401 only after
/// <see cref="DaemonServerOptions.AuthFailureDelay"/> from the request's start.
/// </summary>
public sealed class DaemonServer : IDisposable
{
    private readonly IVolumeCatalog catalog;
    private readonly DaemonServerOptions options;
    private readonly Action<string> log;
    private readonly Stopwatch uptime = Stopwatch.StartNew();
    private readonly SemaphoreSlim extractions;
    private readonly byte[] ticket;
    private readonly CancellationTokenSource stopping = new();
    private long entriesListed;

    public DaemonServer(IVolumeCatalog catalog, DaemonServerOptions options, Action<string> log, Action shutdown)
    {
        if (string.IsNullOrEmpty(options.Ticket))
        {
            throw new ArgumentException("the ticket is empty", nameof(options));
        }

        this.catalog = catalog;
        this.options = options;
        this.log = log;
        ticket = Encoding.UTF8.GetBytes(options.Ticket);
        extractions = new SemaphoreSlim(options.MaxExtractions, options.MaxExtractions);
        Shutdown = () =>
        {
            stopping.Cancel();
            shutdown();
        };
        Watchdog = new Watchdog(options.IdleTimeout, () =>
        {
            log($"idle for {options.IdleTimeout.TotalSeconds:0} s: shutting down");
            Shutdown();
        });
        Watchdog.Touch();
    }

    public Watchdog Watchdog { get; }

    /// <summary>Directory entries written into <c>list</c> answers so far (they stream: a reader that stops reading
    /// stops the listing).</summary>
    public long EntriesListed => Interlocked.Read(ref entriesListed);

    public Action Shutdown { get; }

    public CancellationToken Stopping => stopping.Token;

    /// <summary>Serves one request on <paramref name="stream"/> and closes it.</summary>
    public async Task HandleAsync(Stream stream, CancellationToken ct)
    {
        var started = Stopwatch.StartNew();
        await using var _ = stream.ConfigureAwait(false);
        var tracked = new WriteTracker(stream);
        stream = tracked;
        Http.Request? request;
        try
        {
            using var headTimeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            headTimeout.CancelAfter(TimeSpan.FromSeconds(30));
            request = await Http.ReadRequestAsync(new BufferedReader(stream), headTimeout.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or OperationCanceledException)
        {
            log($"bad request: {e.Message}");
            await TryAsync(() => TextAsync(stream, 400, e.Message, ct)).ConfigureAwait(false);
            return;
        }

        if (request is null)
        {
            return;
        }

        var status = 200;
        try
        {
            status = await RouteAsync(stream, request, started, ct).ConfigureAwait(false);
        }
        catch (BadRequestException e)
        {
            status = 400;
            if (!tracked.Started)
            {
                await TryAsync(() => TextAsync(stream, 400, e.Message, ct)).ConfigureAwait(false);
            }
        }
        catch (VolumeException e)
        {
            status = 400;
            if (!tracked.Started)
            {
                await TryAsync(() => TextAsync(stream, 400, e.Message, ct)).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException)
        {
            status = 599;
            log($"{request.Path}: the stream broke: {e.Message}");
        }
        catch (Exception e)
        {
            status = 500;
            log($"{request.Path}: {e}");
            if (!tracked.Started)
            {
                await TryAsync(() => TextAsync(stream, 400, e.Message, ct)).ConfigureAwait(false);
            }
        }

        log($"{request.Method} {request.Path}{Describe(request)} -> {status} in {started.Elapsed.TotalMilliseconds:0.0} ms");
    }

    private static string Describe(Http.Request r)
    {
        if (!r.Query.TryGetValue("path", out var b64))
        {
            return "";
        }

        try
        {
            return " " + Encoding.UTF8.GetString(Convert.FromBase64String(b64)) + (r.Query.TryGetValue("offset", out var o) ? $" @{o}+{r.Query.GetValueOrDefault("length")}" : "");
        }
        catch (FormatException)
        {
            return " (bad base64)";
        }
    }

    private async Task<int> RouteAsync(Stream stream, Http.Request request, Stopwatch started, CancellationToken ct)
    {
        if (request.Method != "GET")
        {
            await TextAsync(stream, 405, "only GET is served", ct).ConfigureAwait(false);
            return 405;
        }

        var path = request.Path.TrimEnd('/');
        if (!path.StartsWith("/api2/json", StringComparison.Ordinal))
        {
            await TextAsync(stream, 404, $"no such path {request.Path}", ct).ConfigureAwait(false);
            return 404;
        }

        var endpoint = path.Length > "/api2/json".Length ? path["/api2/json/".Length..] : "";
        var known = endpoint is "" or "status" or "list" or "read" or "extract" or "stop" or "xattrs" or "seek";
        if (!known)
        {
            await TextAsync(stream, 404, $"no such endpoint '{endpoint}'", ct).ConfigureAwait(false);
            return 404;
        }

        var authorised = Authorised(request.Header("authorization"));
        if (endpoint != "status" && !authorised)
        {
            // Timers may fire a little early: wait until the delay has really passed.
            for (var wait = options.AuthFailureDelay - started.Elapsed; wait > TimeSpan.Zero; wait = options.AuthFailureDelay - started.Elapsed)
            {
                await Task.Delay(wait + TimeSpan.FromMilliseconds(1), ct).ConfigureAwait(false);
            }

            await TextAsync(stream, 401, "authentication failed", ct).ConfigureAwait(false);
            return 401;
        }

        switch (endpoint)
        {
            case "":
                await JsonAsync(stream, w =>
                {
                    w.WriteStartArray();
                    foreach (var e in new[] { "extract", "list", "read", "seek", "status", "stop", "xattrs" })
                    {
                        w.WriteStartObject();
                        w.WriteString("subdir", e);
                        w.WriteEndObject();
                    }

                    w.WriteEndArray();
                }, ct).ConfigureAwait(false);
                return 200;
            case "status":
                if (authorised && !Flag(request, "keep-timeout"))
                {
                    Watchdog.Touch();
                }

                var disks = await catalog.GetDisksAsync(ct).ConfigureAwait(false);
                var status = new DaemonStatus(
                    (long)uptime.Elapsed.TotalSeconds,
                    (long)Math.Ceiling(Watchdog.Remaining.TotalSeconds),
                    disks.Select(d => new DiskStatus(d.Name, d.Size, d.Volumes.Select(v => v.Id).ToList(), d.Error)).ToList(),
                    catalog.Mounts.Select(m => new MountStatus(m.Volume.Id, m.FsType, m.MountPoint, m.Error)).ToList());
                await JsonAsync(stream, w => ApiJson.WriteStatus(w, status), ct).ConfigureAwait(false);
                return 200;
            case "list":
                Watchdog.Touch();
                await ListAsync(stream, PathOf(request), new ListParameters(
                    request.Query.ContainsKey("inline") ? (int)Number(request, "inline", 0, 1 << 20) : 0,
                    request.Query.ContainsKey("extents") && Number(request, "extents", 0, 1) == 1,
                    request.Query.ContainsKey("xattrs") && Number(request, "xattrs", 0, 1) == 1,
                    request.Query.ContainsKey("start") ? Number(request, "start", long.MinValue, long.MaxValue) : 0,
                    request.Query.ContainsKey("limit") ? (int)Number(request, "limit", 1, MaxListLimit) : DefaultListLimit), ct).ConfigureAwait(false);
                Watchdog.Touch();
                return 200;
            case "read":
                Watchdog.Touch();
                await ReadAsync(stream, request, ct).ConfigureAwait(false);
                Watchdog.Touch();
                return 200;
            case "extract":
                await ExtractAsync(stream, request, ct).ConfigureAwait(false);
                return 200;
            case "xattrs":
                Watchdog.Touch();
                await XattrsAsync(stream, request, ct).ConfigureAwait(false);
                return 200;
            case "seek":
                Watchdog.Touch();
                await SeekAsync(stream, request, ct).ConfigureAwait(false);
                return 200;
            default: // stop
                log("stop requested");
                // Scheduled before answering: a client that hangs up before the answer is written still stops us.
                _ = Task.Delay(100, CancellationToken.None).ContinueWith(_ => Shutdown(), TaskScheduler.Default);
                await TextAsync(stream, 200, "stopping", ct).ConfigureAwait(false);
                return 200;
        }
    }

    private bool Authorised(string? header) =>
        header is not null && CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(header), ticket);

    private static bool Flag(Http.Request r, string name) =>
        r.Query.TryGetValue(name, out var v) && (v == "1" || v.Equals("true", StringComparison.OrdinalIgnoreCase));

    private static byte[] PathOf(Http.Request r)
    {
        if (!r.Query.TryGetValue("path", out var b64))
        {
            return [];
        }

        try
        {
            return Convert.FromBase64String(b64);
        }
        catch (FormatException)
        {
            throw new BadRequestException("path is not valid base64");
        }
    }

    private static long Number(Http.Request r, string name, long min, long max)
    {
        if (!r.Query.TryGetValue(name, out var text)
            || !long.TryParse(text, min < 0 ? NumberStyles.AllowLeadingSign : NumberStyles.None, CultureInfo.InvariantCulture, out var value)
            || value < min || value > max)
        {
            throw new BadRequestException($"parameter '{name}' must be a number from {min} to {max}");
        }

        return value;
    }

    private async Task<(ApiPath Path, string? MountPoint)> ResolveAsync(byte[] raw, CancellationToken ct)
    {
        var disks = await catalog.GetDisksAsync(ct).ConfigureAwait(false);
        var path = ApiPath.Parse(raw, disks);
        if (path.Volume is null)
        {
            return (path, null);
        }

        return (path, await MountAsync(path.Volume, ct).ConfigureAwait(false));
    }

    /// <summary>Mounts a volume for a request; failing, the 400 answer names the volume and the reason.</summary>
    private async Task<string> MountAsync(VolumeInfo volume, CancellationToken ct)
    {
        try
        {
            return await catalog.MountAsync(volume, ct).ConfigureAwait(false);
        }
        catch (VolumeException e) when (!e.Message.Contains(volume.Id, StringComparison.Ordinal))
        {
            throw new BadRequestException($"{volume.Id}: {e.Message}");
        }
    }

    /// <summary>At most this much file content is inlined in one listing.</summary>
    public const long InlineBudget = 32L << 20;

    /// <summary>Entries per <c>list</c> answer when the client sets no <c>limit</c>; a longer directory ends the answer with
    /// a <see cref="EntryTypes.More"/> element.</summary>
    public const int DefaultListLimit = 100_000;

    /// <summary>The largest <c>limit</c> a client may ask for.</summary>
    public const int MaxListLimit = 1 << 20;

    private sealed record ListParameters(int InlineMax, bool Extents, bool Xattrs, long Start, int Limit);

    private async Task ListAsync(Stream stream, byte[] raw, ListParameters p, CancellationToken ct)
    {
        var disks = await catalog.GetDisksAsync(ct).ConfigureAwait(false);
        var path = ApiPath.Parse(raw, disks);
        if (path.Volume is null)
        {
            var entries = await VirtualLevelAsync(path, disks, ct).ConfigureAwait(false);
            await JsonAsync(stream, w =>
            {
                w.WriteStartArray();
                foreach (var e in entries)
                {
                    ApiJson.WriteEntry(w, e);
                }

                w.WriteEndArray();
            }, ct).ConfigureAwait(false);
            return;
        }

        var mountPoint = await MountAsync(path.Volume, ct).ConfigureAwait(false);
        var map = p.Extents ? Mapping(path.Volume) : null;
        var (directory, single) = VolumeFiles.OpenForList(mountPoint, path.Rest, path.Prefix, p.Xattrs);
        if (single is not null)
        {
            await JsonAsync(stream, w =>
            {
                w.WriteStartArray();
                ApiJson.WriteEntry(w, single);
                w.WriteEndArray();
            }, ct).ConfigureAwait(false);
            return;
        }

        var mark = options.IoErrors?.Mark() ?? 0;
        using (directory)
        {
            await stream.WriteAsync(Http.FormatResponseHead(200, "OK", "application/json;charset=UTF-8", null), ct).ConfigureAwait(false);
            var body = new ChunkedWriteStream(stream);
            var buffered = new BufferedStream(body, 64 * 1024);
            await using (var w = new Utf8JsonWriter(buffered))
            {
                w.WriteStartObject();
                w.WritePropertyName("data");
                w.WriteStartArray();
                var n = 0;
                ArchiveEntry? more = null;
                var profile = new ListProfile();
                foreach (var entry in VolumeFiles.ListDirectory(directory!, path.Prefix, p.InlineMax, InlineBudget, map, p.Xattrs, p.Start, p.Limit, profile))
                {
                    if (entry.Type == EntryTypes.More)
                    {
                        more = entry;
                        break;
                    }

                    var tw = Stopwatch.GetTimestamp();
                    ApiJson.WriteEntry(w, entry);
                    Interlocked.Increment(ref entriesListed);
                    if (++n % 256 == 0 || w.BytesPending > 1 << 20)
                    {
                        await w.FlushAsync(ct).ConfigureAwait(false);
                        await buffered.FlushAsync(ct).ConfigureAwait(false);
                    }

                    profile.Add(ref profile.Write, tw);
                }

                if (options.IoErrors?.OnVolume(mark, path.Volume, path.Disk!.Device) is { } damage)
                {
                    // The entries so far may be all the file system could read: say so (the host fails the listing).
                    log($"list {path.Volume.Id}: {damage}");
                    ApiJson.WriteEntry(w, new ArchiveEntry(path.Prefix, [], EntryTypes.Failed, true, null, null, 0, 0, 0, null,
                        $"{Encoding.UTF8.GetString(path.Prefix)} cannot be listed completely: {damage}"));
                }

                if (more is not null)
                {
                    ApiJson.WriteEntry(w, more);
                }

                if (profile.Entries >= 256)
                {
                    log($"list {Encoding.UTF8.GetString(path.Prefix)}: {profile}"); // where a large listing's time went
                }

                w.WriteEndArray();
                w.WriteEndObject();
            }

            await buffered.FlushAsync(ct).ConfigureAwait(false);
            await body.CompleteAsync(ct).ConfigureAwait(false);
        }
    }

    /// <summary>Files of this volume can be mapped onto its disk when its place on the disk is known and its file
    /// system's FIEMAP gives device offsets.</summary>
    private ExtentMapping? Mapping(VolumeInfo volume)
    {
        var mounted = catalog.Mounts.FirstOrDefault(m => m.Volume.Id == volume.Id);
        return volume.Placement is { Count: > 0 } placement && FileExtents.Maps(mounted?.FsType) && mounted?.NoFileMaps?.Invoke() != true
            ? new ExtentMapping(placement, (long)volume.Size)
            : null;
    }

    /// <summary>Disks, bucket types, partitions, volume groups and logical volumes; volumes are mounted here so that
    /// one that cannot be mounted is listed with its error.</summary>
    private async Task<List<ArchiveEntry>> VirtualLevelAsync(ApiPath path, IReadOnlyList<DiskInfo> disks, CancellationToken ct)
    {
        var prefix = path.Prefix;
        ArchiveEntry Virtual(string name, char type, ulong? size, string? error = null)
        {
            var bytes = Encoding.UTF8.GetBytes(name);
            byte[] full = prefix.Length == 0 ? bytes : [.. prefix, (byte)'/', .. bytes];
            return new ArchiveEntry(full, bytes, type, false, size, null, type == 'd' ? 0x41EDu : 0x416Du, 0, 0, null, error);
        }

        if (path.Disk is null)
        {
            return disks.Select(d => Virtual(d.Name + ".img.fidx", 'v', d.Size, d.Error)).ToList();
        }

        var volumes = path.Disk.Volumes;
        if (path.Bucket is null)
        {
            // raw is itself the volume: it carries the volume's place on the disk, as volume entries below do, and the
            // attributes of its file system's root when it mounts.
            var buckets = new List<ArchiveEntry>();
            foreach (var b in volumes.Select(v => v.Bucket).Distinct().Order(StringComparer.Ordinal))
            {
                var entry = Virtual(b, 'v', null);
                if (b == "raw")
                {
                    var raw = volumes.First(v => v.Bucket == "raw");
                    entry = entry with { Extents = PlacementOf(raw) };
                    try
                    {
                        entry = RootStat(entry, await catalog.MountAsync(raw, ct).ConfigureAwait(false));
                    }
                    catch (VolumeException)
                    {
                        // listed as before; asking inside it names the reason
                    }
                }

                buckets.Add(entry);
            }

            return buckets;
        }

        var inBucket = volumes.Where(v => v.Bucket == path.Bucket && v.Components.Take(path.Levels.Count).SequenceEqual(path.Levels)).ToList();
        if (path.Bucket == "lvm" && path.Levels.Count == 0)
        {
            return inBucket.Select(v => v.Components[0]).Distinct().Select(vg => Virtual(vg, 'v', null)).ToList();
        }

        var result = new List<ArchiveEntry>();
        foreach (var volume in inBucket)
        {
            string? error = null;
            string? mountPoint = null;
            try
            {
                mountPoint = await catalog.MountAsync(volume, ct).ConfigureAwait(false);
            }
            catch (VolumeException e)
            {
                error = e.Message;
            }

            var entry = Virtual(volume.Components[^1], 'd', volume.Size, error) with { Extents = PlacementOf(volume) };
            result.Add(mountPoint is null ? entry : RootStat(entry, mountPoint));
        }

        return result;
    }

    /// <summary>A volume entry with the attributes of its file system's root (statx of the mounted root): mode, owner,
    /// times, inode, device. Its <c>size</c> stays the volume's size.</summary>
    private static ArchiveEntry RootStat(ArchiveEntry entry, string mountPoint)
    {
        var fd = Native.LibC.OpenPath(mountPoint, Native.LibC.O_RDONLY | Native.LibC.O_DIRECTORY);
        if (fd < 0)
        {
            return entry;
        }

        using var root = new Native.Fd(fd);
        return Native.LibC.Stat(fd, [], out var st) == 0 ? VolumeFiles.WithStat(entry, st) with { Size = entry.Size } : entry;
    }

    /// <summary><c>xattrs?path=B64</c>: every extended attribute of one entry (a symlink's own; the volume root for a
    /// volume path), values exact or error entries (see <see cref="XattrReader"/>).</summary>
    private async Task XattrsAsync(Stream stream, Http.Request request, CancellationToken ct)
    {
        var (path, mountPoint) = await ResolveAsync(PathOf(request), ct).ConfigureAwait(false);
        if (mountPoint is null)
        {
            throw new BadRequestException("xattrs needs a path inside a volume (or a volume itself)");
        }

        var (parent, name) = VolumeFiles.Resolve(mountPoint, path.Rest);
        List<Xattr> xattrs;
        using (parent)
        {
            if (name.Length > 0 && Native.LibC.Stat(parent.Value, name, out _) is var r and < 0)
            {
                throw new BadRequestException($"{VolumeFiles.Show(path.Rest)}: {VolumeFiles.Reason(-r)}");
            }

            try
            {
                xattrs = XattrReader.Read(parent.Value, name)!;
            }
            catch (IOException e)
            {
                throw new BadRequestException($"{VolumeFiles.Show(path.Rest)}: {e.Message}");
            }
        }

        await JsonAsync(stream, w => ApiJson.WriteXattrs(w, xattrs), ct).ConfigureAwait(false);
    }

    /// <summary><c>seek?path=B64&amp;offset=N&amp;whence=data|hole</c>: lseek(SEEK_DATA/SEEK_HOLE) on a regular file;
    /// <c>{"data":{"offset":N}}</c>, -1 when the kernel answers ENXIO (no data/hole at or after the offset).</summary>
    private async Task SeekAsync(Stream stream, Http.Request request, CancellationToken ct)
    {
        var (path, mountPoint) = await ResolveAsync(PathOf(request), ct).ConfigureAwait(false);
        if (mountPoint is null)
        {
            throw new BadRequestException("seek needs a file inside a volume");
        }

        var offset = Number(request, "offset", 0, long.MaxValue);
        var whence = request.Query.GetValueOrDefault("whence") switch
        {
            "data" => Native.LibC.SEEK_DATA,
            "hole" => Native.LibC.SEEK_HOLE,
            var other => throw new BadRequestException($"whence '{other}' is not data or hole"),
        };
        long found;
        using (var file = VolumeFiles.OpenFile(mountPoint, path.Rest, out _))
        {
            found = Native.LibC.LSeek(file.Value, offset, whence);
            if (found < 0)
            {
                var errno = Native.LibC.Errno;
                if (errno != Native.LibC.ENXIO)
                {
                    throw new BadRequestException($"{VolumeFiles.Show(path.Rest)}: lseek: {Native.LibC.StrError(errno)}");
                }

                found = -1;
            }
        }

        await JsonAsync(stream, w =>
        {
            w.WriteStartObject();
            w.WriteNumber("offset", found);
            w.WriteEndObject();
        }, ct).ConfigureAwait(false);
    }

    /// <summary>A volume's place on its disk, as extents of the volume (logical = offset in the volume): the host
    /// tells which failed disk reads concern a listing of that volume.</summary>
    private static IReadOnlyList<FileExtent>? PlacementOf(VolumeInfo volume) =>
        volume.Placement?.Select(p => new FileExtent(p.VolumeOffset, p.DiskOffset, p.Length)).ToList();

    private async Task ReadAsync(Stream stream, Http.Request request, CancellationToken ct)
    {
        var (path, mountPoint) = await ResolveAsync(PathOf(request), ct).ConfigureAwait(false);
        if (mountPoint is null)
        {
            throw new BadRequestException("read needs a file inside a volume");
        }

        var offset = Number(request, "offset", 0, long.MaxValue);
        var length = (int)Number(request, "length", 0, options.MaxReadBytes);
        using var file = VolumeFiles.OpenFile(mountPoint, path.Rest, out var st);
        var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(Math.Max(1, length));
        try
        {
            var n = offset >= (long)st.Size ? 0 : Native.LibC.PReadAll(file.Value, buffer.AsSpan(0, (int)Math.Min(length, (long)st.Size - offset)), offset);
            await stream.WriteAsync(Http.FormatResponseHead(200, "OK", "application/octet-stream", n), ct).ConfigureAwait(false);
            await stream.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
            await stream.FlushAsync(ct).ConfigureAwait(false);
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private async Task ExtractAsync(Stream stream, Http.Request request, CancellationToken ct)
    {
        var (path, mountPoint) = await ResolveAsync(PathOf(request), ct).ConfigureAwait(false);
        if (mountPoint is null)
        {
            throw new BadRequestException("extract needs a file or directory inside a volume, not a disk or volume level");
        }

        var format = request.Query.GetValueOrDefault("format") ?? "tar";
        if (format is not ("tar" or "plain"))
        {
            throw new BadRequestException($"format '{format}' is not supported (plain, tar)");
        }

        if (!extractions.Wait(0, CancellationToken.None))
        {
            throw new BadRequestException($"maximum concurrent extractions ({options.MaxExtractions}) reached, try again later");
        }

        try
        {
            using var busy = Watchdog.Busy();
            var (parent, name) = VolumeFiles.Resolve(mountPoint, path.Rest);
            using (parent)
            {
                var st = default(Native.StatInfo);
                if (name.Length > 0 && Native.LibC.Stat(parent.Value, name, out st) < 0)
                {
                    throw new BadRequestException($"{VolumeFiles.Show(path.Rest)}: no such file or directory");
                }

                if (format == "plain" && (name.Length == 0 || st.Kind != Native.LibC.S_IFREG))
                {
                    throw new BadRequestException("plain extraction needs a regular file; ask for tar for a directory");
                }

                await stream.WriteAsync(Http.FormatResponseHead(200, "OK", "application/octet-stream", null), ct).ConfigureAwait(false);
                var body = new ChunkedWriteStream(stream);
                var buffered = new BufferedStream(body, 256 * 1024);
                Stream sink = Flag(request, "zstd") ? new CompressionStream(buffered, 3, leaveOpen: true) : buffered;
                if (format == "plain")
                {
                    using var file = VolumeFiles.OpenFile(mountPoint, path.Rest, out var fst);
                    var chunk = new byte[1 << 20];
                    for (long done = 0; done < (long)fst.Size;)
                    {
                        var n = Native.LibC.PReadAll(file.Value, chunk.AsSpan(0, (int)Math.Min(chunk.Length, (long)fst.Size - done)), done);
                        if (n == 0)
                        {
                            break;
                        }

                        await sink.WriteAsync(chunk.AsMemory(0, n), ct).ConfigureAwait(false);
                        done += n;
                    }
                }
                else
                {
                    var tar = new TarWriter(sink);
                    await tar.WriteTreeAsync(parent.Value, name, name.Length == 0 ? "."u8.ToArray() : name, ct).ConfigureAwait(false);
                    await tar.FinishAsync(ct).ConfigureAwait(false);
                }

                if (sink != buffered)
                {
                    await sink.DisposeAsync().ConfigureAwait(false);
                }

                await buffered.FlushAsync(ct).ConfigureAwait(false);
                await body.CompleteAsync(ct).ConfigureAwait(false);
            }
        }
        finally
        {
            extractions.Release();
        }
    }

    private static async Task JsonAsync(Stream stream, Action<Utf8JsonWriter> write, CancellationToken ct)
    {
        using var memory = new MemoryStream();
        using (var w = new Utf8JsonWriter(memory))
        {
            w.WriteStartObject();
            w.WritePropertyName("data");
            write(w);
            w.WriteEndObject();
        }

        await stream.WriteAsync(Http.FormatResponseHead(200, "OK", "application/json;charset=UTF-8", memory.Length), ct).ConfigureAwait(false);
        await stream.WriteAsync(memory.GetBuffer().AsMemory(0, (int)memory.Length), ct).ConfigureAwait(false);
        await stream.FlushAsync(ct).ConfigureAwait(false);
    }

    private static async Task TextAsync(Stream stream, int status, string text, CancellationToken ct)
    {
        var body = Encoding.UTF8.GetBytes(text + "\n");
        await stream.WriteAsync(Http.FormatResponseHead(status, Http.ReasonOf(status), "text/plain;charset=UTF-8", body.Length), ct).ConfigureAwait(false);
        await stream.WriteAsync(body, ct).ConfigureAwait(false);
        await stream.FlushAsync(ct).ConfigureAwait(false);
    }

    private async Task TryAsync(Func<Task> action, WriteTracker? tracker = null)
    {
        try
        {
            await action().ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or OperationCanceledException)
        {
            log($"could not send the error answer: {e.Message}");
        }
    }

    /// <summary>Knows whether an answer has begun: after that an error can only abort the stream.</summary>
    private sealed class WriteTracker(Stream inner) : Stream
    {
        public bool Started { get; private set; }

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => true;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override void Flush() => inner.Flush();

        public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);

        public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, count);

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(buffer, cancellationToken);

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            inner.ReadAsync(buffer, offset, count, cancellationToken);

        public override void Write(byte[] buffer, int offset, int count)
        {
            Started = true;
            inner.Write(buffer, offset, count);
        }

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Started = true;
            return inner.WriteAsync(buffer, cancellationToken);
        }

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();
    }

    public void Dispose()
    {
        Watchdog.Dispose();
        stopping.Dispose();
    }
}
