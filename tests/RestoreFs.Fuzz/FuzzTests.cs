using Xunit.Abstractions;

namespace RestoreFs.Fuzz;

/// <summary>
/// Each target a few seconds (at most <see cref="MaxInputs"/> inputs) on its seed corpus plus mutations from a fixed
/// seed; any finding fails the test and is saved for <c>--repro</c>.
/// </summary>
public sealed class FuzzTests(ITestOutputHelper output)
{
    private const int MaxInputs = 3000;

    public static TheoryData<string> TargetNames() => [.. Targets.All.Select(t => t.Name)];

    [Theory]
    [MemberData(nameof(TargetNames))]
    public void Target_survives_its_corpus_and_mutations(string name)
    {
        var target = Targets.Get(name);
        Assert.NotEmpty(Driver.LoadCorpus(name));
        var findings = Path.Combine(Path.GetTempPath(), "restorefs-fuzz-findings");
        var seconds = double.TryParse(Environment.GetEnvironmentVariable("RESTOREFS_FUZZ_TEST_SECONDS"), System.Globalization.CultureInfo.InvariantCulture, out var s) ? s : 3;
        var result = new Driver(findings, Driver.DefaultPerInput, Driver.DefaultMaxAllocatedBytes)
            .Run(target, seed: 20261130, TimeSpan.FromSeconds(seconds), MaxInputs);
        output.WriteLine($"{name}: {result.Inputs} inputs");
        Assert.True(result.Findings.Count == 0,
            string.Join("\n", result.Findings.Select(f => $"{f.Kind} (input saved as {f.SavedAs}): {f.Detail}")));
    }

    [Fact]
    public void The_mutator_is_deterministic()
    {
        var corpus = new List<byte[]> { "hello world"u8.ToArray(), new byte[64] };
        var a = new Mutator(7);
        var b = new Mutator(7);
        for (var i = 0; i < 200; i++)
        {
            Assert.Equal(a.Mutate(corpus), b.Mutate(corpus));
        }
    }
}

/// <summary>The driver itself: a crash, a hang and a memory hog are each reported and their input saved.</summary>
public sealed class DriverTests
{
    [Fact]
    public void Driver_reports_Fake_targets_that_crash_hang_or_allocate()
    {
        var dir = Directory.CreateTempSubdirectory("restorefs-fuzz-driver-").FullName;
        try
        {
            var driver = new Driver(dir, TimeSpan.FromMilliseconds(300), 64L << 20);
            var crash = new FuzzTarget("fake-crash", input => _ = input[input.Length], e => e is InvalidDataException);
            var typed = new FuzzTarget("fake-typed", _ => throw new InvalidDataException("bad"), e => e is InvalidDataException);
            var hang = new FuzzTarget("fake-hang", _ => Thread.Sleep(5000), _ => false);
            var hog = new FuzzTarget("fake-hog", input => GC.KeepAlive(new byte[100 << 20]), _ => false);
            var spin = new FuzzTarget("fake-spin", _ =>
            {
                var clock = System.Diagnostics.Stopwatch.StartNew();
                while (clock.ElapsedMilliseconds < 2500)
                {
                }
            }, _ => false);
            var slowButDone = new FuzzTarget("fake-stall", _ => Thread.Sleep(600), _ => false);

            var found = driver.RunOne(crash, [1, 2, 3]);
            Assert.Equal("exception", found?.Kind);
            Assert.Contains("IndexOutOfRangeException", found!.Detail);
            Assert.Equal([1, 2, 3], File.ReadAllBytes(found.SavedAs!));
            Assert.Null(driver.RunOne(typed, [1]));
            var blocked = driver.RunOne(hang, [2]); // blocks without using CPU: caught by the wall bound (10 × 300 ms)
            Assert.Equal("hang", blocked?.Kind);
            Assert.Contains("3 s", blocked!.Detail);
            var spinning = driver.RunOne(spin, [4]); // burns CPU: caught once it used 300 ms of it
            Assert.Equal("hang", spinning?.Kind);
            Assert.Contains("of CPU time", spinning!.Detail);
            // Over 300 ms of wall time but without using CPU, and done: a stall, not a hang. (No memory bound here: the
            // process-wide count would take in what the fuzz tests running beside this one allocate meanwhile.)
            Assert.Null(new Driver(dir, TimeSpan.FromMilliseconds(300), long.MaxValue).RunOne(slowButDone, [5]));
            Assert.Equal("memory", driver.RunOne(hog, [3])?.Kind);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
