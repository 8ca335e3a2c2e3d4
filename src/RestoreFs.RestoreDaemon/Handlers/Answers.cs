using System.Text;
using System.Text.Json;
using RestoreFs.RestoreApi;

namespace RestoreFs.RestoreDaemon.Handlers;

/// <summary>Complete (not streamed) answers: JSON wrapped in <c>{"data":…}</c>, or a line of plain text.</summary>
internal static class Answers
{
    public static async Task JsonAsync(Stream stream, Action<Utf8JsonWriter> write, CancellationToken ct)
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

    public static async Task TextAsync(Stream stream, int status, string text, CancellationToken ct)
    {
        var body = Encoding.UTF8.GetBytes(text + "\n");
        await stream.WriteAsync(Http.FormatResponseHead(status, Http.ReasonOf(status), "text/plain;charset=UTF-8", body.Length), ct).ConfigureAwait(false);
        await stream.WriteAsync(body, ct).ConfigureAwait(false);
        await stream.FlushAsync(ct).ConfigureAwait(false);
    }
}
