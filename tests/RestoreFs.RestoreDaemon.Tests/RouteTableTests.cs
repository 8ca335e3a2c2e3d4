using System.Text;
using RestoreFs.RestoreApi;
using RestoreFs.RestoreDaemon.Server;
using RestoreFs.TestSupport;

namespace RestoreFs.RestoreDaemon.Tests;

/// <summary>The server's route table: which endpoints exist, which need the ticket, how they use the watchdog, and that
/// the server answers by it (401 for each ticketed route without the ticket, 404 for what is not in it).</summary>
public sealed class RouteTableTests : IDisposable
{
    private const string Ticket = "route-table-ticket";

    private readonly TempDirectory dir = new("restorefs-routes");

    public void Dispose() => dir.Dispose();

    private ServerHarness Start() =>
        new(new DirectoryVolumeCatalogForTests(dir.Path), dir.Combine("routes.sock"), Ticket, authDelay: TimeSpan.FromMilliseconds(50));

    private static async Task<(int Status, string Body)> GetAsync(ServerHarness h, string endpoint, string? ticket)
    {
        await using var stream = await SocketTransport.Unix(h.SocketPath).OpenStreamAsync(CancellationToken.None);
        await stream.WriteAsync(Encoding.ASCII.GetBytes($"GET /api2/json/{endpoint} HTTP/1.1\r\nHost: x\r\n"
            + (ticket is null ? "" : $"Authorization: {ticket}\r\n") + "\r\n"));
        var response = await Http.ReadResponseAsync(new BufferedReader(stream), CancellationToken.None);
        using var body = new MemoryStream();
        await response.Body.CopyToAsync(body);
        return (response.Status, Encoding.UTF8.GetString(body.ToArray()).Trim());
    }

    [Fact]
    public async Task Every_endpoint_but_status_needs_the_ticket_and_each_has_its_watchdog_use()
    {
        await using var h = Start();
        var routes = h.Server.Routes.ToDictionary(r => r.Endpoint, StringComparer.Ordinal);
        Assert.Equal(["", "extract", "list", "read", "seek", "status", "stop", "xattrs"], routes.Keys.Order(StringComparer.Ordinal));
        Assert.Equal(["status"], routes.Values.Where(r => !r.NeedsTicket).Select(r => r.Endpoint));
        Assert.Equal(IdleUse.RearmUnlessKeepTimeout, routes["status"].Idle);
        Assert.Equal(IdleUse.RearmAround, routes["list"].Idle);
        Assert.Equal(IdleUse.RearmAround, routes["read"].Idle);
        Assert.Equal(IdleUse.Rearm, routes["xattrs"].Idle);
        Assert.Equal(IdleUse.Rearm, routes["seek"].Idle);
        Assert.Equal(IdleUse.BusyInHandler, routes["extract"].Idle);
        Assert.Equal(IdleUse.None, routes[""].Idle);
        Assert.Equal(IdleUse.None, routes["stop"].Idle);
    }

    [Fact]
    public async Task The_server_answers_by_the_table_401_without_a_ticket_and_404_for_what_is_not_in_it()
    {
        await using var h = Start();
        foreach (var route in h.Server.Routes.Where(r => r.NeedsTicket))
        {
            Assert.Equal((401, "authentication failed"), await GetAsync(h, route.Endpoint, null));
            Assert.Equal((401, "authentication failed"), await GetAsync(h, route.Endpoint, "wrong"));
        }

        Assert.Equal(200, (await GetAsync(h, "status", null)).Status);
        Assert.False(h.ShutdownRequested.IsCompleted, "a stop without the ticket stopped the server");

        // Unknown endpoints are 404 with or without the ticket (the ticket is not looked at).
        foreach (var ticket in new[] { null, "wrong", Ticket })
        {
            Assert.Equal((404, "no such endpoint 'nothing'"), await GetAsync(h, "nothing", ticket));
            Assert.Equal((404, "no such endpoint 'Status'"), await GetAsync(h, "Status", ticket));
            Assert.Equal((404, "no such endpoint 'list/deeper'"), await GetAsync(h, "list/deeper", ticket));
        }

        // The API root lists the table's endpoints.
        var (status, root) = await GetAsync(h, "", Ticket);
        Assert.Equal(200, status);
        var listed = System.Text.Json.JsonDocument.Parse(root).RootElement.GetProperty("data").EnumerateArray().Select(e => e.GetProperty("subdir").GetString());
        Assert.Equal(h.Server.Routes.Select(r => r.Endpoint).Where(e => e.Length > 0).Order(StringComparer.Ordinal), listed);
    }
}
