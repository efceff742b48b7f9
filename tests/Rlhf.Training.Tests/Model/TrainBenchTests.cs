using Rlhf.Training.Cli;
using Rlhf.Training.Tests.Model;

namespace Rlhf.Training.Tests.Model;

/// <summary>
/// <c>rlhf bench train</c> on a tiny config: each row trains the next-token loss of the model it names, and the GFLOP/s it
/// prints count the model's real matmuls. (That a bf16 row computes in bfloat16 is MixedPrecisionTests' subject; at
/// initialisation the logits are too small for the loss to show it.)
/// </summary>
public sealed class TrainBenchTests
{
    [Fact]
    public void EachRowTrainsTheNextTokenLossOfItsModel()
    {
        var w = new StringWriter();
        var cfg = TinyModels.Config();
        var figures = TrainBenchCommand.Run([("tiny-test", cfg)], batch: 2, seqLen: 16, steps: 1, w);
        string text = w.ToString();
        Assert.Contains("libtorch matmul peak", text);
        BenchDocs.AssertNamed(figures.Keys);
        var losses = text.Split('\n').Where(l => l.StartsWith("tiny-test", StringComparison.Ordinal))
            .Select(l => double.Parse(l.Split('|')[1].Split(' ', StringSplitOptions.RemoveEmptyEntries)[^1], System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        Assert.Equal(2, losses.Length);
        // next-token loss of freshly initialised weights (std 0.02, near-zero logits) on uniform random tokens: ln V
        foreach (double loss in losses) Assert.True(Math.Abs(loss - Math.Log(cfg.VocabSize)) < 0.05, $"loss {loss} vs ln V {Math.Log(cfg.VocabSize)}");
        Assert.True(Math.Abs(losses[0] - losses[1]) < 0.01, $"fp32 loss {losses[0]}, bf16 loss {losses[1]}");
    }

    [Fact]
    public void StepFlopsCountTheModelsMatmulsThreeTimes()
    {
        var cfg = TinyModels.Config();
        int batch = 3, seqLen = 10;
        using var m = Rlhf.Training.Model.LlamaForCausalLM.Create(cfg, TorchSharp.torch.CPU, TorchSharp.torch.ScalarType.Float32, 1);
        // every 2-D weight but the embedding lookup multiplies each token's activations once: 2 FLOPs per weight per token
        long matmulWeights = m.named_parameters().Where(p => p.parameter.dim() == 2 && !p.name.Contains("embed_tokens")).Sum(p => p.parameter.numel());
        // causal attention: S(S+1)/2 query-key pairs per head and sequence, 2·D FLOPs for q·k and 2·D for the weighted sum of v
        double attentionPerSequence = cfg.NumHiddenLayers * cfg.NumAttentionHeads * (seqLen * seqLen / 2.0) * 4.0 * cfg.HeadDim;
        double forward = batch * (2.0 * matmulWeights * seqLen + attentionPerSequence);
        Assert.Equal(3 * forward, TrainBenchCommand.StepFlops(cfg, batch, seqLen), 6);   // backward ≈ 2 forwards
    }
}

/// <summary>
/// <c>rlhf bench ppo</c> on models/tiny: one cell per training × rollout precision, each really run in its precisions.
/// The engine's and the learner's log-probs are the same numbers only in fp32/fp32; bf16 training and int8 rollouts each
/// open a gap that the table reports.
/// </summary>
public sealed class PpoBenchTests
{
    [Fact]
    public void EachPrecisionPairRunsInItsOwnPrecisions()
    {
        var w = new StringWriter();
        var settings = new Rlhf.Training.Ppo.PpoConfig { RolloutBatch = 4, MiniBatch = 4, PpoEpochs = 1, MaxNewTokens = 4, Threads = 1 };
        var figures = PpoBenchCommand.Run(["tiny"], settings, w);
        double Gap(string p, string r) => figures[$"rollout_logprob_mismatch.{p}.{r}.tiny"];
        string gaps = $"log π gaps fp32/fp32 {Gap("fp32", "fp32"):E2}, fp32/int8 {Gap("fp32", "int8"):E2}, bf16/fp32 {Gap("bf16", "fp32"):E2}, bf16/int8 {Gap("bf16", "int8"):E2}";
        // measured: 1.8e-7, 6.4e-3, 2.1e-3, 5.4e-3 — a cell that silently ran in fp32 would show float rounding only
        Assert.True(Gap("fp32", "fp32") < 1e-5, gaps);
        foreach (var (p, r) in new[] { ("fp32", "int8"), ("bf16", "fp32"), ("bf16", "int8") })
            Assert.True(Gap(p, r) > 1e-4, gaps);
        Assert.Equal(4, w.ToString().Split('\n').Count(l => l.StartsWith("tiny ", StringComparison.Ordinal)));
        BenchDocs.AssertNamed(figures.Keys);
    }
}

/// <summary>The shipped model configs: models/small is the SmolLM-135M shape and its pipeline config loads and validates.</summary>
public sealed class ShippedConfigTests
{
    static string RepoFile(string path)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Rlhf.sln"))) return Path.Combine(dir.FullName, path);
        throw new FileNotFoundException(path);
    }

    [Fact]
    public void SmallIsTheSmolLm135MShapeAndItsPipelineConfigIsValid()
    {
        var c = Rlhf.Export.Hf.ModelConfig.Load(RepoFile("models/small/config.json"));
        Assert.Equal((576, 30, 9, 3, 64, 1536, 49152, true), (c.HiddenSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.IntermediateSize, c.VocabSize, c.TieWordEmbeddings));
        using var m = Rlhf.Training.Model.LlamaForCausalLM.Create(c with { NumHiddenLayers = 1 }, TorchSharp.torch.CPU, TorchSharp.torch.ScalarType.Float32, 1);
        long perLayer = m.parameters().Sum(p => p.numel()) - 49152L * 576 - 576;   // one layer: everything but the embedding and final norm
        Assert.Equal(134_515_008L, 49152L * 576 + 576 + 30 * perLayer);            // SmolLM-135M's parameter count

        var cfg = Rlhf.Training.Common.ConfigLoader.Load<Rlhf.Training.Pipeline.PipelineConfig>(RepoFile("models/small/pipeline.json"), []);
        cfg.Validate();
        Assert.Equal("models/small/config.json", cfg.Sft.ModelConfig);
        Assert.Equal(Rlhf.Training.Model.Precision.Bf16, cfg.Ppo.Precision);
        Assert.Equal(Rlhf.Export.RolloutPrecision.Int8, cfg.Ppo.RolloutPrecision);
    }

    [Fact]
    public void TheFirstLookIsTheDefaultPipelineWithSmallerBudgetsOnly()
    {
        var cfg = Rlhf.Training.Common.ConfigLoader.Load<Rlhf.Training.Pipeline.PipelineConfig>(RepoFile("models/tiny/first-look.json"), []);
        cfg.Validate();
        var d = new Rlhf.Training.Pipeline.PipelineConfig();
        // the same model, task and algorithm as the main job: only step counts and data sizes are smaller
        Assert.Equal((d.Sft.ModelConfig, d.Sft.Lr, d.Rm.Lr, d.Ppo.ActorLr, d.Ppo.TargetKl), (cfg.Sft.ModelConfig, cfg.Sft.Lr, cfg.Rm.Lr, cfg.Ppo.ActorLr, cfg.Ppo.TargetKl));
        Assert.True(cfg.Sft.MaxSteps is > 0 and < 500 && cfg.Rm.TrainPrompts < d.Rm.TrainPrompts && cfg.Ppo.Iterations < d.Ppo.Iterations);
        Assert.Contains("models/tiny/first-look.json", Rlhf.Training.Tests.Common.DocsPages.Readme(), StringComparison.Ordinal);   // the README gives the command
    }
}

/// <summary>The bench commands' <c>--json</c> keys as docs/performance.md documents them.</summary>
internal static class BenchDocs
{
    /// <summary>Every key family of <paramref name="keys"/> (the part before the first '.') is named in docs/performance.md as <c>`family.</c>.</summary>
    internal static void AssertNamed(IEnumerable<string> keys)
    {
        string page = Rlhf.Training.Tests.Common.DocsPages.Docs("performance.md");
        foreach (string family in keys.Select(k => k.Split('.')[0]).Distinct())
            Assert.True(page.Contains($"`{family}.", StringComparison.Ordinal), $"docs/performance.md does not name the --json key {family}.*");
    }
}
