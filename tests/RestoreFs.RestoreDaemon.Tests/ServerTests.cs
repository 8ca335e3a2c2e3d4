using System.Diagnostics;
using System.Text;
using RestoreFs.RestoreApi;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>The server's HTTP behaviour (auth, errors, status, watchdog, streamed lists) through a real unix socket.</summary>
public sealed class ServerTests : IAsyncLifetime
{
    private const string Ticket = "c0ffee00-1111-2222-3333-444455556666";
    private static readonly TimeSpan AuthDelay = TimeSpan.FromMilliseconds(300);

    private readonly TempDirectory dir = new("restorefs-server");

    public Task InitializeAsync()
    {
        Directory.CreateDirectory(dir.Combine("vol/sub"));
        File.WriteAllText(dir.Combine("vol/sub/a.txt"), "alpha\n");
        return Task.CompletedTask;
    }

    public Task DisposeAsync()
    {
        TestHelpers.RemoveTree(dir.Path);
        dir.Dispose();
        return Task.CompletedTask;
    }

    private ServerHarness Start(string name, TimeSpan? idle = null, string? volume = null) =>
        new(new DirectoryVolumeCatalogForTests(volume ?? dir.Combine("vol")), dir.Combine(name + ".sock"), Ticket, idle, AuthDelay);

    /// <summary>One raw exchange: the answer's status line, headers and body as text.</summary>
    private static async Task<(int Status, string Head, string Body, TimeSpan Took)> RawAsync(ServerHarness h, string requestHead)
    {
        var watch = Stopwatch.StartNew();
        await using var stream = await SocketTransport.Unix(h.SocketPath).OpenStreamAsync(CancellationToken.None);
        await stream.WriteAsync(Encoding.ASCII.GetBytes(requestHead));
        var response = await Http.ReadResponseAsync(new BufferedReader(stream), CancellationToken.None);
        using var body = new MemoryStream();
        await response.Body.CopyToAsync(body);
        var head = string.Join("\n", response.Headers.Select(kv => $"{kv.Key}: {kv.Value}"));
        return (response.Status, head, Encoding.UTF8.GetString(body.ToArray()), watch.Elapsed);
    }

    private static string Get(string endpointAndQuery, string? ticket) =>
        $"GET /api2/json/{endpointAndQuery} HTTP/1.1\r\nHost: x\r\n" + (ticket is null ? "" : $"Authorization: {ticket}\r\n") + "\r\n";

    private static string B64(string path) => Uri.EscapeDataString(Convert.ToBase64String(Encoding.UTF8.GetBytes(path)));

    [Fact]
    public async Task Wrong_or_missing_tickets_get_401_only_after_the_delay_and_status_needs_none()
    {
        await using var h = Start("auth");
        string[] endpoints = [$"list?path={B64("dir/raw")}", $"read?path={B64("dir/raw/sub/a.txt")}&offset=0&length=6",
            $"extract?path={B64("dir/raw/sub")}&format=tar", "stop", ""];
        string?[] tickets = [null, "wrong", Ticket[..^1], Ticket + "7", Ticket.ToUpperInvariant(), ""];
        var watch = Stopwatch.StartNew();
        var cases = endpoints.SelectMany(e => tickets.Select(t => (Endpoint: e, Ticket: t))).ToList();
        var results = await Task.WhenAll(cases.Select(c => RawAsync(h, Get(c.Endpoint, c.Ticket))));
        for (var i = 0; i < cases.Count; i++)
        {
            var (status, head, body, took) = results[i];
            var what = $"{cases[i].Endpoint} with '{cases[i].Ticket}'";
            Assert.True(status == 401, $"{what}: {status}");
            Assert.Equal("authentication failed", body.Trim());
            Assert.Contains("text/plain", head);
            Assert.True(took >= AuthDelay, $"{what}: 401 after {took.TotalMilliseconds} ms");
        }

        // Each failure waits on its own: 30 at once do not take 30 delays.
        Assert.True(watch.Elapsed < AuthDelay * 10, $"{cases.Count} failures took {watch.Elapsed}");

        Assert.False(h.ShutdownRequested.IsCompleted, "a stop without the ticket stopped the server");
        var (okStatus, _, okBody, _) = await RawAsync(h, Get("status", null));
        Assert.Equal(200, okStatus);
        Assert.Contains("\"uptime\":", okBody);
        var (right, _, rightBody, _) = await RawAsync(h, Get($"read?path={B64("dir/raw/sub/a.txt")}&offset=0&length=6", Ticket));
        Assert.Equal((200, "alpha\n"), (right, rightBody));
        // A request is logged after its answer went out: give the last one's line a moment to land.
        var deadline = DateTime.UtcNow.AddSeconds(5);
        while (!h.LogLines().Any(l => l.Contains("/api2/json/read dir/raw/sub/a.txt", StringComparison.Ordinal)) && DateTime.UtcNow < deadline)
        {
            await Task.Delay(10);
        }

        var log = h.LogLines();
        Assert.Contains(log, l => l.Contains("GET /api2/json/read dir/raw/sub/a.txt @0+6 -> 200 in", StringComparison.Ordinal));
        Assert.Contains(log, l => l.Contains("-> 401 in", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Unknown_paths_are_404_and_bad_parameters_400_with_a_plain_text_reason()
    {
        await using var h = Start("errors");
        Assert.Equal(404, (await RawAsync(h, Get("nothing", Ticket))).Status);
        Assert.Equal(404, (await RawAsync(h, "GET /index.html HTTP/1.1\r\n\r\n")).Status);
        Assert.Equal(404, (await RawAsync(h, Get("list/deeper", Ticket))).Status);

        var (status, head, body, _) = await RawAsync(h, Get("list?path=%%%not-base64", Ticket));
        Assert.Equal((400, "path is not valid base64"), (status, body.Trim()));
        Assert.Contains("text/plain", head);
        Assert.Contains("offset", (await RawAsync(h, Get($"read?path={B64("dir/raw/sub/a.txt")}&offset=-1&length=6", Ticket))).Body);
        Assert.Contains("length", (await RawAsync(h, Get($"read?path={B64("dir/raw/sub/a.txt")}&offset=0", Ticket))).Body);
        Assert.Contains("format", (await RawAsync(h, Get($"extract?path={B64("dir/raw/sub")}&format=zip", Ticket))).Body);
        Assert.Equal(400, (await RawAsync(h, "NONSENSE\r\n\r\n")).Status);

        // The API root lists its endpoints.
        var (rootStatus, _, root, _) = await RawAsync(h, Get("", Ticket));
        Assert.Equal(200, rootStatus);
        Assert.Contains("{\"subdir\":\"list\"}", root);

        // Errors through the client are RestoreApiException with the daemon's message.
        await using var client = h.Client();
        var e = await Assert.ThrowsAsync<RestoreApiException>(() => client.ListAllAsync("dir/raw/nothing"));
        Assert.Equal(400, e.StatusCode);
        Assert.Equal("nothing: no such file or directory", e.Message);
    }

    [Fact]
    public async Task The_watchdog_is_rearmed_by_requests_but_not_by_keep_timeout_status_or_a_wrong_ticket()
    {
        await using var h = Start("watchdog", idle: TimeSpan.FromSeconds(4));
        await using var client = h.Client();
        await using var anonymous = h.Client("wrong");
        await Task.Delay(1600);
        Assert.InRange((await client.StatusAsync(keepTimeout: true, CancellationToken.None)).Timeout, 1, 3);
        Assert.InRange((await anonymous.StatusAsync(keepTimeout: false, CancellationToken.None)).Timeout, 1, 3);
        await client.StatusAsync(keepTimeout: false, CancellationToken.None); // a valid ticket: re-armed
        Assert.Equal(4, (await client.StatusAsync(keepTimeout: true, CancellationToken.None)).Timeout);

        await Task.Delay(1600);
        Assert.InRange((await client.StatusAsync(keepTimeout: true, CancellationToken.None)).Timeout, 1, 3);
        await client.ListAllAsync("dir/raw");
        Assert.Equal(4, (await client.StatusAsync(keepTimeout: true, CancellationToken.None)).Timeout);
        await Task.Delay(1600);
        await client.ReadAsync("dir/raw/sub/a.txt"u8.ToArray(), 0, new byte[3], CancellationToken.None);
        Assert.Equal(4, (await client.StatusAsync(keepTimeout: true, CancellationToken.None)).Timeout);

        // Left alone (keep-timeout status polls do not count), it expires and says so.
        var watch = Stopwatch.StartNew();
        while (!h.ShutdownRequested.IsCompleted && watch.Elapsed < TimeSpan.FromSeconds(10))
        {
            await client.StatusAsync(keepTimeout: true, CancellationToken.None);
            await Task.Delay(300);
        }

        Assert.True(h.ShutdownRequested.IsCompleted, "the idle timeout did not fire");
        Assert.InRange(watch.Elapsed.TotalSeconds, 3, 6);
        Assert.Contains(h.LogLines(), l => l.Contains("idle for 4 s", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Stop_answers_then_shuts_down()
    {
        await using var h = Start("stop");
        var (status, _, body, _) = await RawAsync(h, Get("stop", Ticket));
        Assert.Equal((200, "stopping"), (status, body.Trim()));
        await h.ShutdownRequested.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Contains(h.LogLines(), l => l.Contains("stop requested", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_directory_of_100000_entries_streams_through_daemon_and_client()
    {
        var big = dir.Combine("many");
        Directory.CreateDirectory(big);
        for (var i = 0; i < 100_000; i++)
        {
            File.Create(Path.Combine(big, $"entry-{i:D6}-with-a-name-long-enough-to-matter")).Dispose();
        }

        await using var h = Start("many", volume: big);
        await using var client = h.Client();
        var before = h.Server.EntriesListed;
        await using var entries = client.ListAsync("dir/raw"u8.ToArray(), CancellationToken.None).GetAsyncEnumerator();
        Assert.True(await entries.MoveNextAsync());
        Assert.StartsWith("entry-", Encoding.UTF8.GetString(entries.Current.Name));

        // The client holds the first entry and reads no further: the daemon must be blocked far from the end (it
        // would be at 100,000 if either side buffered the whole answer).
        await Task.Delay(1000);
        var listedWhileHeld = h.Server.EntriesListed - before;
        Assert.InRange(listedWhileHeld, 1, 20_000);

        var names = new HashSet<string> { Encoding.UTF8.GetString(entries.Current.Name) };
        while (await entries.MoveNextAsync())
        {
            names.Add(Encoding.UTF8.GetString(entries.Current.Name));
        }

        Assert.Equal(100_000, names.Count);
        Assert.Contains("entry-099999-with-a-name-long-enough-to-matter", names);
        Assert.Equal(100_000, h.Server.EntriesListed - before);

        // The answer is chunked: its length is not known when it starts.
        await using var raw = await SocketTransport.Unix(h.SocketPath).OpenStreamAsync(CancellationToken.None);
        await raw.WriteAsync(Http.FormatRequest("/api2/json/list", [KeyValuePair.Create("path", Convert.ToBase64String("dir/raw"u8))], Ticket));
        var response = await Http.ReadResponseAsync(new BufferedReader(raw), CancellationToken.None);
        Assert.Equal("chunked", response.Header("transfer-encoding"));
        Assert.Null(response.Header("content-length"));
    }
}
