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

    /// <summary>The vsock CID of a VM on a vsock channel; null on virtio-serial.</summary>
    [JsonIgnore]
    public uint? VsockCid =>
        Channel.StartsWith(VsockPrefix, StringComparison.Ordinal) && uint.TryParse(Channel.AsSpan(VsockPrefix.Length), out var cid) ? cid : null;

    /// <summary>The unix socket of a VM on a virtio-serial channel; null on vsock.</summary>
    [JsonIgnore]
    public string? SerialSocket => Channel.StartsWith(SerialPrefix, StringComparison.Ordinal) ? Channel[SerialPrefix.Length..] : null;

    public const string SerialPrefix = "serial:";

    public const string VsockPrefix = "vsock:";
}

/// <summary>The state map's JSON, generated at build time (no reflection: the CLI is compiled ahead of time).</summary>
[JsonSourceGenerationOptions(WriteIndented = true, DefaultIgnoreCondition = JsonIgnoreCondition.Never)]
[JsonSerializable(typeof(List<VmEntry>))]
internal sealed partial class VmStateJson : JsonSerializerContext;

/// <summary>
/// The VMs of one user: a JSON file in the runtime directory (0600). Changes hold an exclusive lock (flock) on a lock
/// file, waiting up to a timeout; a corrupt file is set aside with a warning (under the lock) and the map starts empty.
/// </summary>
public sealed class VmStateMap(string runtimeDirectory, ILogger log)
{
    public static readonly TimeSpan DefaultLockTimeout = TimeSpan.FromSeconds(30);


    private const UnixFileMode Private = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    public string FilePath => Path.Combine(runtimeDirectory, "restore-vms.json");

    public string LockPath => Path.Combine(runtimeDirectory, "restore-vms.lock");

    /// <summary>Reads the map without locking, for listings and shell completion. A corrupt file reads as empty (it is
    /// left where it is: only a holder of the lock sets it aside).</summary>
    public IReadOnlyList<VmEntry> Read() => Load(setAside: false);

    /// <summary>Reads the map under the lock (a corrupt file is set aside here), changing nothing.</summary>
    public async Task<IReadOnlyList<VmEntry>> ReadLockedAsync(CancellationToken ct, TimeSpan? timeout = null)
    {
        using var held = await LockAsync(timeout, ct).ConfigureAwait(false);
        return Load(setAside: true);
    }

    /// <summary>Runs <paramref name="change"/> on the map under the lock and saves what it leaves.</summary>
    public async Task<T> UpdateAsync<T>(Func<List<VmEntry>, T> change, CancellationToken ct, TimeSpan? timeout = null)
    {
        using var held = await LockAsync(timeout, ct).ConfigureAwait(false);
        var entries = Load(setAside: true);
        var result = change(entries);
        var temp = FilePath + ".tmp";
        var options = new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write, UnixCreateMode = Private };
        await using (var file = new FileStream(temp, options))
        {
            await JsonSerializer.SerializeAsync(file, entries, VmStateJson.Default.ListVmEntry, ct).ConfigureAwait(false);
        }

        File.SetUnixFileMode(temp, Private); // an older .tmp may have had another mode
        File.Move(temp, FilePath, overwrite: true);
        return result;
    }

    /// <summary>Takes the exclusive lock (FileShare.None is an exclusive flock on Unix), polling until the timeout.</summary>
    private async Task<FileStream> LockAsync(TimeSpan? timeout, CancellationToken ct)
    {
        Directory.CreateDirectory(runtimeDirectory);
        var limit = timeout ?? DefaultLockTimeout;
        var deadline = DateTime.UtcNow + limit;
        var options = new FileStreamOptions
        {
            Mode = FileMode.OpenOrCreate, Access = FileAccess.ReadWrite, Share = FileShare.None, UnixCreateMode = Private,
        };
        while (true)
        {
            try
            {
                return new FileStream(LockPath, options);
            }
            catch (IOException) when (DateTime.UtcNow < deadline)
            {
                await Task.Delay(50, ct).ConfigureAwait(false);
            }
            catch (IOException e)
            {
                throw new IOException($"the VM state map {FilePath} stayed locked ({LockPath}) for {limit.TotalSeconds:0.#} s", e);
            }
        }
    }

    private List<VmEntry> Load(bool setAside)
    {
        string text;
        try
        {
            text = File.ReadAllText(FilePath);
        }
        catch (FileNotFoundException)
        {
            return [];
        }

        try
        {
            var entries = JsonSerializer.Deserialize(text, VmStateJson.Default.ListVmEntry) ?? [];
            if (entries.Any(e => e is null || e.Name is null || e.Channel is null || e.Ticket is null || e.Directory is null || e.Disks is null))
            {
                throw new JsonException("an entry lacks a field");
            }

            return entries;
        }
        catch (JsonException e)
        {
            if (!setAside)
            {
                log.LogWarning("The VM state map {Map} is corrupt ({Reason}); reading it as empty", FilePath, e.Message);
                return [];
            }

            var aside = FilePath + ".corrupt";
            log.LogWarning("The VM state map {Map} is corrupt ({Reason}); set aside as {Aside}, starting with an empty map", FilePath, e.Message, aside);
            try
            {
                File.Move(FilePath, aside, overwrite: true);
            }
            catch (IOException)
            {
                // Replaced below by the next write anyway.
            }

            return [];
        }
    }
}
