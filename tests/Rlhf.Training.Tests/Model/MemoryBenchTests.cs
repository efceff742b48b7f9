using Rlhf.Training.Cli;
using Rlhf.Training.Model;
using TorchSharp;

namespace Rlhf.Training.Tests.Model;

/// <summary><c>rlhf bench memory</c>: the parameter counts it sizes cells by, skipped cells, and what a measured cell trains.</summary>
public sealed class MemoryBenchTests
{
    static long Counted(Rlhf.Export.Hf.ModelConfig c)
    {
        using var m = LlamaForCausalLM.Create(c, torch.CPU, torch.ScalarType.Float32, 1);
        return m.parameters().Sum(p => p.numel());
    }

    [Fact]
    public void ParameterCountsAreTheModelsOwn()
    {
        foreach (var c in new[] { TinyModels.Config(), TinyModels.Config(tied: true), TinyModels.Config("qwen2"), TinyModels.Config(attentionBias: true) })
            Assert.Equal(Counted(c), MemoryBenchCommand.Parameters(c));
        // the shipped shapes, against their published sizes: SmolLM-135M and Qwen2.5-0.5B
        Assert.Equal(134_515_008L, MemoryBenchCommand.Parameters(Rlhf.Export.Hf.ModelConfig.Load("models/small/config.json")));
        var medium = Rlhf.Export.Hf.ModelConfig.Load("models/medium/config.json");
        Assert.Equal(494_032_768L, MemoryBenchCommand.Parameters(medium));
        Assert.Equal(Counted(medium with { NumHiddenLayers = 1, VocabSize = 64 }), MemoryBenchCommand.Parameters(medium with { NumHiddenLayers = 1, VocabSize = 64 }));
    }

    [Fact]
    public void ACellThatCannotFitIsSkippedWithWhatItNeeds()
    {
        var w = new StringWriter();
        var results = MemoryBenchCommand.Run(["tiny"], [0, 8], [false], new Rlhf.Training.Ppo.PpoConfig(), w, available: 1000);
        Assert.All(results, r => Assert.NotNull(r.Unmeasured));
        Assert.Contains("needs ≥", w.ToString());
    }

    [Fact]
    public void EachCellTrainsWhatItsTuningSays()
    {
        var cfg = Rlhf.Export.Hf.ModelConfig.Load("models/tiny/config.json");
        var settings = new Rlhf.Training.Ppo.PpoConfig { RolloutBatch = 2, MiniBatch = 2, PpoEpochs = 1, MaxNewTokens = 4, Threads = 1 };
        var results = MemoryBenchCommand.Run(["tiny"], [0, 4], [false, true], settings, new StringWriter(), available: null);
        Assert.Equal(4, results.Count);
        BenchDocs.AssertNamed(MemoryBenchCommand.Figures(results).Keys);
        long h = cfg.HiddenSize;
        // LoRA rank r: A [r, in] and B [out, r] on each of the 7 projections of every layer, in the actor and the critic,
        // plus the critic's value head
        long q = (long)cfg.NumAttentionHeads * cfg.HeadDim, kv = (long)cfg.NumKeyValueHeads * cfg.HeadDim, i = cfg.IntermediateSize;
        long perLayer = 4 * ((h + q) + (h + kv) + (h + kv) + (q + h) + (h + i) + (h + i) + (i + h));
        long lora = 2 * cfg.NumHiddenLayers * perLayer + h;
        foreach (var r in results)
        {
            Assert.Null(r.Unmeasured);
            // the policy as written has the tokenizer's vocabulary (about the config's)
            Assert.InRange(r.Parameters, 0.95 * MemoryBenchCommand.Parameters(cfg), MemoryBenchCommand.Parameters(cfg));
            // full: the actor, and the critic = the trunk (tied embedding) plus its value head [1, H]
            Assert.Equal(r.Cell.LoraRank == 0 ? 2 * r.Parameters + h : lora, r.TrainableParameters);
            Assert.True(r.PeakRssMb > 0 && r.IterationSeconds > 0);
        }
    }
}
