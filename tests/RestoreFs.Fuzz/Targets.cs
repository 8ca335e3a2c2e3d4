using System.Buffers.Binary;
using System.IO;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using RestoreFs.Datastore;
using RestoreFs.Fuse;
using RestoreFs.Fuse.Protocol;
using RestoreFs.Fuse.Server;
using RestoreFs.Fuse.Tests;
using RestoreFs.Nbd;
using RestoreFs.Pxar;
using RestoreFs.RestoreApi;

namespace RestoreFs.Fuzz;

/// <summary>The fuzz targets: each parser fed raw bytes, with the typed errors it may throw.</summary>
public static partial class Targets
{
    /// <summary>The key every encrypted seed is made with (and every target decrypts with).</summary>
    public static readonly byte[] RawKey = [.. Enumerable.Range(1, 32).Select(i => (byte)i)];

    public static readonly CryptConfig Key = CryptConfig.FromRawKey(RawKey);

    public const string Passphrase = "fuzz-passphrase";

    public static IReadOnlyList<FuzzTarget> All { get; } =
    [
        new("blob", Blob, e => e is DatastoreException),
        new("fixed-index", FixedIdx, e => e is DatastoreException),
        new("dynamic-index", DynamicIdx, e => e is DatastoreException),
        new("manifest", ManifestTarget, e => e is DatastoreException),
        new("keyfile", KeyFileTarget, e => e is DatastoreException),
        new("fuse", Fuse, _ => false),
        new("nbd", Nbd, _ => false),
        new("http-request", HttpRequest, e => e is InvalidDataException or IOException),
        new("http-response", HttpResponse, e => e is InvalidDataException or IOException),
        new("mux", Mux, _ => false),
        new("api-json", Json, IsMalformed),
        new("listing", Listing, IsMalformed),
        new("pxar", Pxar, e => e is PxarException),
        new("pxar-catalog", PxarCatalogTarget, e => e is PxarException),
        new("disk", Disk, _ => false),
        new("md-superblock", MdTarget, _ => false),
        new("thin-metadata", ThinTarget, _ => false),
    ];

    public static FuzzTarget Get(string name) =>
        All.FirstOrDefault(t => t.Name == name) ?? throw new ArgumentException($"no fuzz target '{name}' (targets: {string.Join(", ", All.Select(t => t.Name))})");

    /// <summary>What the restore client turns into "malformed answer" (RestoreClient.IsMalformed) plus IOException.</summary>
    private static bool IsMalformed(Exception e) =>
        e is JsonException or InvalidDataException or FormatException or KeyNotFoundException or InvalidOperationException
            or IndexOutOfRangeException or IOException;

    private static void Blob(byte[] input)
    {
        Try(() => DataBlob.Decode(input, null, "fuzz.blob", 1 << 20));
        Try(() => DataBlob.Decode(input, Key, "fuzz.blob", 1 << 20));
        var kind = DataBlob.KindOf(input);
        var destination = new byte[4096];
        var encrypted = kind is { } k && DataBlob.IsEncrypted(k);
        Try(() => DataBlob.DecodeChunk(input, Key, encrypted, destination, new byte[32], "fuzz.chunk", 0));
        // Past the digest check: the decoder itself must hold the destination size.
        foreach (var size in new[] { 0, 48, 4096, 1 << 20 })
        {
            Try(() => DataBlob.DecodeChunk(input, Key, encrypted, new byte[size], new byte[32], "fuzz.chunk", 0, verifyDigest: false));
        }
    }

    private static void FixedIdx(byte[] input)
    {
        var index = FixedIndex.Parse(input, "fuzz.fidx");
        for (var i = 0; i < index.ChunkCount; i++)
        {
            var length = index.ChunkLength(i);
            if (length <= 0 || length > index.ChunkSize)
            {
                throw new FuzzInvariantException($"chunk {i} has length {length} (chunk size {index.ChunkSize}, size {index.Size})");
            }

            _ = index.DigestHex(i);
        }
    }

    private static readonly string Scratch = MakeScratch();

    private static string MakeScratch()
    {
        var dir = Directory.CreateTempSubdirectory("restorefs-fuzz-").FullName;
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try
            {
                Directory.Delete(dir, recursive: true);
            }
            catch (IOException)
            {
            }
        };
        return dir;
    }

    private static void DynamicIdx(byte[] input)
    {
        var path = Path.Combine(Scratch, "input.didx");
        File.WriteAllBytes(path, input);
        var index = DynamicIndex.Open(path);
        for (var i = 0; i < index.ChunkCount; i++)
        {
            if (index.ChunkEnd(i) <= index.ChunkStart(i) || index.ChunkAt(index.ChunkStart(i)) != i)
            {
                throw new FuzzInvariantException($"chunk {i} spans [{index.ChunkStart(i)}, {index.ChunkEnd(i)})");
            }

            _ = index.Digest(i);
        }
    }

    private static void ManifestTarget(byte[] input)
    {
        var manifest = Manifest.Parse(input, "fuzz/index.json.blob");
        manifest.Verify(null, "fuzz/index.json.blob");
        Try(() => manifest.Verify(Key, "fuzz/index.json.blob"));
        foreach (var file in manifest.Files)
        {
            _ = manifest.Find(file.FileName);
        }
    }

    private static void KeyFileTarget(byte[] input)
    {
        var keyFile = KeyFile.Parse(Encoding.UTF8.GetString(input), "fuzz.key");
        // Deriving with the (bounded) parameters of a mutated file is slow, not interesting: only cheap ones are unwrapped.
        var cheap = keyFile.Kdf switch
        {
            KeyDerivation.None => true,
            KeyDerivation.Scrypt => 128L * keyFile.N * keyFile.R * keyFile.P <= 16L << 20,
            _ => keyFile.Iterations <= 100_000,
        };
        if (cheap)
        {
            Try(() => keyFile.Unwrap(() => Passphrase, "fuzz.key"));
        }
    }

    private static void Try(Action action)
    {
        try
        {
            action();
        }
        catch (DatastoreException)
        {
        }
    }

    // ---- FUSE: FuseSession.Dispatch over a socket pair standing in for /dev/fuse -----------------------------------

    private sealed class FuseRig
    {
        public readonly FuseSession Session;
        public readonly int Ours;
        public readonly Socket Peer;
        public ulong NextUnique = 1;
        public readonly byte[] Buffer = new byte[4 << 20];

        public FuseRig()
        {
            var fds = new int[2];
            if (SocketPair(1 /* AF_UNIX */, 5 /* SOCK_SEQPACKET */, 0, fds) != 0)
            {
                throw new IOException("socketpair failed");
            }

            Ours = fds[0];
            Peer = new Socket(new SafeSocketHandle(fds[1], ownsHandle: true));
            var root = new MemDir(1);
            root.Children["hello"] = new MemFile(2, "hi\n"u8.ToArray());
            var sub = new MemDir(3);
            sub.Children["bad"] = new MemFile(4, new byte[100], fail: true);
            root.Children["dir"] = sub;
            Session = new FuseSession(root, NullLogger.Instance, new FuseAccessPolicy((uint)Environment.ProcessId % 60000 + 1000, AllowOther: false));
        }
    }

    /// <summary>One session for the whole run: the driver runs one input at a time (each on a fresh worker thread).</summary>
    private static readonly Lazy<FuseRig> FuseRigs = new(() => new FuseRig());

    /// <summary>The request's unique is replaced by a fresh one, so every reply can be told apart; every request that
    /// wants a reply gets exactly one, those that do not get none.</summary>
    private static void Fuse(byte[] input)
    {
        var rig = FuseRigs.Value;
        DrainStale(rig);
        var request = (byte[])input.Clone();
        var unique = rig.NextUnique++;
        if (request.Length >= 16)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(request.AsSpan(8), unique);
        }

        rig.Session.Dispatch(rig.Ours, request);
        var wantsReply = request.Length >= FuseConstants.InHeaderSize &&
            Requests.ExpectsReply((FuseOpcode)BinaryPrimitives.ReadUInt32LittleEndian(request.AsSpan(4)));
        var buffer = rig.Buffer;
        if (wantsReply)
        {
            rig.Peer.ReceiveTimeout = 1500;
            int n;
            try
            {
                n = rig.Peer.Receive(buffer);
            }
            catch (SocketException)
            {
                throw new FuzzInvariantException("a request that wants a reply got none");
            }

            CheckReply(buffer.AsSpan(0, n), unique);
        }

        if (rig.Peer.Poll(2_000, SelectMode.SelectRead)) // a later one is caught before the next input
        {
            var n = rig.Peer.Receive(buffer);
            throw new FuzzInvariantException($"{(wantsReply ? "a second" : "an unasked")} reply of {n} bytes");
        }
    }

    private static void CheckReply(ReadOnlySpan<byte> reply, ulong unique)
    {
        if (reply.Length < FuseConstants.OutHeaderSize || BinaryPrimitives.ReadUInt32LittleEndian(reply) != (uint)reply.Length)
        {
            throw new FuzzInvariantException($"reply of {reply.Length} bytes with a wrong length field");
        }

        var answered = BinaryPrimitives.ReadUInt64LittleEndian(reply[8..]);
        if (answered != unique)
        {
            throw new FuzzInvariantException($"reply to request {answered}, expected {unique}");
        }

        var error = BinaryPrimitives.ReadInt32LittleEndian(reply[4..]);
        if (error > 0 || error < -4095 || (error != 0 && reply.Length != FuseConstants.OutHeaderSize))
        {
            throw new FuzzInvariantException($"reply with error field {error} and {reply.Length} bytes");
        }
    }

    private static void DrainStale(FuseRig rig)
    {
        if (rig.Peer.Poll(0, SelectMode.SelectRead))
        {
            var n = rig.Peer.Receive(rig.Buffer);
            throw new FuzzInvariantException($"a late reply of {n} bytes to an earlier request");
        }
    }

    [LibraryImport("libc", EntryPoint = "socketpair", SetLastError = true)]
    private static partial int SocketPair(int domain, int type, int protocol, [Out] int[] fds);

    // ---- NBD: the server over a unix socket; a failure is an error the server logs as unexpected ----------------------

    private sealed class NbdRig
    {
        public readonly CapturingLogs Logs = new();
        public readonly string SocketPath;

        public NbdRig()
        {
            SocketPath = Path.Combine(Scratch, "nbd.sock");
            var server = new NbdServer(new NbdServerOptions { UnixSocketPath = SocketPath, MaxRequestBytes = 1 << 20, MaxInFlightBytes = 4 << 20 }, Logs);
            var data = new byte[3 << 20];
            new Random(5).NextBytes(data.AsSpan(0, 1 << 20));
            server.AddExport("disk", new MemorySource(data), "a fuzz disk");
            server.AddExport("other", new MemorySource(new byte[4096]));
            server.StartAsync(CancellationToken.None).GetAwaiter().GetResult();
        }
    }

    private static readonly Lazy<NbdRig> NbdRigs = new(() => new NbdRig());

    private static void Nbd(byte[] input)
    {
        var rig = NbdRigs.Value;
        using (var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            socket.Connect(new UnixDomainSocketEndPoint(rig.SocketPath));
            socket.ReceiveTimeout = 1500;
            socket.SendTimeout = 1500;
            var reader = Task.Run(() =>
            {
                var buffer = new byte[256 * 1024];
                try
                {
                    while (socket.Receive(buffer) > 0)
                    {
                    }
                }
                catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
                {
                }
            });
            try
            {
                socket.Send(input);
                socket.Shutdown(SocketShutdown.Send);
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset or SocketError.Shutdown)
            {
                // the server gave up on the client early: fine
            }

            try
            {
                reader.GetAwaiter().GetResult();
            }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.TimedOut || e.SocketErrorCode == SocketError.WouldBlock)
            {
                throw new FuzzInvariantException("the server neither answered nor closed after the client's end of input");
            }
        }

        if (rig.Logs.Errors.TryDequeue(out var error))
        {
            rig.Logs.Errors.Clear();
            throw new FuzzInvariantException($"the server logged an unexpected failure: {error}");
        }
    }

    private sealed class MemorySource(byte[] data) : IBlockSource
    {
        public long Size => data.Length;

        public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct)
        {
            if (offset < 0 || offset + destination.Length > data.Length)
            {
                throw new FuzzInvariantException($"the server read [{offset}, +{destination.Length}) of a {data.Length}-byte export");
            }

            data.AsSpan((int)offset, destination.Length).CopyTo(destination.Span);
            return ValueTask.CompletedTask;
        }

        public IEnumerable<BlockExtent> GetExtents(long offset, long length)
        {
            var end = Math.Min(Size, offset + length);
            for (var position = offset; position < end;)
            {
                var next = Math.Min(end, (position / (1 << 20) + 1) * (1 << 20));
                yield return new BlockExtent(position, next - position, position >= 1 << 20);
                position = next;
            }
        }
    }

    /// <summary>Collects error-level log lines (the NBD server logs an unexpected exception at Error).</summary>
    private sealed class CapturingLogs : ILoggerFactory, ILogger
    {
        public readonly System.Collections.Concurrent.ConcurrentQueue<string> Errors = new();

        public ILogger CreateLogger(string categoryName) => this;

        public void AddProvider(ILoggerProvider provider)
        {
        }

        public void Dispose()
        {
        }

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Error;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (logLevel >= LogLevel.Error)
            {
                Errors.Enqueue(formatter(state, exception) + (exception is null ? "" : "\n" + exception));
            }
        }
    }

    // ---- Restore API: HTTP heads and bodies, mux frames, JSON answers and listings ------------------------------------

    private static void HttpRequest(byte[] input)
    {
        var reader = new BufferedReader(new MemoryStream(input, writable: false));
        for (var i = 0; i < 8; i++)
        {
            var request = Http.ReadRequestAsync(reader, CancellationToken.None).GetAwaiter().GetResult();
            if (request is null)
            {
                return;
            }
        }
    }

    private static void HttpResponse(byte[] input)
    {
        var reader = new BufferedReader(new MemoryStream(input, writable: false));
        for (var i = 0; i < 4; i++)
        {
            var response = Http.ReadResponseAsync(reader, CancellationToken.None).GetAwaiter().GetResult();
            response.Body.CopyTo(Stream.Null);
        }
    }

    /// <summary>The daemon side of the multiplexer fed the host's bytes: it must end with no error or a typed one.</summary>
    private static void Mux(byte[] input)
    {
        var mux = MuxConnection.Serve(new InputStream(input));
        var drain = Task.Run(async () =>
        {
            while (await mux.AcceptAsync(CancellationToken.None) is { } stream)
            {
                try
                {
                    await stream.CopyToAsync(Stream.Null);
                }
                catch (IOException)
                {
                }
            }
        });
        if (!mux.Closed.Wait(TimeSpan.FromSeconds(1.5)))
        {
            throw new FuzzInvariantException("the multiplexer did not end at the end of its input");
        }

        if (mux.Error is { } error && error is not (IOException or InvalidDataException))
        {
            throw new FuzzInvariantException($"the multiplexer ended with {error}");
        }

        mux.DisposeAsync().AsTask().GetAwaiter().GetResult();
        if (!drain.Wait(TimeSpan.FromSeconds(1.5)))
        {
            throw new FuzzInvariantException("a multiplexed stream did not end after its connection closed");
        }

        if (drain.Exception is { } failed && failed.InnerException is not (System.Threading.Channels.ChannelClosedException or IOException or ObjectDisposedException))
        {
            throw new FuzzInvariantException($"accepting streams failed: {failed.InnerException}");
        }
    }

    private static void Json(byte[] input)
    {
        Malformed(() => ApiJson.ReadEntry(input));
        Malformed(() => ApiJson.ReadStatus(input));
        Malformed(() => ApiJson.ReadXattrsAnswer(input));
        Malformed(() => ApiJson.ReadSeekAnswer(input));
    }

    private static void Malformed(Action action)
    {
        try
        {
            action();
        }
        catch (Exception e) when (IsMalformed(e))
        {
        }
    }

    private static void Listing(byte[] input)
    {
        var reader = new EntryStreamReader(new MemoryStream(input, writable: false));
        var entries = reader.ReadAllAsync(CancellationToken.None).GetAsyncEnumerator();
        try
        {
            while (entries.MoveNextAsync().AsTask().GetAwaiter().GetResult())
            {
                _ = entries.Current;
            }
        }
        finally
        {
            entries.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    // ---- pxar: a metadata archive (v1 unified or v2 split, with the vectors' payload stream) and a catalog ------------

    /// <summary>The payload stream of the split test vector (tests/RestoreFs.Pxar.Tests/Vectors/v2.ppxar).</summary>
    private static readonly byte[] PxarPayload = [210, 78, 74, 25, 194, 104, 76, 131, 16, 0, 0, 0, 0, 0, 0, 0, 37, 26, 124, 11, 27, 122, 20, 40, 22, 0, 0, 0, 0, 0, 0, 0, 104, 101, 108, 108, 111, 10, 37, 26, 124, 11, 27, 122, 20, 40, 17, 0, 0, 0, 0, 0, 0, 0, 120, 181, 129, 76, 152, 139, 183, 114, 108, 16, 0, 0, 0, 0, 0, 0, 0];

    private static void Pxar(byte[] input)
    {
        using var archive = PxarArchive.Open(new MemoryPxarSource(input, "fuzz.mpxar"), new MemoryPxarSource(PxarPayload, "fuzz.ppxar"));
        var pending = new Stack<PxarEntry>([archive.Root]);
        var buffer = new byte[64 * 1024];
        for (var visited = 0; pending.Count > 0 && visited < 2000; visited++)
        {
            var entry = pending.Pop();
            if (entry.IsDirectory)
            {
                _ = archive.GoodbyeRecords(entry);
                foreach (var child in archive.List(entry))
                {
                    pending.Push(child);
                    _ = archive.Lookup(entry, child.Name);
                }
            }
            else if (entry.Kind == PxarEntryKind.File)
            {
                _ = archive.Read(entry, 0, buffer);
            }
        }
    }

    /// <summary>The single-file archive the catalog seed describes (the corpus's v1.pxar).</summary>
    private static readonly Lazy<byte[]> PxarV1 = new(() => File.ReadAllBytes(Path.Combine(Driver.CorpusDirectory("pxar"), "v1.pxar")));

    private static void PxarCatalogTarget(byte[] input)
    {
        var catalog = new PxarCatalog(new MemoryPxarSource(input, "fuzz.pcat1"));
        var pending = new Stack<IReadOnlyList<PxarCatalogEntry>>([catalog.Root]);
        for (var blocks = 0; pending.Count > 0 && blocks < 500; blocks++)
        {
            foreach (var entry in pending.Pop())
            {
                if (entry.ChildBlockOffset >= 0)
                {
                    pending.Push(catalog.ReadBlock(entry.ChildBlockOffset));
                }
            }
        }

        // Hard links counted from this catalog against the archive it was made for: every archive block of its root.
        using var archive = PxarArchive.Open(new MemoryPxarSource(PxarV1.Value, "fuzz.pxar"));
        foreach (var entry in catalog.Root.Where(e => e.Type == PxarCatalogEntryType.Directory))
        {
            foreach (var (_, n) in archive.HardlinkCounts(catalog, entry.ChildBlockOffset))
            {
                if (n < 2)
                {
                    throw new InvalidOperationException($"a hard-link count of {n}");
                }
            }
        }
    }

    /// <summary>A channel that reads the input, then ends; what is written to it is dropped.</summary>
    private sealed class InputStream(byte[] input) : Stream
    {
        private readonly MemoryStream source = new(input, writable: false);

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => true;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override void Flush()
        {
        }

        public override int Read(byte[] buffer, int offset, int count) => source.Read(buffer, offset, count);

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count)
        {
        }
    }
}
