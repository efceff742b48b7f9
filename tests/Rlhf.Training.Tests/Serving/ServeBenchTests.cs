using System.Text.Json.Nodes;
using Rlhf.Training.Cli;
using Spectre.Console;

namespace Rlhf.Training.Tests.Serving;

/// <summary>A small run of <c>rlhf bench serve</c> on the tiny config: the figures exist, agree with each other, and remote tokens equal in-process ones.</summary>
public sealed class ServeBenchTests
{
    [Fact]
    public void BenchServeWritesConsistentFigures()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "models", "tiny", "config.json"))) dir = dir.Parent;
        Assert.NotNull(dir);
        var text = new StringWriter();
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Ansi = AnsiSupport.No, ColorSystem = ColorSystemSupport.NoColors, Out = new AnsiConsoleOutput(text) });
        var figures = ServeBenchCommand.Run(new ServeBenchCommand.Options
        {
            ConfigPath = Path.Combine(dir!.FullName, "models", "tiny", "config.json"), Batch = 4, NewTokens = 4, Threads = 1, Repeats = 1, PpoIterations = 1,
        }, console);

        double D(JsonNode? n) => n!.GetValue<double>();
        var push = figures["push_seconds"]!["tiny"]!;
        foreach (string k in new[] { "inprocess", "replicas_1", "replicas_3" }) Assert.InRange(D(push[k]), 1e-6, 600);
        // MB/s times seconds is the same megabytes for 1 and 3 replicas (the weights of one model).
        var rate = figures["push_mb_per_s"]!["tiny"]!;
        double mb1 = D(rate["replicas_1"]) * D(push["replicas_1"]), mb3 = D(rate["replicas_3"]) * D(push["replicas_3"]);
        Assert.Equal(mb1, mb3, 6);
        Assert.InRange(mb1, 1, 100);   // the tiny model: a few MB of float32 weights
        var tps = figures["tokens_per_s"]!["tiny"]!;
        Assert.True(tps["same_tokens"]!.GetValue<bool>(), "a replica with the same weights and seeds must give the in-process tokens");
        Assert.Equal(D(tps["remote"]) / D(tps["inprocess"]), D(figures["remote_over_inprocess_tokens_per_s"]!["tiny"]), 12);
        Assert.InRange(D(figures["iteration_seconds_inprocess"]), 1e-6, 600);
        Assert.InRange(D(figures["iteration_seconds_remote"]), 1e-6, 600);
        // The iteration is the sum of its phases, each phase measured in both runs.
        foreach (var (run, total) in new[] { ("inprocess", "iteration_seconds_inprocess"), ("remote", "iteration_seconds_remote") })
        {
            var phases = figures["iteration_phase_seconds"]![run]!.AsObject();
            Assert.Equal(["experience", "generate", "score", "sync", "train"], phases.Select(kv => kv.Key));
            Assert.Equal(D(figures[total]), phases.Sum(kv => D(kv.Value)), 9);
        }
        // the concurrency axis: 1, 4 and 16 clients, each ratio the quotient of its two rates, TTFT p50 <= p95
        foreach (string clients in new[] { "1", "4", "16" })
        {
            double ratio = D(figures["concurrent_over_sequential_tokens_per_s"]!["tiny"]![clients]);
            double concurrent = D(figures["concurrent_tokens_per_s"]!["tiny"]![clients]);
            Assert.InRange(concurrent, 1e-3, 1e9);
            Assert.InRange(ratio, 1e-3, 1e3);
            Assert.True(D(figures["ttft_p50_seconds"]!["tiny"]![clients]) <= D(figures["ttft_p95_seconds"]!["tiny"]![clients]));
        }
        string printed = text.ToString();
        foreach (string title in new[] { "weight push", "rollout tokens/s at batch 4", "streaming clients at once", "PPO seconds per iteration" }) Assert.Contains(title, printed);
    }
}
