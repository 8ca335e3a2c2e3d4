using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using RestoreFs.Fuse.Kernel;
using RestoreFs.Fuse.Nodes;
using RestoreFs.Fuse.Protocol;

namespace RestoreFs.Fuse.Server;

/// <summary>
/// One FUSE connection: answers INIT, then serves requests on several cloned descriptors, one dedicated thread each.
/// Cheap requests are answered inline; a node call that does not complete synchronously continues as a task and
/// replies on the descriptor its request came from. Every error is per request.
/// </summary>
internal sealed class FuseSession
{
    /// <summary>Reply buffers (READ, READDIR): a pool of a few arrays per size, so the memory of a burst of large reads
    /// is not kept for the life of the mount as the runtime's shared per-core pools would.</summary>
    private static readonly ArrayPool<byte> ReplyBuffers = ArrayPool<byte>.Create(FuseConstants.OutHeaderSize + FuseConstants.MaxRead, 4);

    private readonly FuseNode root;
    private readonly ILogger log;
    private readonly NodeTable nodes;
    private readonly HandleTable<IFuseFileHandle> files = new();
    private readonly HandleTable<DirectoryHandle> directories = new();
    private readonly ConcurrentDictionary<ulong, CancellationTokenSource> inflight = new();
    private readonly TaskCompletionSource completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly List<int> descriptors = [];
    private readonly FuseAccessPolicy access;
    private readonly bool trace;
    private int readersLeft;
    private int idleReaders;
    private int pollFd = -1;
    private int polling;
    private long pollTicks;
    private long polledRequests;
    private int malformedLogged;

    // Active readers and followers (with polling on, see ReaderLoop): followers wait on `followers`, not in read().
    private readonly Gate followers = new();
    private readonly ManualResetEventSlim watchdogWake = new(false);
    private ReaderSlot[] slots = [];
    private long handOffTicks;
    private int watchdogParked;
    private int activeReaders;
    private int waitingFollowers;
    private uint lastCaller;
    private long lastCallerAt;
    private long wideUntil;
    private long wideSpells;
    private long callerWindowTicks;
    private long wideTicks;
    private long handOffs;
    private volatile bool closing;

    public FuseSession(FuseNode root, ILogger log, FuseAccessPolicy access, bool trace = false)
    {
        this.root = root;
        this.log = log;
        this.access = access;
        this.trace = trace && log.IsEnabled(LogLevel.Trace);
        nodes = new NodeTable(root);
    }

    public Task Completion => completion.Task;

    public InitResult Init { get; private set; }

    public int NodeCount => nodes.Count;

    /// <summary>Requests taken by a polling reader rather than one woken in read() (for tests and diagnostics).</summary>
    public long PolledRequests => Interlocked.Read(ref polledRequests);

    /// <summary>Reads and answers INIT on <paramref name="fd"/> (must happen before anything touches the mount).</summary>
    public void HandleInit(int fd)
    {
        var buffer = GC.AllocateArray<byte>(FuseConstants.RequestBufferSize, pinned: true);
        while (true)
        {
            var n = ReadRequest(fd, buffer);
            if (n < 0)
            {
                throw new IOException($"the kernel closed the FUSE connection before INIT ({LibC.ErrorText(-n)})");
            }

            var header = InHeader.Parse(buffer);
            if (header.Opcode != FuseOpcode.Init)
            {
                throw new IOException($"expected INIT from the kernel, got {header.Opcode}");
            }

            var major = BinaryPrimitives.ReadUInt32LittleEndian(buffer.AsSpan(FuseConstants.InHeaderSize));
            var reply = new byte[FuseConstants.OutHeaderSize + FuseConstants.InitOutSize];
            if (major > FuseConstants.KernelMajor)
            {
                // Newer major: answer with ours and wait for the kernel's second INIT.
                BinaryPrimitives.WriteUInt32LittleEndian(reply.AsSpan(16), FuseConstants.KernelMajor);
                Wire.WriteOutHeader(reply, reply.Length, 0, header.Unique);
                WriteReply(fd, reply);
                continue;
            }

            var result = Wire.Negotiate(buffer.AsSpan(FuseConstants.InHeaderSize));
            if (major < FuseConstants.KernelMajor || result.KernelMinor < FuseConstants.MinimumMinor)
            {
                Wire.WriteOutHeader(reply, FuseConstants.OutHeaderSize, Errno.EPROTO, header.Unique);
                WriteReply(fd, reply.AsSpan(0, FuseConstants.OutHeaderSize));
                throw new IOException($"the kernel speaks FUSE {major}.{result.KernelMinor}; RestoreFs needs 7.{FuseConstants.MinimumMinor} or newer");
            }

            var length = Wire.WriteInitOut(reply.AsSpan(FuseConstants.OutHeaderSize), result, maxBackground: 64);
            Wire.WriteOutHeader(reply, FuseConstants.OutHeaderSize + length, 0, header.Unique);
            WriteReply(fd, reply.AsSpan(0, FuseConstants.OutHeaderSize + length));
            Init = result;
            log.LogDebug("FUSE INIT: kernel 7.{KernelMinor}, answered 7.{Minor}, flags {Flags:x8}", result.KernelMinor, result.Minor, result.Flags);
            return;
        }
    }

    /// <summary>
    /// Starts <paramref name="readers"/> threads: one on <paramref name="fd"/>, the others on clones of it. With
    /// <paramref name="pollMicroseconds"/> above 0 (and more than one reader), the readers take turns: one leader reads
    /// the device (after a metadata request it first polls a non-blocking clone for that long, see <see cref="PollRead"/>)
    /// while the others wait, and a watchdog lets a follower lead whenever a handler has held the leader for more than
    /// <see cref="HandOffMicroseconds"/>; see <see cref="ReaderLoop"/>. With 0, every reader sleeps in read().
    /// </summary>
    public void Start(int fd, int readers, int pollMicroseconds = 0)
    {
        descriptors.Add(fd);
        for (var i = 1; i < readers; i++)
        {
            var clone = CloneDevice(fd);
            if (clone < 0)
            {
                break;
            }

            descriptors.Add(clone);
        }

        if (pollMicroseconds > 0 && descriptors.Count > 1)
        {
            var clone = CloneDevice(fd);
            if (clone >= 0 && LibC.Fcntl(clone, LibC.FSetFl, LibC.ORdWr | LibC.ONonBlock) == 0)
            {
                pollFd = clone;
                pollTicks = pollMicroseconds * Stopwatch.Frequency / 1_000_000;
                handOffTicks = HandOffMicroseconds * Stopwatch.Frequency / 1_000_000;
            }
            else if (clone >= 0)
            {
                log.LogWarning("the FUSE descriptor for polling cannot be made non-blocking ({Error}); readers only sleep in read()",
                    LibC.ErrorText(Marshal.GetLastPInvokeError()));
                LibC.Close(clone);
            }
        }

        var readerFds = descriptors.ToArray();
        if (pollFd >= 0)
        {
            descriptors.Add(pollFd);
        }

        readersLeft = readerFds.Length;
        activeReaders = 1;
        callerWindowTicks = CallerWindowMicroseconds * Stopwatch.Frequency / 1_000_000;
        wideTicks = WideMilliseconds * Stopwatch.Frequency / 1000;
        slots = readerFds.Select(_ => new ReaderSlot()).ToArray();
        for (var i = 0; i < readerFds.Length; i++)
        {
            var (d, slot, leader) = (readerFds[i], slots[i], i == 0 || pollFd < 0);
            var thread = new Thread(() => ReaderLoop(d, slot, leader)) { IsBackground = true, Name = $"fuse-reader-{d}" };
            thread.Start();
        }

        if (pollFd >= 0)
        {
            new Thread(Watchdog) { IsBackground = true, Name = "fuse-watchdog" }.Start();
        }
    }

    /// <summary>How long a handler may hold the leading reader before a follower takes over the device.</summary>
    public const int HandOffMicroseconds = 1000;

    /// <summary>Times the watchdog let a follower lead because a handler held the leader (tests, diagnostics).</summary>
    public long HandOffs => Interlocked.Read(ref handOffs);

    /// <summary>
    /// Where followers wait: a counting semaphore that blocks at once. SemaphoreSlim spins (yielding the core) before
    /// it blocks, and readers become followers and back many times a second: its spinning took a core's share from
    /// the callers.
    /// </summary>
    private sealed class Gate
    {
        private int count;

        public void Wait()
        {
            lock (this)
            {
                while (count == 0)
                {
                    Monitor.Wait(this);
                }

                count--;
            }
        }

        public void Release(int n = 1)
        {
            lock (this)
            {
                count += n;
                if (n == 1)
                {
                    Monitor.Pulse(this);
                }
                else
                {
                    Monitor.PulseAll(this);
                }
            }
        }
    }

    /// <summary>A reader's state the watchdog looks at: since when its current handler runs (0: none), and whether it
    /// has been told to become a follower once that handler returns.</summary>
    private sealed class ReaderSlot
    {
        public long BusySince;
        public int Demoted;
    }

    /// <summary>
    /// Reads one request: its length, or -errno. With <paramref name="until"/> (a <see cref="Stopwatch"/> timestamp) the
    /// descriptor is the non-blocking polled clone: nothing to read yields the core and tries again, and 0 comes back
    /// once that time has passed.
    /// </summary>
    private static unsafe int ReadRequest(int fd, byte[] buffer, long until = long.MaxValue)
    {
        fixed (byte* p = buffer)
        {
            while (true)
            {
                var n = LibC.Read(fd, p, buffer.Length);
                if (n >= 0)
                {
                    return (int)n;
                }

                var errno = Marshal.GetLastPInvokeError();
                if (errno is not (Errno.EINTR or Errno.EAGAIN or Errno.ENOENT))
                {
                    return -errno;
                }

                if (until != long.MaxValue)
                {
                    if (Stopwatch.GetTimestamp() > until)
                    {
                        return 0;
                    }

                    Thread.Yield();
                }
            }
        }
    }

    /// <summary>A second descriptor on the same connection (FUSE_DEV_IOC_CLONE), or -1 (logged).</summary>
    private int CloneDevice(int fd)
    {
        var clone = LibC.Open("/dev/fuse", LibC.ORdWr | LibC.OCloExec);
        var original = (uint)fd;
        if (clone < 0 || LibC.Ioctl(clone, LibC.FuseDevIocClone, ref original) != 0)
        {
            log.LogWarning("cloning the FUSE descriptor failed ({Error}); serving with {Readers} reader(s)",
                LibC.ErrorText(Marshal.GetLastPInvokeError()), descriptors.Count);
            if (clone >= 0)
            {
                LibC.Close(clone);
            }

            return -1;
        }

        return clone;
    }

    /// <summary>
    /// Reads the non-blocking clone until a request comes or the poll window ends (then 0). One reader at a time
    /// does this, right after answering a metadata request. Requests of one process come one after another (cp: lookup,
    /// open, read, listxattr twice, getxattr, release per file), and a reader asleep in read() costs each of them
    /// two wake-ups: the kernel wakes the reader, the reply wakes the caller. On a virtual machine a wake-up of an
    /// idle core is the dearest part of a request. A reader that is still running when the next request arrives
    /// takes it without the first. Between reads it yields the core, so decoders and the caller lose no time to it.
    /// </summary>
    private int PollRead(byte[] buffer) => ReadRequest(pollFd, buffer, Stopwatch.GetTimestamp() + pollTicks);

    /// <summary>
    /// A reader thread. Without polling every reader sleeps in read() on its own descriptor, and the kernel wakes one
    /// of them per request. With polling the readers take turns: the active ones read (polling a non-blocking clone
    /// first after a metadata request) and answer inline, the others wait as followers on a semaphore the kernel knows
    /// nothing of. Only a reader that is the sole active one goes to sleep in read(), so a request never wakes a
    /// sleeper that then finds it taken by a poller (one reader polls at a time). When several processes send
    /// requests at once every reader reads the device for a while (see <see cref="NoteCaller"/>); after that, an
    /// active reader that finds nothing to do while another is active becomes a follower again. A handler that blocks
    /// (a chunk to decode, the restore VM to ask) would leave the device unread: the <see cref="Watchdog"/> then lets
    /// a follower in, and the reader it replaced becomes a follower when its handler returns.
    /// </summary>
    private void ReaderLoop(int fd, ReaderSlot slot, bool active)
    {
        var buffer = GC.AllocateArray<byte>(FuseConstants.RequestBufferSize, pinned: true);
        var pollAfter = true;
        try
        {
            while (true)
            {
                if (!active)
                {
                    Interlocked.Increment(ref idleReaders);
                    Interlocked.Increment(ref waitingFollowers);
                    followers.Wait();
                    Interlocked.Decrement(ref waitingFollowers);
                    Interlocked.Decrement(ref idleReaders);
                    if (closing)
                    {
                        break;
                    }

                    active = true; // counted in activeReaders by whoever let it in
                }

                // A request read from the polled clone is answered on it: the kernel matches a reply with the
                // request on the descriptor that read it.
                var from = fd;
                var n = 0;
                if (pollFd >= 0)
                {
                    if (pollAfter && Interlocked.CompareExchange(ref polling, 1, 0) == 0)
                    {
                        n = PollRead(buffer);
                        Volatile.Write(ref polling, 0);
                        if (n > 0)
                        {
                            from = pollFd;
                            Interlocked.Increment(ref polledRequests);
                        }
                    }

                    if (n == 0 && !MaySleep())
                    {
                        active = false;
                        continue;
                    }
                }

                if (n == 0)
                {
                    Interlocked.Increment(ref idleReaders);
                    n = ReadRequest(fd, buffer);
                    Interlocked.Decrement(ref idleReaders);
                }

                if (n < 0)
                {
                    if (-n is not (Errno.ENODEV or Errno.ECONNABORTED))
                    {
                        log.LogWarning("reading /dev/fuse failed: {Error}", LibC.ErrorText(-n));
                    }

                    closing = true;
                    followers.Release(slots.Length);
                    watchdogWake.Set();
                    break;
                }

                if (n < FuseConstants.InHeaderSize)
                {
                    continue;
                }

                // Poll after metadata requests only. A data read's caller waits on storage, and the kernel's
                // read-ahead sends the next reads without waiting: a poller would only take a core from decoding.
                pollAfter = (FuseOpcode)BinaryPrimitives.ReadUInt32LittleEndian(buffer.AsSpan(4)) != FuseOpcode.Read;
                if (pollFd >= 0)
                {
                    // Full fences on both sides (see Watchdog): either it sees this handler, or this sees it parked.
                    var now = Stopwatch.GetTimestamp();
                    Interlocked.Exchange(ref slot.BusySince, now);
                    NoteCaller(BinaryPrimitives.ReadUInt32LittleEndian(buffer.AsSpan(32)), now);
                    if (Volatile.Read(ref watchdogParked) == 1)
                    {
                        watchdogWake.Set();
                    }
                }

                try
                {
                    Dispatch(from, buffer.AsSpan(0, n));
                }
                catch (Exception e)
                {
                    log.LogError(e, "FUSE request handling failed");
                }

                if (pollFd >= 0)
                {
                    Volatile.Write(ref slot.BusySince, 0);
                    if (Interlocked.Exchange(ref slot.Demoted, 0) == 1)
                    {
                        active = false; // no longer counted: the watchdog let a follower in for it
                    }
                }
            }
        }
        finally
        {
            if (Interlocked.Decrement(ref readersLeft) == 0)
            {
                Shutdown();
            }
        }
    }

    /// <summary>True when this is the only active reader, or callers come at once (it goes to sleep in read());
    /// otherwise it stops being counted as active and becomes a follower.</summary>
    private bool MaySleep()
    {
        if (Stopwatch.GetTimestamp() < Volatile.Read(ref wideUntil))
        {
            return true;
        }

        while (true)
        {
            var active = Volatile.Read(ref activeReaders);
            if (active <= 1)
            {
                return true;
            }

            if (Interlocked.CompareExchange(ref activeReaders, active - 1, active) == active)
            {
                return false;
            }
        }
    }

    /// <summary>
    /// Notes who sent a request. Requests of a second process within <see cref="CallerWindowMicroseconds"/> of another's
    /// mean several callers at once: for the next <see cref="WideMilliseconds"/> every reader reads the device, so
    /// their requests are answered side by side, not one after another by the active reader (followers are let in
    /// now, and no active reader becomes a follower until the time is up). Requests the kernel sends on its own
    /// (pid 0, e.g. RELEASE after a close) do not count.
    /// </summary>
    private void NoteCaller(uint pid, long now)
    {
        if (pid == 0)
        {
            return;
        }

        var last = lastCaller;
        var at = Volatile.Read(ref lastCallerAt);
        lastCaller = pid;
        Volatile.Write(ref lastCallerAt, now);
        if (last == pid || now - at > callerWindowTicks)
        {
            return;
        }

        var wideBefore = Interlocked.Exchange(ref wideUntil, now + wideTicks);
        if (wideBefore < now)
        {
            Interlocked.Increment(ref wideSpells);
            var waiting = Volatile.Read(ref waitingFollowers);
            if (waiting > 0)
            {
                Interlocked.Add(ref activeReaders, waiting);
                followers.Release(waiting);
            }
        }
    }

    /// <summary>Requests of two processes this close together count as callers at once (see <see cref="NoteCaller"/>).</summary>
    public const int CallerWindowMicroseconds = 1000;

    /// <summary>How long every reader reads the device after callers came at once (see <see cref="NoteCaller"/>).</summary>
    public const int WideMilliseconds = 50;

    /// <summary>
    /// Looks at the readers every millisecond while requests are handled: when a handler has held a leading reader for
    /// longer than <see cref="HandOffMicroseconds"/>, one follower is let in to read the device (at most one per
    /// blocked handler). Looks that find no handler running come less often (up to 16 ms apart), and after 100 ms of
    /// them it parks until the next request.
    /// </summary>
    private void Watchdog()
    {
        var pause = 1;
        var quiet = 0;
        while (!closing)
        {
            if (quiet >= 100)
            {
                Interlocked.Exchange(ref watchdogParked, 1);
                if (!AnyBusy())
                {
                    watchdogWake.Wait();
                }

                watchdogWake.Reset();
                Interlocked.Exchange(ref watchdogParked, 0);
                (pause, quiet) = (1, 0);
                continue;
            }

            Thread.Sleep(pause);
            var now = Stopwatch.GetTimestamp();
            var busy = false;
            foreach (var slot in slots)
            {
                var since = Volatile.Read(ref slot.BusySince);
                if (since == 0)
                {
                    continue;
                }

                busy = true;
                if (now - since > handOffTicks && Interlocked.CompareExchange(ref slot.Demoted, 1, 0) == 0)
                {
                    // The follower takes the blocked reader's place in activeReaders.
                    Interlocked.Increment(ref handOffs);
                    followers.Release();
                }
            }

            // Between requests (reads a few milliseconds apart) the looks grow sparse: a woken watchdog costs the
            // callers' cores too. A handler found running brings them back to every millisecond.
            (pause, quiet) = busy ? (1, 0) : (Math.Min(pause * 2, 16), quiet + pause);
        }
    }

    private bool AnyBusy()
    {
        foreach (var slot in slots)
        {
            if (Volatile.Read(ref slot.BusySince) != 0)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// Starts a handler whose node code may block on storage. It runs right here on the reader thread while another
    /// reader is waiting in read() for the next request, or waits as a follower the watchdog lets in when the handler
    /// blocks, so the kernel's queue is always served; when none is, it goes to the thread pool. Running in place
    /// saves a hand-over per request (a wake-up of a pool thread): during a `find` most requests are lookups and
    /// opendirs answered from memory. Handlers answer every outcome themselves.
    /// </summary>
    private void Run(Func<Task> handler)
    {
        if (Volatile.Read(ref idleReaders) > 0)
        {
            _ = handler();
        }
        else
        {
            _ = Task.Run(handler);
        }
    }

    private void Shutdown()
    {
        foreach (var fd in descriptors)
        {
            LibC.Close(fd);
        }

        foreach (var cts in inflight.Values)
        {
            cts.Cancel();
        }

        foreach (var handle in files.RemoveAll())
        {
            _ = handle.DisposeAsync().AsTask().ContinueWith(t => _ = t.Exception, TaskScheduler.Default);
        }

        directories.RemoveAll();
        log.LogDebug("FUSE connection closed: {Polled} requests taken by polling, {HandOffs} hand-offs to a follower, {Spells} spells of callers at once",
            PolledRequests, HandOffs, Interlocked.Read(ref wideSpells));
        completion.TrySetResult();
    }

    /// <summary>Decodes one request and answers it (now or from a task); every request that wants an answer gets exactly one.</summary>
    internal void Dispatch(int fd, ReadOnlySpan<byte> request)
    {
        if (request.Length < FuseConstants.InHeaderSize)
        {
            return; // not even a header: nothing names the request to answer
        }

        var h = InHeader.Parse(request);
        var wantsReply = Requests.ExpectsReply(h.Opcode);
        if (h.Length < FuseConstants.InHeaderSize || h.Length > request.Length)
        {
            Malformed(fd, h, wantsReply, $"length field {h.Length} but {request.Length} bytes arrived");
            return;
        }

        var arg = request[FuseConstants.InHeaderSize..(int)h.Length];
        if (trace)
        {
            TraceRequest(h, arg);
        }

        if (wantsReply && h.Opcode != FuseOpcode.Destroy && !access.Allows(h.Uid))
        {
            ReplyError(fd, h.Unique, Errno.EACCES);
            return;
        }

        if (arg.Length < Requests.FixedLength(h.Opcode))
        {
            Malformed(fd, h, wantsReply, $"{arg.Length} argument bytes, {h.Opcode} needs {Requests.FixedLength(h.Opcode)}");
            return;
        }

        try
        {
            if (!DispatchDecoded(fd, h, arg))
            {
                Malformed(fd, h, wantsReply, "argument does not decode");
            }
        }
        catch (Exception e)
        {
            // A bug of ours, not of the request: still answer, so that the caller does not hang.
            log.LogError(e, "FUSE {Opcode} request {Unique} failed before it was answered", h.Opcode, h.Unique);
            if (wantsReply)
            {
                ReplyError(fd, h.Unique, Errno.EIO);
            }
        }
    }

    private void Malformed(int fd, InHeader h, bool wantsReply, string why)
    {
        if (Interlocked.Increment(ref malformedLogged) <= 16)
        {
            log.LogWarning("Malformed FUSE request {Unique} ({Opcode}): {Reason}", h.Unique, h.Opcode, why);
        }

        if (wantsReply)
        {
            ReplyError(fd, h.Unique, Errno.EIO);
        }
    }

    private void TraceRequest(InHeader h, ReadOnlySpan<byte> arg)
    {
        var detail = h.Opcode is FuseOpcode.Lookup && Requests.TryName(arg, out var name)
            ? "\"" + System.Text.Encoding.UTF8.GetString(name) + "\""
            : string.Empty;
        log.LogTrace("rx {Unique} {Opcode} n{Node} {Detail} uid {Uid} pid {Pid}", h.Unique, h.Opcode, h.NodeId, detail, h.Uid, h.Pid);
    }

    /// <summary>False when the argument does not decode (the caller answers EIO).</summary>
    private bool DispatchDecoded(int fd, InHeader h, ReadOnlySpan<byte> arg)
    {
        var ctx = new FuseRequestContext { Uid = h.Uid, Gid = h.Gid, Pid = h.Pid, Unique = h.Unique };
        switch (h.Opcode)
        {
            case FuseOpcode.Lookup:
            {
                if (!Requests.TryName(arg, out var name))
                {
                    return false;
                }

                Run(() => LookupAsync(fd, h, name, ctx));
                return true;
            }

            case FuseOpcode.Forget:
                nodes.Forget(h.NodeId, Requests.TryU64(arg, out var n) ? n : 0);
                return true;
            case FuseOpcode.BatchForget:
            {
                if (!Requests.TryBatchForget(arg, out var items))
                {
                    return false;
                }

                foreach (var (node, count) in items)
                {
                    nodes.Forget(node, count);
                }

                return true;
            }

            case FuseOpcode.GetAttr:
                GetAttr(fd, h);
                return true;
            case FuseOpcode.ReadLink:
                Run(() => ReadLinkAsync(fd, h, ctx));
                return true;
            case FuseOpcode.Open:
            {
                _ = Requests.TryU32(arg, out var flags);
                Run(() => OpenAsync(fd, h, flags, ctx));
                return true;
            }

            case FuseOpcode.Read:
            {
                if (!Requests.TryRead(arg, out var read))
                {
                    return false;
                }

                _ = ReadAsync(fd, h, read.Fh, read.Offset, (int)Math.Min(read.Size, (uint)FuseConstants.MaxRead));
                return true;
            }

            case FuseOpcode.Release:
            {
                if (!Requests.TryRelease(arg, out var release))
                {
                    return false;
                }

                Release(fd, h, release.Fh);
                return true;
            }

            case FuseOpcode.OpenDir:
                Run(() => OpenDirAsync(fd, h, ctx));
                return true;
            case FuseOpcode.ReadDir:
            case FuseOpcode.ReadDirPlus:
            {
                if (!Requests.TryRead(arg, out var read))
                {
                    return false;
                }

                var size = (int)Math.Min(read.Size, (uint)FuseConstants.MaxRead);
                var handle = directories.Get(read.Fh);
                if (handle is { Entries: null })
                {
                    Run(() => ListThenReadDirAsync(fd, h, ctx, handle, (ulong)read.Offset, size));
                    return true;
                }

                ReadDir(fd, h, handle, (ulong)read.Offset, size, h.Opcode == FuseOpcode.ReadDirPlus);
                return true;
            }

            case FuseOpcode.ReleaseDir:
            {
                if (!Requests.TryRelease(arg, out var release))
                {
                    return false;
                }

                directories.Remove(release.Fh);
                ReplyEmpty(fd, h.Unique);
                return true;
            }

            case FuseOpcode.StatFs:
                Span<byte> statfs = stackalloc byte[FuseConstants.OutHeaderSize + FuseConstants.KstatfsSize];
                Wire.WriteStatfs(statfs[FuseConstants.OutHeaderSize..]);
                Finish(fd, h.Unique, statfs);
                return true;
            case FuseOpcode.Access:
            {
                _ = Requests.TryU32(arg, out var mask);
                Access(fd, h, mask);
                return true;
            }

            case FuseOpcode.Flush:
            case FuseOpcode.Fsync:
            case FuseOpcode.FsyncDir:
                // Nothing to write back on a read-only mount. ENOSYS tells the kernel once for the connection, which
                // then completes every later close()/fsync() itself (as success) instead of a round trip each.
                ReplyError(fd, h.Unique, Errno.ENOSYS);
                return true;
            case FuseOpcode.Destroy:
            case FuseOpcode.SyncFs:
                ReplyEmpty(fd, h.Unique);
                return true;
            case FuseOpcode.GetXattr:
            {
                if (!Requests.TryGetXattr(arg, out var x))
                {
                    return false;
                }

                Run(() => XattrAsync(fd, h, x, ctx, list: false));
                return true;
            }

            case FuseOpcode.ListXattr:
            {
                if (!Requests.TryListXattr(arg, out var x))
                {
                    return false;
                }

                Run(() => XattrAsync(fd, h, x, ctx, list: true));
                return true;
            }

            case FuseOpcode.Interrupt:
                if (Requests.TryU64(arg, out var target) && inflight.TryGetValue(target, out var victim))
                {
                    victim.Cancel();
                }

                return true;
            case FuseOpcode.Lseek:
            {
                if (!Requests.TryLseek(arg, out var seek))
                {
                    return false;
                }

                _ = LseekAsync(fd, h, seek.Fh, seek.Offset, seek.Whence);
                return true;
            }

            case FuseOpcode.NotifyReply:
                return true;
            case FuseOpcode.SetAttr:
            case FuseOpcode.Symlink:
            case FuseOpcode.MkNod:
            case FuseOpcode.MkDir:
            case FuseOpcode.Unlink:
            case FuseOpcode.RmDir:
            case FuseOpcode.Rename:
            case FuseOpcode.Link:
            case FuseOpcode.Write:
            case FuseOpcode.SetXattr:
            case FuseOpcode.RemoveXattr:
            case FuseOpcode.Create:
            case FuseOpcode.Fallocate:
            case FuseOpcode.Rename2:
            case FuseOpcode.TmpFile:
            case FuseOpcode.CopyFileRange:
            case FuseOpcode.CopyFileRange64:
                ReplyError(fd, h.Unique, Errno.EROFS);
                return true;
            default:
                ReplyError(fd, h.Unique, Errno.ENOSYS);
                return true;
        }
    }

    /// <summary>access(2) and chdir: writing is never allowed, executing needs an x bit; reading is the mount's policy.</summary>
    private void Access(int fd, InHeader h, uint mask)
    {
        var node = nodes.Get(h.NodeId);
        if (node is null)
        {
            ReplyError(fd, h.Unique, Errno.ENOENT);
            return;
        }

        try
        {
            var mode = node.GetAttributes().Mode;
            if ((mask & 2) != 0)
            {
                ReplyError(fd, h.Unique, Errno.EROFS);
            }
            else if ((mask & 1) != 0 && (mode & 0xF000) != 0x4000 && (mode & 0x49) == 0)
            {
                ReplyError(fd, h.Unique, Errno.EACCES);
            }
            else
            {
                ReplyEmpty(fd, h.Unique);
            }
        }
        catch (Exception e)
        {
            Fail(fd, h.Unique, e, "access");
        }
    }

    private CancellationTokenSource Track(ulong unique)
    {
        var cts = new CancellationTokenSource(TimeSpan.FromMinutes(10));
        inflight[unique] = cts;
        return cts;
    }

    private void Untrack(ulong unique)
    {
        if (inflight.TryRemove(unique, out var cts))
        {
            cts.Dispose();
        }
    }

    private ulong InoOf(ulong nodeId, FuseAttributes attr) => attr.Ino != 0 ? attr.Ino : nodeId;

    private async Task LookupAsync(int fd, InHeader h, byte[] name, FuseRequestContext ctx)
    {
        var cts = Track(h.Unique);
        try
        {
            if (nodes.Get(h.NodeId) is not IFuseDirectory dir)
            {
                ReplyError(fd, h.Unique, nodes.Get(h.NodeId) is null ? Errno.ENOENT : Errno.ENOTDIR);
                return;
            }

            var child = await dir.LookupAsync(name, ctx, cts.Token).ConfigureAwait(false);
            var reply = new byte[FuseConstants.OutHeaderSize + FuseConstants.EntryOutSize];
            if (child is null)
            {
                if (dir.NegativeTimeout <= TimeSpan.Zero)
                {
                    ReplyError(fd, h.Unique, Errno.ENOENT);
                    return;
                }

                Wire.WriteEntryOut(reply.AsSpan(FuseConstants.OutHeaderSize), 0, dir.NegativeTimeout, TimeSpan.Zero, null, 0);
                Finish(fd, h.Unique, reply);
                return;
            }

            var attr = child.GetAttributes();
            var id = nodes.Lookup(child);
            Wire.WriteEntryOut(reply.AsSpan(FuseConstants.OutHeaderSize), id, child.EntryTimeout, child.AttrTimeout, attr, InoOf(id, attr));
            if (!Finish(fd, h.Unique, reply))
            {
                nodes.Forget(id, 1);
            }
        }
        catch (Exception e)
        {
            Fail(fd, h.Unique, e, "lookup");
        }
        finally
        {
            Untrack(h.Unique);
        }
    }

    private void GetAttr(int fd, InHeader h)
    {
        var node = nodes.Get(h.NodeId);
        if (node is null)
        {
            ReplyError(fd, h.Unique, Errno.ENOENT);
            return;
        }

        try
        {
            var attr = node.GetAttributes();
            Span<byte> reply = stackalloc byte[FuseConstants.OutHeaderSize + FuseConstants.AttrOutSize];
            Wire.WriteAttrOut(reply[FuseConstants.OutHeaderSize..], node.AttrTimeout, attr, InoOf(h.NodeId, attr));
            Finish(fd, h.Unique, reply);
        }
        catch (Exception e)
        {
            Fail(fd, h.Unique, e, "getattr");
        }
    }

    private async Task ReadLinkAsync(int fd, InHeader h, FuseRequestContext ctx)
    {
        var cts = Track(h.Unique);
        try
        {
            if (nodes.Get(h.NodeId) is not IFuseSymlink link)
            {
                ReplyError(fd, h.Unique, Errno.EINVAL);
                return;
            }

            var target = await link.ReadLinkAsync(ctx, cts.Token).ConfigureAwait(false);
            var reply = new byte[FuseConstants.OutHeaderSize + target.Length];
            target.CopyTo(reply, FuseConstants.OutHeaderSize);
            Finish(fd, h.Unique, reply);
        }
        catch (Exception e)
        {
            Fail(fd, h.Unique, e, "readlink");
        }
        finally
        {
            Untrack(h.Unique);
        }
    }

    private async Task OpenAsync(int fd, InHeader h, uint flags, FuseRequestContext ctx)
    {
        var cts = Track(h.Unique);
        try
        {
            var node = nodes.Get(h.NodeId);
            if (node is not IFuseFile file)
            {
                ReplyError(fd, h.Unique, node is null ? Errno.ENOENT : node is IFuseDirectory ? Errno.EISDIR : Errno.EACCES);
                return;
            }

            if ((flags & 3) != 0)
            {
                ReplyError(fd, h.Unique, Errno.EROFS);
                return;
            }

            var handle = await file.OpenAsync((FuseOpenFlags)flags, ctx, cts.Token).ConfigureAwait(false);
            var fh = files.Add(handle);
            var reply = new byte[FuseConstants.OutHeaderSize + FuseConstants.OpenOutSize];
            var outFlags = (handle.KeepCache ? OpenOutFlags.KeepCache : 0) | (handle.DirectIo ? OpenOutFlags.DirectIo : 0);
            Wire.WriteOpenOut(reply.AsSpan(FuseConstants.OutHeaderSize), fh, outFlags);
            if (!Finish(fd, h.Unique, reply))
            {
                files.Remove(fh);
                await handle.DisposeAsync().ConfigureAwait(false);
            }
        }
        catch (Exception e)
        {
            Fail(fd, h.Unique, e, "open");
        }
        finally
        {
            Untrack(h.Unique);
        }
    }

    private async Task ReadAsync(int fd, InHeader h, ulong fh, long offset, int size)
    {
        var handle = files.Get(fh);
        if (handle is null || offset < 0)
        {
            ReplyError(fd, h.Unique, handle is null ? Errno.EBADF : Errno.EINVAL);
            return;
        }

        var cts = Track(h.Unique);
        var buffer = ReplyBuffers.Rent(FuseConstants.OutHeaderSize + size);
        try
        {
            var n = await handle.ReadAsync(offset, buffer.AsMemory(FuseConstants.OutHeaderSize, size), cts.Token).ConfigureAwait(false);
            Finish(fd, h.Unique, buffer.AsSpan(0, FuseConstants.OutHeaderSize + Math.Clamp(n, 0, size)));
        }
        catch (Exception e)
        {
            Fail(fd, h.Unique, e, "read");
        }
        finally
        {
            ReplyBuffers.Return(buffer);
            Untrack(h.Unique);
        }
    }

    private void Release(int fd, InHeader h, ulong fh)
    {
        var handle = files.Remove(fh);
        ReplyEmpty(fd, h.Unique);
        if (handle is not null)
        {
            _ = handle.DisposeAsync().AsTask().ContinueWith(t => _ = t.Exception, TaskScheduler.Default);
        }
    }

    private async Task OpenDirAsync(int fd, InHeader h, FuseRequestContext ctx)
    {
        var cts = Track(h.Unique);
        try
        {
            var node = nodes.Get(h.NodeId);
            if (node is not IFuseDirectory dir)
            {
                ReplyError(fd, h.Unique, node is null ? Errno.ENOENT : Errno.ENOTDIR);
                return;
            }

            // An immutable listing waits for the first READDIR (see DirectoryHandle): the kernel may have it cached.
            var immutable = dir.ListingIsImmutable; // asked once: a directory may answer differently on the next open
            var entries = immutable ? null : await dir.ListAsync(ctx, cts.Token).ConfigureAwait(false);
            var fh = directories.Add(new DirectoryHandle(node, h.NodeId, entries));
            var reply = new byte[FuseConstants.OutHeaderSize + FuseConstants.OpenOutSize];
            Wire.WriteOpenOut(reply.AsSpan(FuseConstants.OutHeaderSize), fh,
                immutable ? OpenOutFlags.CacheDir | OpenOutFlags.KeepCache : OpenOutFlags.CacheDir);
            if (!Finish(fd, h.Unique, reply))
            {
                directories.Remove(fh);
            }
        }
        catch (Exception e)
        {
            Fail(fd, h.Unique, e, "opendir");
        }
        finally
        {
            Untrack(h.Unique);
        }
    }

    /// <summary>The first READDIR of a handle whose listing was deferred at OPENDIR: makes the listing, then answers.</summary>
    private async Task ListThenReadDirAsync(int fd, InHeader h, FuseRequestContext ctx, DirectoryHandle handle, ulong cookie, int size)
    {
        var cts = Track(h.Unique);
        try
        {
            handle.Entries ??= await ((IFuseDirectory)handle.Directory).ListAsync(ctx, cts.Token).ConfigureAwait(false);
            ReadDir(fd, h, handle, cookie, size, h.Opcode == FuseOpcode.ReadDirPlus);
        }
        catch (Exception e)
        {
            Fail(fd, h.Unique, e, "readdir");
        }
        finally
        {
            Untrack(h.Unique);
        }
    }

    private void ReadDir(int fd, InHeader h, DirectoryHandle? handle, ulong cookie, int size, bool plus)
    {
        if (handle is null)
        {
            ReplyError(fd, h.Unique, Errno.EBADF);
            return;
        }

        var buffer = ReplyBuffers.Rent(FuseConstants.OutHeaderSize + size);
        var counted = new List<ulong>();
        try
        {
            var body = buffer.AsSpan(FuseConstants.OutHeaderSize, size);
            var used = 0;
            var dirAttr = handle.Directory.GetAttributes();
            var dirIno = InoOf(handle.NodeId, dirAttr);
            var entries = handle.Entries!;
            var total = entries.Count + 2;
            for (var index = (int)Math.Min(cookie, (ulong)total); index < total; index++)
            {
                ReadOnlySpan<byte> name;
                FuseNode? node = null;
                ulong ino;
                uint type;
                if (index < 2)
                {
                    name = index == 0 ? "."u8 : ".."u8;
                    ino = dirIno;
                    type = 4;
                }
                else
                {
                    var entry = entries[index - 2];
                    node = entry.Node;
                    name = entry.Name.Span;
                    if (node is null)
                    {
                        type = entry.Type & 0xF;
                        ino = entry.Ino;
                    }
                    else
                    {
                        var attr = node.GetAttributes();
                        type = (attr.Mode >> 12) & 0xF;
                        ino = attr.Ino;
                    }
                }

                if (!plus)
                {
                    var n = Wire.WriteDirent(body[used..], ino == 0 ? 0xFFFFFFFF : ino, (ulong)index + 1, type, name);
                    if (n == 0)
                    {
                        break;
                    }

                    used += n;
                    continue;
                }

                var length = Wire.DirentPlusLength(name.Length);
                if (used + length > size)
                {
                    break;
                }

                var record = body.Slice(used, length);
                if (node is null)
                {
                    // Node id 0: no attributes for this name (".", "..", name-only entries); the kernel looks it up when needed.
                    Wire.WriteEntryOut(record, 0, TimeSpan.Zero, TimeSpan.Zero, null, 0);
                }
                else
                {
                    var attr = node.GetAttributes();
                    var id = nodes.Lookup(node);
                    counted.Add(id);
                    ino = InoOf(id, attr);
                    Wire.WriteEntryOut(record, id, node.EntryTimeout, node.AttrTimeout, attr, ino);
                }

                Wire.WriteDirent(record[FuseConstants.EntryOutSize..], ino == 0 ? 0xFFFFFFFF : ino, (ulong)index + 1, type, name);
                used += length;
            }

            if (!Finish(fd, h.Unique, buffer.AsSpan(0, FuseConstants.OutHeaderSize + used)))
            {
                foreach (var id in counted)
                {
                    nodes.Forget(id, 1);
                }
            }
        }
        catch (Exception e)
        {
            foreach (var id in counted)
            {
                nodes.Forget(id, 1);
            }

            Fail(fd, h.Unique, e, "readdir");
        }
        finally
        {
            ReplyBuffers.Return(buffer);
        }
    }

    private async Task XattrAsync(int fd, InHeader h, XattrIn request, FuseRequestContext ctx, bool list)
    {
        var cts = Track(h.Unique);
        try
        {
            var node = nodes.Get(h.NodeId);
            if (node is null)
            {
                ReplyError(fd, h.Unique, Errno.ENOENT);
                return;
            }

            IReadOnlyList<FuseXattr> all = node is IFuseXattrs xattrs
                ? await xattrs.ListXattrsAsync(ctx, cts.Token).ConfigureAwait(false)
                : [];
            if (list)
            {
                var names = new List<byte>();
                foreach (var x in all)
                {
                    names.AddRange(x.Name);
                    names.Add(0);
                }

                ReplySized(fd, h.Unique, request.Size, names.ToArray());
                return;
            }

            foreach (var x in all)
            {
                if (x.Name.AsSpan().SequenceEqual(request.Name))
                {
                    ReplySized(fd, h.Unique, request.Size, x.Value);
                    return;
                }
            }

            ReplyError(fd, h.Unique, Errno.ENODATA);
        }
        catch (Exception e)
        {
            Fail(fd, h.Unique, e, list ? "listxattr" : "getxattr");
        }
        finally
        {
            Untrack(h.Unique);
        }
    }

    /// <summary>The xattr convention: size 0 asks for the length; too small a buffer is ERANGE.</summary>
    private void ReplySized(int fd, ulong unique, uint size, byte[] value)
    {
        if (size == 0)
        {
            Span<byte> reply = stackalloc byte[FuseConstants.OutHeaderSize + 8];
            reply.Clear();
            BinaryPrimitives.WriteUInt32LittleEndian(reply[FuseConstants.OutHeaderSize..], (uint)value.Length);
            Finish(fd, unique, reply);
            return;
        }

        if (size < value.Length)
        {
            ReplyError(fd, unique, Errno.ERANGE);
            return;
        }

        var data = new byte[FuseConstants.OutHeaderSize + value.Length];
        value.CopyTo(data, FuseConstants.OutHeaderSize);
        Finish(fd, unique, data);
    }

    private async Task LseekAsync(int fd, InHeader h, ulong fh, long offset, uint whence)
    {
        var handle = files.Get(fh);
        var node = nodes.Get(h.NodeId);
        if (handle is null || node is null)
        {
            ReplyError(fd, h.Unique, Errno.EBADF);
            return;
        }

        if (whence is not (3 or 4) || offset < 0)
        {
            ReplyError(fd, h.Unique, Errno.EINVAL);
            return;
        }

        try
        {
            long result;
            try
            {
                result = await handle.SeekDataOrHoleAsync(offset, whence == 3, CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception e) when (e is NotSupportedException || e is FuseException { Errno: Errno.ENOSYS })
            {
                // Never ENOSYS: the kernel would stop asking for the whole connection, images included.
                // Everything is data: SEEK_DATA finds the offset itself, SEEK_HOLE the end of the file.
                var size = (long)node.GetAttributes().Size;
                if (offset >= size)
                {
                    throw new FuseException(Errno.ENXIO, "offset at or past the end");
                }

                result = whence == 3 ? offset : size;
            }

            var reply = new byte[FuseConstants.OutHeaderSize + 8];
            BinaryPrimitives.WriteInt64LittleEndian(reply.AsSpan(FuseConstants.OutHeaderSize), result);
            Finish(fd, h.Unique, reply);
        }
        catch (Exception e)
        {
            Fail(fd, h.Unique, e, "lseek");
        }
    }

    private void Fail(int fd, ulong unique, Exception e, string what)
    {
        switch (e)
        {
            case FuseException f:
                ReplyError(fd, unique, f.Errno is > 0 and < 512 ? f.Errno : Errno.EIO);
                break;
            case OperationCanceledException:
                ReplyError(fd, unique, Errno.EINTR);
                break;
            case NotSupportedException:
                ReplyError(fd, unique, Errno.ENOTSUP);
                break;
            default:
                log.LogError(e, "FUSE {Operation} failed", what);
                ReplyError(fd, unique, Errno.EIO);
                break;
        }
    }

    private void ReplyEmpty(int fd, ulong unique)
    {
        Span<byte> reply = stackalloc byte[FuseConstants.OutHeaderSize];
        Finish(fd, unique, reply);
    }

    private void ReplyError(int fd, ulong unique, int errno)
    {
        Span<byte> reply = stackalloc byte[FuseConstants.OutHeaderSize];
        Wire.WriteOutHeader(reply, FuseConstants.OutHeaderSize, errno, unique);
        WriteReply(fd, reply);
    }

    /// <summary>Fills in the success header and writes the reply; false when the kernel no longer wants it.</summary>
    private bool Finish(int fd, ulong unique, Span<byte> reply)
    {
        Wire.WriteOutHeader(reply, reply.Length, 0, unique);
        return WriteReply(fd, reply);
    }

    private unsafe bool WriteReply(int fd, ReadOnlySpan<byte> reply)
    {
        fixed (byte* p = reply)
        {
            var n = LibC.Write(fd, p, reply.Length);
            if (n == reply.Length)
            {
                return true;
            }

            var errno = Marshal.GetLastPInvokeError();
            if (errno is not (Errno.ENOENT or Errno.ENODEV or Errno.ECONNABORTED or Errno.EBADF))
            {
                log.LogWarning("writing a FUSE reply failed: {Error}", LibC.ErrorText(errno));
            }

            return false;
        }
    }
}
