using Rlhf.Training.Cli;
using Rlhf.Training.Tests.Model;

namespace Rlhf.Training.Tests.Model;

/// <summary>Smoke run of <c>rlhf bench train</c> on a tiny config: the table, and the JSON keys docs/performance.md names.</summary>
public sealed class TrainBenchTests
{
    [Fact]
    public void PrintsBothPrecisionsSideBySideWithTheirRatio()
    {
        var w = new StringWriter();
        var figures = TrainBenchCommand.Run([("tiny-test", TinyModels.Config())], batch: 2, seqLen: 16, steps: 1, w);
        string text = w.ToString();
        Assert.Contains("libtorch matmul peak", text);
        Assert.Contains("bf16/fp32", text);
        Assert.True(figures["train_tokens_per_s.fp32.tiny-test"] > 0 && figures["train_tokens_per_s.bf16.tiny-test"] > 0);
        Assert.Equal(figures["train_tokens_per_s.bf16.tiny-test"] / figures["train_tokens_per_s.fp32.tiny-test"], figures["bf16_over_fp32.tiny-test"], 9);
        Assert.True(figures["matmul_gflops.fp32"] > 0 && figures["matmul_gflops.bf16"] > 0);
        BenchDocs.AssertNamed(figures.Keys);
        // both rows start from the same weights and tokens: their losses agree to bf16 precision
        var losses = text.Split('\n').Where(l => l.StartsWith("tiny-test", StringComparison.Ordinal))
            .Select(l => double.Parse(l.Split('|')[1].Split(' ', StringSplitOptions.RemoveEmptyEntries)[^1], System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        Assert.Equal(2, losses.Length);
        Assert.True(Math.Abs(losses[0] - losses[1]) < 0.05, $"fp32 loss {losses[0]}, bf16 loss {losses[1]}");
    }
}

/// <summary>Smoke run of <c>rlhf bench ppo</c> on models/tiny: every cell of the table and its JSON keys, which docs/performance.md names.</summary>
public sealed class PpoBenchTests
{
    [Fact]
    public void TimesEveryPhaseForEveryPrecisionPair()
    {
        var w = new StringWriter();
        var settings = new Rlhf.Training.Ppo.PpoConfig { RolloutBatch = 4, MiniBatch = 4, PpoEpochs = 1, MaxNewTokens = 4, Threads = 1 };
        var figures = PpoBenchCommand.Run(["tiny"], settings, w);
        foreach (string p in new[] { "fp32", "bf16" })
            foreach (string r in new[] { "fp32", "int8" })
            {
                double sum = new[] { "generate", "score", "experience", "train", "sync" }.Sum(ph => figures[$"phase_seconds.{ph}.{p}.{r}.tiny"]);
                Assert.True(sum > 0);
                Assert.Equal(sum, figures[$"iteration_seconds.{p}.{r}.tiny"], 9);
            }
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
