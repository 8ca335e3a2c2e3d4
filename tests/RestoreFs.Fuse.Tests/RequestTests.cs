using System.Buffers.Binary;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging.Abstractions;
using RestoreFs.Fuse.Protocol;
using RestoreFs.Fuse.Server;

namespace RestoreFs.Fuse.Tests;

/// <summary>
/// Request decoding, driven with hand-made request bytes over a socket pair standing in for /dev/fuse: every request
/// that wants an answer gets exactly one — truncated ones EIO, unknown ones ENOSYS, callers the policy refuses EACCES.
/// </summary>
public sealed partial class RequestTests : IDisposable
{
    private const uint Owner = 1000;
    private readonly Socket peer;
    private readonly int ours;
    private readonly FuseSession session;

    public RequestTests()
    {
        var fds = new int[2];
        Assert.Equal(0, SocketPair(1 /* AF_UNIX */, 5 /* SOCK_SEQPACKET */, 0, fds));
        ours = fds[0];
        peer = new Socket(new SafeSocketHandle(fds[1], ownsHandle: true)) { ReceiveTimeout = 5000 };
        var root = new MemDir(1);
        root.Children["hello"] = new MemFile(2, "hi\n"u8.ToArray());
        session = new FuseSession(root, NullLogger.Instance, new FuseAccessPolicy(Owner, AllowOther: false));
    }

    private static byte[] Request(FuseOpcode op, ulong unique, ReadOnlySpan<byte> arg, uint uid = Owner, ulong node = 1)
    {
        var b = new byte[FuseConstants.InHeaderSize + arg.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(b, (uint)b.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), (uint)op);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(8), unique);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(16), node);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(24), uid);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(28), uid);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(32), 77);
        arg.CopyTo(b.AsSpan(FuseConstants.InHeaderSize));
        return b;
    }

    /// <summary>Dispatches and returns the one reply: (errno, unique, body).</summary>
    private (int Errno, ulong Unique, byte[] Body) Send(byte[] request)
    {
        session.Dispatch(ours, request);
        var buffer = new byte[2 * 1024 * 1024];
        var n = peer.Receive(buffer);
        Assert.True(n >= FuseConstants.OutHeaderSize, "no reply");
        Assert.Equal((uint)n, BinaryPrimitives.ReadUInt32LittleEndian(buffer));
        return (-BinaryPrimitives.ReadInt32LittleEndian(buffer.AsSpan(4)), BinaryPrimitives.ReadUInt64LittleEndian(buffer.AsSpan(8)),
            buffer.AsSpan(FuseConstants.OutHeaderSize, n - FuseConstants.OutHeaderSize).ToArray());
    }

    private void AssertNoReply()
    {
        peer.ReceiveTimeout = 300;
        Assert.Throws<SocketException>(() => peer.Receive(new byte[64]));
        peer.ReceiveTimeout = 5000;
    }

    public static TheoryData<FuseOpcode> FixedArgumentOpcodes() =>
    [
        FuseOpcode.GetAttr, FuseOpcode.Open, FuseOpcode.OpenDir, FuseOpcode.Read, FuseOpcode.ReadDir, FuseOpcode.ReadDirPlus,
        FuseOpcode.Release, FuseOpcode.ReleaseDir, FuseOpcode.GetXattr, FuseOpcode.ListXattr, FuseOpcode.Access,
        FuseOpcode.Lseek, FuseOpcode.Flush, FuseOpcode.Fsync, FuseOpcode.FsyncDir, FuseOpcode.SyncFs,
    ];

    [Theory]
    [MemberData(nameof(FixedArgumentOpcodes))]
    public void Every_truncation_of_a_fixed_argument_is_answered_eio(FuseOpcode op)
    {
        var full = Requests.FixedLength(op);
        Assert.True(full > 0);
        for (var length = 0; length < full; length += Math.Max(1, full / 5))
        {
            var unique = (ulong)(1000 + length);
            var (errno, answered, _) = Send(Request(op, unique, new byte[length]));
            Assert.Equal(unique, answered);
            Assert.Equal(Errno.EIO, errno);
        }
    }

    [Fact]
    public void A_length_field_larger_than_the_request_and_a_name_without_nul_are_eio()
    {
        var request = Request(FuseOpcode.GetAttr, 7, new byte[16]);
        BinaryPrimitives.WriteUInt32LittleEndian(request, (uint)request.Length + 100);
        Assert.Equal((Errno.EIO, 7ul), Pick(Send(request)));
        Assert.Equal((Errno.EIO, 8ul), Pick(Send(Request(FuseOpcode.Lookup, 8, "hello"u8))));
        Assert.Equal((Errno.EIO, 9ul), Pick(Send(Request(FuseOpcode.Lookup, 9, "\0"u8))));
        Assert.Equal((Errno.EIO, 10ul), Pick(Send(Request(FuseOpcode.GetXattr, 10, new byte[8]))));
    }

    [Fact]
    public void Unknown_opcodes_are_enosys_and_writes_erofs()
    {
        Assert.Equal((Errno.ENOSYS, 11ul), Pick(Send(Request((FuseOpcode)4242, 11, []))));
        Assert.Equal((Errno.ENOSYS, 12ul), Pick(Send(Request(FuseOpcode.Ioctl, 12, new byte[32]))));
        Assert.Equal((Errno.EROFS, 13ul), Pick(Send(Request(FuseOpcode.Write, 13, new byte[4]))));
        Assert.Equal((Errno.EROFS, 14ul), Pick(Send(Request(FuseOpcode.Create, 14, []))));
    }

    [Fact]
    public void Well_formed_requests_are_answered_and_forgets_are_not()
    {
        var (errno, unique, body) = Send(Request(FuseOpcode.GetAttr, 20, new byte[16]));
        Assert.Equal((0, 20ul), (errno, unique));
        Assert.Equal(FuseConstants.AttrOutSize, body.Length);
        Assert.Equal(0x416Du, BinaryPrimitives.ReadUInt32LittleEndian(body.AsSpan(16 + 60)));

        (errno, unique, body) = Send(Request(FuseOpcode.Lookup, 21, "hello\0"u8));
        Assert.Equal((0, 21ul), (errno, unique));
        Assert.Equal(FuseConstants.EntryOutSize, body.Length);
        Assert.Equal(3ul, BinaryPrimitives.ReadUInt64LittleEndian(body.AsSpan(40 + 8)));

        Assert.Equal((0, 22ul), Pick(Send(Request(FuseOpcode.StatFs, 22, []))));
        Assert.Equal((Errno.ENODATA, 23ul), Pick(Send(Request(FuseOpcode.GetXattr, 23, [0, 0, 0, 0, 0, 0, 0, 0, (byte)'u', 0]))));

        session.Dispatch(ours, Request(FuseOpcode.Forget, 24, new byte[4])); // truncated forget: dropped, never answered
        session.Dispatch(ours, Request(FuseOpcode.BatchForget, 25, [200, 0, 0, 0, 0, 0, 0, 0])); // count beyond the request
        session.Dispatch(ours, Request(FuseOpcode.Forget, 26, [1, 0, 0, 0, 0, 0, 0, 0], node: 99));
        AssertNoReply();
    }

    [Fact]
    public void Access_refuses_writing_and_executing_what_has_no_x_bit()
    {
        Assert.Equal((0, 30ul), Pick(Send(Request(FuseOpcode.Access, 30, [4, 0, 0, 0, 0, 0, 0, 0]))));
        Assert.Equal((Errno.EROFS, 31ul), Pick(Send(Request(FuseOpcode.Access, 31, [2, 0, 0, 0, 0, 0, 0, 0]))));
        Send(Request(FuseOpcode.Lookup, 32, "hello\0"u8)); // node 2 now known
        var (errno, _, _) = Send(Request(FuseOpcode.Access, 33, [1, 0, 0, 0, 0, 0, 0, 0], node: 2));
        Assert.Equal(Errno.EACCES, errno);
    }

    [Fact]
    public void Callers_the_policy_refuses_get_eacces_and_root_gets_in()
    {
        Assert.Equal((Errno.EACCES, 40ul), Pick(Send(Request(FuseOpcode.GetAttr, 40, new byte[16], uid: 4242))));
        Assert.Equal((Errno.EACCES, 41ul), Pick(Send(Request(FuseOpcode.Lookup, 41, "hello\0"u8, uid: 4242))));
        Assert.Equal((0, 42ul), Pick(Send(Request(FuseOpcode.GetAttr, 42, new byte[16], uid: 0))));
    }

    private static (int, ulong) Pick((int Errno, ulong Unique, byte[] Body) r) => (r.Errno, r.Unique);

    [LibraryImport("libc", EntryPoint = "socketpair", SetLastError = true)]
    private static partial int SocketPair(int domain, int type, int protocol, [Out] int[] fds);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int Close(int fd);

    public void Dispose()
    {
        peer.Dispose();
        Close(ours);
    }
}
