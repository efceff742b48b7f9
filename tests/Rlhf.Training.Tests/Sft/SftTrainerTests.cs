using Rlhf.Training.Common;
using Rlhf.Training.Model;
using Rlhf.Training.Sft;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Sft;

/// <summary>Short real SFT runs on a tiny model and the default task.</summary>
public sealed class SftTrainerTests
{
    internal static string TinyArchitecture()
    {
        string path = Path.Combine(Directory.CreateTempSubdirectory().FullName, "config.json");
        File.WriteAllText(path, """
        { "model_type": "llama", "vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "tie_word_embeddings": true,
          "residual_dropout": 0.1, "attention_dropout": 0.1 }
        """);
        return path;
    }

    internal static SftConfig Tiny(string outDir) => new()
    {
        Out = outDir, ModelConfig = TinyArchitecture(), TokenizerVocabSize = 300, DefaultTrainSize = 64, DefaultEvalSize = 8,
        BatchSize = 8, GradAccum = 2, MaxSeqLen = 48, Lr = 3e-3, WarmupSteps = 1, EvalEvery = 2, CheckpointEvery = 2,
        SampleCount = 4, Threads = 1, Seed = 3,
    };

    static string Temp() => Path.Combine(Directory.CreateTempSubdirectory().FullName, "run");

    [Fact]
    public void RunWritesAnHfFolderMetricsPlotsAndSummary()
    {
        var cfg = Tiny(Temp());
        var s = SftTrainer.Run(cfg, new RunControl { Progress = false });
        Assert.Equal(4, s.Steps);                                  // 64 / (8 × 2) steps in one epoch
        foreach (string f in new[] { "config.json", "model.safetensors", "tokenizer.json", "metrics.csv", "loss.png", "samples.csv", "gold.png", "summary.json" })
            Assert.True(File.Exists(Path.Combine(cfg.Out, f)), f);
        var metrics = MetricsTable.ReadCsv(Path.Combine(cfg.Out, "metrics.csv"));
        Assert.Equal(4, metrics.Rows.Count);
        Assert.True(metrics.Rows[^1]["loss/train"] < metrics.Rows[0]["loss/train"]);  // it learns
        Assert.Equal(Math.Exp(s.EvalLoss), s.EvalPerplexity, 9);
        using var m = LlamaForCausalLM.FromPretrained(cfg.Out, CPU, ScalarType.Float32);   // the output loads as an HF folder
        Assert.Equal(300, m.Config.VocabSize);
    }

    [Fact]
    public void ResumeAfterAKillGivesTheSameWeightsAsAnUninterruptedRun()
    {
        var a = Tiny(Temp());
        SftTrainer.Run(a, new RunControl { Progress = false });

        var b = a with { Out = Temp() };
        SftTrainer.Run(b, new RunControl { Progress = false, StopAfterStep = 2 });
        Assert.False(File.Exists(Path.Combine(b.Out, "model.safetensors")));
        SftTrainer.Run(b, new RunControl { Progress = false, Resume = true });

        Assert.Equal(File.ReadAllBytes(Path.Combine(a.Out, "model.safetensors")), File.ReadAllBytes(Path.Combine(b.Out, "model.safetensors")));
        Assert.Equal(File.ReadAllText(Path.Combine(a.Out, "metrics.csv")).Split('\n').Length,
                     File.ReadAllText(Path.Combine(b.Out, "metrics.csv")).Split('\n').Length);
    }

    [Fact]
    public void ResumeWithADifferentConfigIsRefused()
    {
        var a = Tiny(Temp());
        SftTrainer.Run(a, new RunControl { Progress = false, StopAfterStep = 2 });
        var e = Assert.Throws<InvalidOperationException>(() => SftTrainer.Run(a with { Lr = 1e-2 }, new RunControl { Progress = false, Resume = true }));
        Assert.Contains("config differs", e.Message);
    }

    [Fact]
    public void NonFiniteLossStopsWithTheLastCheckpointIntact()
    {
        var cfg = Tiny(Temp()) with { Lr = 1e30, GradClip = 0, CheckpointEvery = 1, WarmupSteps = 0 };
        var e = Assert.Throws<NonFiniteLossException>(() => SftTrainer.Run(cfg, new RunControl { Progress = false }));
        Assert.Contains("checkpoint", e.Message);
        string ckpt = Path.Combine(cfg.Out, "checkpoint");
        Assert.True(File.Exists(Path.Combine(ckpt, "trainer_state.json")));
        using var m = LlamaForCausalLM.FromPretrained(ckpt, CPU, ScalarType.Float32);   // loadable, not half-written
        Assert.Empty(Directory.GetDirectories(cfg.Out, ".*"));   // no temp or set-aside folder left behind
    }

    [Fact]
    public void ExistingOutputNeedsResumeOrOverwrite()
    {
        var cfg = Tiny(Temp());
        Directory.CreateDirectory(cfg.Out);
        File.WriteAllText(Path.Combine(cfg.Out, "x"), "");
        var e = Assert.Throws<InvalidOperationException>(() => SftTrainer.Run(cfg, new RunControl { Progress = false }));
        Assert.Contains("--overwrite", e.Message);
    }
}
