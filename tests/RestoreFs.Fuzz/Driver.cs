using System.Diagnostics;
using System.Security.Cryptography;

namespace RestoreFs.Fuzz;

/// <summary>A target: runs one input; throws only the library's typed errors (which <see cref="Allowed"/> names).</summary>
public sealed record FuzzTarget(string Name, Action<byte[]> Run, Func<Exception, bool> Allowed);

/// <summary>A broken invariant found by a target itself (a missing or extra reply, a wrong answer).</summary>
public sealed class FuzzInvariantException(string message) : Exception(message);

public sealed record FuzzFinding(string Target, string Kind, string Detail, string? SavedAs);

public sealed record FuzzResult(string Target, int Inputs, IReadOnlyList<FuzzFinding> Findings);

/// <summary>
/// Runs a target over its seed corpus and then over mutations of it, each input on a worker with a time limit and
/// an allocation bound. A finding (an exception the target does not allow, a hang, memory over the bound) is written
/// to the findings directory as <c>&lt;target&gt;-&lt;sha256 prefix&gt;.bin</c> with a <c>.txt</c> next to it.
/// </summary>
public sealed class Driver(string findingsDirectory, TimeSpan perInput, long maxAllocatedBytes)
{
    public static readonly TimeSpan DefaultPerInput = TimeSpan.FromSeconds(2);

    public const long DefaultMaxAllocatedBytes = 512L << 20;

    public static string CorpusDirectory(string target) => Path.Combine(AppContext.BaseDirectory, "Corpus", target);

    public static List<byte[]> LoadCorpus(string target)
    {
        var dir = CorpusDirectory(target);
        return Directory.Exists(dir)
            ? Directory.GetFiles(dir).Order(StringComparer.Ordinal).Select(File.ReadAllBytes).ToList()
            : [];
    }

    /// <summary>Corpus first, then mutations until <paramref name="duration"/> or <paramref name="maxInputs"/>.</summary>
    public FuzzResult Run(FuzzTarget target, int seed, TimeSpan duration, int maxInputs, int maxFindings = 5)
    {
        var corpus = LoadCorpus(target.Name);
        var mutator = new Mutator(seed);
        var findings = new List<FuzzFinding>();
        var clock = Stopwatch.StartNew();
        var inputs = 0;
        while (inputs < maxInputs && findings.Count < maxFindings)
        {
            if (inputs >= corpus.Count && clock.Elapsed >= duration)
            {
                break;
            }

            var input = inputs < corpus.Count ? corpus[inputs] : mutator.Mutate(corpus);
            inputs++;
            var finding = RunOne(target, input);
            if (finding is not null)
            {
                findings.Add(finding);
                if (finding.Kind == "hang")
                {
                    break; // the worker is still busy: nothing after it can be trusted
                }
            }
        }

        return new FuzzResult(target.Name, inputs, findings);
    }

    public FuzzFinding? RunOne(FuzzTarget target, byte[] input)
    {
        Exception? error = null;
        long allocated = 0;
        var tid = 0;
        var worker = new Thread(() =>
        {
            Volatile.Write(ref tid, GetTid());
            var before = GC.GetAllocatedBytesForCurrentThread();
            try
            {
                target.Run(input);
            }
            catch (Exception e)
            {
                error = e;
            }

            allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        }, 16 << 20) { IsBackground = true, Name = $"fuzz {target.Name}" };
        var totalBefore = GC.GetTotalAllocatedBytes();
        worker.Start();
        if (!worker.Join(perInput) && Hung(worker, Volatile.Read(ref tid)) is { } why)
        {
            return Save(target, input, "hang", why);
        }

        // Both this worker's allocations and (for targets that hand work to other threads) the process total.
        var total = Math.Max(allocated, GC.GetTotalAllocatedBytes() - totalBefore);
        if (error is not null && !target.Allowed(error))
        {
            return Save(target, input, "exception", error.ToString());
        }

        if (total > maxAllocatedBytes)
        {
            return Save(target, input, "memory", $"{total} bytes allocated for a {input.Length}-byte input (bound {maxAllocatedBytes})");
        }

        return null;
    }

    /// <summary>
    /// After <see cref="perInput"/> of wall time: a hang is the worker using that much CPU time, or no result within ten
    /// times that of wall time (a worker that blocks). Wall time alone is not the measure on a 2-core machine where the
    /// VM tests run beside the fuzz targets: a worker may wait seconds for a core (a key file's 65,535 PBKDF2 rounds,
    /// milliseconds alone, once took over 2 s there). Null when the worker finished after all.
    /// </summary>
    private string? Hung(Thread worker, int tid)
    {
        var wall = Stopwatch.StartNew();
        while (!worker.Join(20))
        {
            var cpu = ThreadCpuOf(tid);
            if (cpu >= perInput)
            {
                return $"no result within {perInput.TotalSeconds:0.#} s of CPU time";
            }

            if (wall.Elapsed + perInput >= perInput * 10)
            {
                return $"no result within {(perInput * 10).TotalSeconds:0.#} s (CPU time used: {cpu.TotalSeconds:0.##} s)";
            }
        }

        return null;
    }

    /// <summary>User + system time of a thread of this process (/proc, clock ticks of 10 ms); zero when unknown.</summary>
    private static TimeSpan ThreadCpuOf(int tid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/self/task/{tid}/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return TimeSpan.FromMilliseconds((long.Parse(fields[11]) + long.Parse(fields[12])) * 10);
        }
        catch (Exception e) when (e is IOException or FormatException or IndexOutOfRangeException or ArgumentOutOfRangeException)
        {
            return TimeSpan.Zero;
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "gettid")]
    private static extern int GetTid();

    private FuzzFinding Save(FuzzTarget target, byte[] input, string kind, string detail)
    {
        string? saved = null;
        try
        {
            Directory.CreateDirectory(findingsDirectory);
            var name = $"{target.Name}-{Convert.ToHexStringLower(SHA256.HashData(input))[..16]}";
            saved = Path.Combine(findingsDirectory, name + ".bin");
            File.WriteAllBytes(saved, input);
            File.WriteAllText(Path.Combine(findingsDirectory, name + ".txt"), $"{target.Name}: {kind}\n{detail}\n");
        }
        catch (IOException)
        {
        }

        return new FuzzFinding(target.Name, kind, detail, saved);
    }
}
