using System.Text.Json.Nodes;
using Rlhf.Training.Cli;
using Spectre.Console;

namespace Rlhf.Training.Tests.Serving;

/// <summary>A small run of <c>rlhf bench serve</c> on the tiny config: a push moves the model's weights, remote tokens equal in-process ones, every figure is measured.</summary>
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
            ConfigPath = Path.Combine(dir!.FullName, "models", "tiny", "config.json"), Batch = 4, NewTokens = 4, Threads = 1, Repeats = 1, PpoIterations = 1, LoraRank = 4,
        }, console);

        double D(JsonNode? n) => n!.GetValue<double>();
        var push = figures["push_seconds"]!["tiny"]!;
        foreach (string k in new[] { "inprocess", "replicas_1", "replicas_3" }) Assert.InRange(D(push[k]), 1e-6, 600);
        // what a push moves is the model's float32 weights: MB/s × seconds, for 1 and 3 replicas alike, is the parameter
        // count of the config × 4 bytes (the tied embedding once)
        var cfg = Rlhf.Export.Hf.ModelConfig.Load(Path.Combine(dir.FullName, "models", "tiny", "config.json"));
        using (var model = Rlhf.Training.Model.LlamaForCausalLM.Create(cfg, TorchSharp.torch.CPU, TorchSharp.torch.ScalarType.Float32, 1))
        {
            double expectedMb = model.parameters().Sum(p => p.numel()) * 4 / 1e6;
            var rate = figures["push_mb_per_s"]!["tiny"]!;
            foreach (string k in new[] { "replicas_1", "replicas_3" })
                Assert.Equal(expectedMb, D(rate[k]) * D(push[k]), 3);
            // an adapter push moves the rank-4 factors alone: per layer, A [in, 4] and B [4, out] of each projection
            int h = cfg.HiddenSize, q = cfg.NumAttentionHeads * cfg.HeadDim, kv = cfg.NumKeyValueHeads * cfg.HeadDim, i = cfg.IntermediateSize;
            long adapterBytes = cfg.NumHiddenLayers * 4L * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)) * 4;
            Assert.Equal(adapterBytes, figures["push_bytes"]!["tiny_lora_r4"]!.GetValue<long>());
            Assert.Equal(model.parameters().Sum(p => p.numel()) * 4, figures["push_bytes"]!["tiny"]!.GetValue<long>());
            var adapterPush = figures["push_seconds"]!["tiny_lora_r4"]!;
            var adapterRate = figures["push_mb_per_s"]!["tiny_lora_r4"]!;
            foreach (string k in new[] { "replicas_1", "replicas_3" })
                Assert.Equal(adapterBytes / 1e6, D(adapterRate[k]) * D(adapterPush[k]), 6);
            Assert.InRange(D(adapterPush["inprocess"]), 1e-7, 600);
        }
        var tps = figures["tokens_per_s"]!["tiny"]!;
        Assert.True(tps["same_tokens"]!.GetValue<bool>(), "a replica with the same weights and seeds must give the in-process tokens");
        Assert.InRange(D(figures["iteration_seconds_inprocess"]), 1e-6, 600);
        Assert.InRange(D(figures["iteration_seconds_remote"]), 1e-6, 600);
        // both PPO runs time each phase of the iteration
        foreach (string run in new[] { "inprocess", "remote" })
        {
            var phases = figures["iteration_phase_seconds"]![run]!.AsObject();
            Assert.Equal(["experience", "generate", "score", "sync", "train"], phases.Select(kv => kv.Key));
            Assert.All(phases, kv => Assert.InRange(D(kv.Value), 1e-6, 600));
        }
        // the concurrency axis: 1, 4 and 16 clients, each measured
        foreach (string clients in new[] { "1", "4", "16" })
        {
            Assert.InRange(D(figures["concurrent_tokens_per_s"]!["tiny"]![clients]), 1e-3, 1e9);
            Assert.InRange(D(figures["concurrent_over_sequential_tokens_per_s"]!["tiny"]![clients]), 1e-3, 1e3);
            Assert.True(D(figures["ttft_p50_seconds"]!["tiny"]![clients]) <= D(figures["ttft_p95_seconds"]!["tiny"]![clients]));
        }
        string printed = text.ToString();
        foreach (string title in new[] { "weight push", "rollout tokens/s at batch 4", "streaming clients at once", "PPO seconds per iteration" }) Assert.Contains(title, printed);
    }
}
