using Microsoft.Extensions.Logging;
using Serilog;
using Serilog.Events;
using Serilog.Extensions.Logging;

namespace RestoreFs.Cli.Logging;

/// <summary>All logs go through Serilog to stderr; libraries receive Microsoft ILogger instances backed by it.</summary>
public static class LogSetup
{
    public static ILoggerFactory Factory { get; private set; } = new SerilogLoggerFactory();

    public static void Configure(bool verbose)
    {
        var level = verbose ? LogEventLevel.Debug : LogEventLevel.Information;
        if (Environment.GetEnvironmentVariable("RESTOREFS_LOG") is { Length: > 0 } env &&
            Enum.TryParse<LogEventLevel>(env, ignoreCase: true, out var parsed))
        {
            level = parsed;
        }

        Log.Logger = new LoggerConfiguration()
            .MinimumLevel.Is(level)
            .MinimumLevel.Override("Microsoft", LogEventLevel.Warning)
            .Enrich.FromLogContext()
            .WriteTo.Console(
                standardErrorFromLevel: LogEventLevel.Verbose,
                outputTemplate: "{Timestamp:HH:mm:ss.fff} {Level:u3} [{SourceContext}] {Message:lj}{NewLine}{Exception}")
            .CreateLogger();
        Factory = new SerilogLoggerFactory(Log.Logger, dispose: false);
    }
}
