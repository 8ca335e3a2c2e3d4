namespace RestoreFs.Fuzz;

/// <summary>
/// <c>restorefs-fuzz [--seconds N] [--seed S] [--target NAME]… [--findings DIR]</c> runs each target for N seconds;
/// <c>--repro TARGET FILE</c> runs one saved input; <c>--make-corpus DIR</c> writes the seed corpus.
/// Exit status 1 when anything was found.
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        var seconds = 10.0;
        var seed = 1;
        var findings = Path.Combine("build", "fuzz-findings");
        var names = new List<string>();
        for (var i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--seconds":
                    seconds = double.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture);
                    break;
                case "--seed":
                    seed = int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture);
                    break;
                case "--target":
                    names.Add(args[++i]);
                    break;
                case "--findings":
                    findings = args[++i];
                    break;
                case "--make-corpus":
                    CorpusMaker.Make(args[++i]);
                    return 0;
                case "--repro":
                {
                    var target = Targets.Get(args[++i]);
                    var finding = new Driver(findings, Driver.DefaultPerInput, Driver.DefaultMaxAllocatedBytes).RunOne(target, File.ReadAllBytes(args[++i]));
                    Console.WriteLine(finding is null ? "no finding" : $"{finding.Kind}: {finding.Detail}");
                    return finding is null ? 0 : 1;
                }

                default:
                    Console.Error.WriteLine($"unknown argument '{args[i]}'");
                    return 2;
            }
        }

        var driver = new Driver(findings, Driver.DefaultPerInput, Driver.DefaultMaxAllocatedBytes);
        var found = 0;
        foreach (var target in names.Count == 0 ? Targets.All : names.Select(Targets.Get).ToList())
        {
            var result = driver.Run(target, seed, TimeSpan.FromSeconds(seconds), int.MaxValue);
            Console.WriteLine($"{target.Name}: {result.Inputs} inputs, {result.Findings.Count} findings");
            foreach (var f in result.Findings)
            {
                found++;
                Console.WriteLine($"  {f.Kind} -> {f.SavedAs}\n    {f.Detail.Split('\n')[0]}");
            }
        }

        Console.WriteLine(found == 0 ? "fuzz: nothing found" : $"fuzz: {found} findings written to {findings}");
        return found == 0 ? 0 : 1;
    }
}
