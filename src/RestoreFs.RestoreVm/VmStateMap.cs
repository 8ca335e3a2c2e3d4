using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.Extensions.Logging;

namespace RestoreFs.RestoreVm;

/// <summary>One running restore VM as recorded in the state map.</summary>
public sealed record VmEntry
{
    /// <summary>The snapshot it serves: <c>&lt;store&gt;:&lt;ns&gt;/&lt;type&gt;/&lt;id&gt;/&lt;time&gt;</c>.</summary>
    public required string Name { get; init; }

    public required int Pid { get; init; }

    /// <summary>Channel address: <c>serial:&lt;unix socket&gt;</c> or <c>vsock:&lt;cid&gt;</c>.</summary>
    public required string Channel { get; init; }

    public required string Ticket { get; init; }

    /// <summary>The VM's private directory (0700): channel and proxy sockets, console log, pid file.</summary>
    public required string Directory { get; init; }

    public required long Started { get; init; }

    public required IReadOnlyList<string> Disks { get; init; }

    /// <summary>The process that started it (its mount); the VM's disks are served by that process.</summary>
    public int Owner { get; init; }

    public string Accelerator { get; init; } = "tcg";
}

/// <summary>
/// The VMs of one user: a JSON file in the runtime directory (0600). Changes hold an exclusive lock on a lock file
/// (waiting up to a timeout); a corrupt file is set aside with a warning and the map starts empty.
/// </summary>
public sealed class VmStateMap(string runtimeDirectory, ILogger log)
{
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true, DefaultIgnoreCondition = JsonIgnoreCondition.Never };

    public string FilePath => Path.Combine(runtimeDirectory, "restore-vms.json");

    private string LockPath => Path.Combine(runtimeDirectory, "restore-vms.lock");

    /// <summary>Reads the map without locking (for listings and completion).</summary>
    public IReadOnlyList<VmEntry> Read() => Load();

    /// <summary>Runs <paramref name="change"/> on the map under the lock and saves what it returns.</summary>
    public async Task<T> UpdateAsync<T>(Func<List<VmEntry>, T> change, CancellationToken ct, TimeSpan? timeout = null)
    {
        Directory.CreateDirectory(runtimeDirectory);
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(30));
        FileStream? lockFile = null;
        while (lockFile is null)
        {
            try
            {
                // FileShare.None takes an exclusive flock on Unix.
                lockFile = new FileStream(LockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException) when (DateTime.UtcNow < deadline)
            {
                await Task.Delay(50, ct).ConfigureAwait(false);
            }
            catch (IOException e)
            {
                throw new IOException($"the VM state map {FilePath} stayed locked for {(timeout ?? TimeSpan.FromSeconds(30)).TotalSeconds:0} s", e);
            }
        }

        using (lockFile)
        {
            var entries = Load();
            var result = change(entries);
            var temp = FilePath + ".tmp";
            await File.WriteAllTextAsync(temp, JsonSerializer.Serialize(entries, Json), ct).ConfigureAwait(false);
            File.SetUnixFileMode(temp, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            File.Move(temp, FilePath, overwrite: true);
            return result;
        }
    }

    private List<VmEntry> Load()
    {
        if (!File.Exists(FilePath))
        {
            return [];
        }

        try
        {
            return JsonSerializer.Deserialize<List<VmEntry>>(File.ReadAllText(FilePath), Json) ?? [];
        }
        catch (JsonException e)
        {
            var aside = FilePath + ".corrupt";
            log.LogWarning("The VM state map {Map} is corrupt ({Reason}); set aside as {Aside}, starting with an empty map", FilePath, e.Message, aside);
            try
            {
                File.Move(FilePath, aside, overwrite: true);
            }
            catch (IOException)
            {
            }

            return [];
        }
    }
}
