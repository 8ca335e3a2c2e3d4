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
