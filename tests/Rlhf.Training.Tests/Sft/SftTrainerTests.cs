using System.Text.Json.Nodes;
using Microsoft.VisualBasic.FileIO;
using Rlhf.Export;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Data.DefaultTask;
using Rlhf.Training.Model;
using Rlhf.Training.Sft;
using Rlhf.Training.Tests.Model;
using TorchSharp;
using static TorchSharp.torch;
using Rlhf.Training.Tests.Common;

namespace Rlhf.Training.Tests.Sft;

/// <summary>Short real SFT runs on a tiny model and the default task.</summary>
public sealed class SftTrainerTests
{
    /// <summary>The shared tiny architecture (vocab 300, tied embeddings, dropout 0.1) as a config.json for the SFT stage.</summary>
    internal static string TinyArchitecture()
    {
        string path = Path.Combine(Directory.CreateTempSubdirectory().FullName, "config.json");
        (Rlhf.Tests.Shared.TinyLlama.Config(vocab: 300, tied: true) with { ResidualDropout = 0.1, AttentionDropout = 0.1 }).Save(path);
        return path;
    }

    internal static SftConfig Tiny(string outDir) => new()
    {
        Out = outDir, ModelConfig = TinyArchitecture(), TokenizerVocabSize = 300, DefaultTrainSize = 64, DefaultEvalSize = 8,
        BatchSize = 8, GradAccum = 2, MaxSeqLen = 48, Lr = 3e-3, WarmupSteps = 1, EvalEvery = 2, CheckpointEvery = 2,
        SampleCount = 4, Threads = 1, Seed = 3,
        Precision = Precision.Fp32,   // the float32 baseline (auto is bf16 on a CPU with native bfloat16) that the bf16 test compares with
    };

    static string Temp() => Path.Combine(Directory.CreateTempSubdirectory().FullName, "run");

    /// <summary>One tiny SFT run shared by the tests that only read its outputs (trained once per test process).</summary>
    internal static (SftConfig Config, SftSummary Summary) Shared => SharedRun.Value;

    static readonly Lazy<(SftConfig, SftSummary)> SharedRun = new(() =>
    {
        var cfg = Tiny(Temp());
        return (cfg, SftTrainer.Run(cfg, new RunControl { Progress = false }));
    });

    [Fact]
    public void RunWritesEveryFileTheDocsList()
    {
        var (cfg, s) = Shared;
        Assert.Equal(4, s.Steps);                                  // 64 / (8 × 2) steps in one epoch
        foreach (string f in new[] { "config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                                     "special_tokens_map.json", "metrics.csv", "loss.png", "samples.csv", "gold.png", "summary.json", "sft_config.json" })
            Assert.True(File.Exists(Path.Combine(cfg.Out, f)), f);
        foreach (string d in new[] { "onnx", "checkpoint", "init" }) Assert.True(Directory.Exists(Path.Combine(cfg.Out, d)), d);
        foreach (string f in new[] { "model.onnx", "model.onnx.data", "genai_config.json", ExportManifest.FileName, "tokenizer.json" })
            Assert.True(File.Exists(Path.Combine(cfg.Out, "onnx", f)), "onnx/" + f);
        foreach (string f in new[] { "config.json", "model.safetensors", "tokenizer.json", "trainer_state.json", "optimizer.bin" })
            Assert.True(File.Exists(Path.Combine(cfg.Out, "checkpoint", f)), "checkpoint/" + f);
        foreach (string f in new[] { "config.json", "model.safetensors", "tokenizer.json" })
            Assert.True(File.Exists(Path.Combine(cfg.Out, "init", f)), "init/" + f);
        var metrics = MetricsTable.ReadCsv(Path.Combine(cfg.Out, "metrics.csv"));
        Assert.Equal(4, metrics.Rows.Count);
        Assert.True(metrics.Rows[^1]["loss/train"] < metrics.Rows[0]["loss/train"]);  // it learns
        using var m = LlamaForCausalLM.FromPretrained(cfg.Out, CPU, ScalarType.Float32);   // the output loads as an HF folder
        Assert.Equal(300, m.Config.VocabSize);
        // the final weights are the last checkpoint's
        Assert.Equal(File.ReadAllBytes(Path.Combine(cfg.Out, "model.safetensors")), File.ReadAllBytes(Path.Combine(cfg.Out, "checkpoint", "model.safetensors")));
    }

    [Fact]
    public void SummaryValuesAreRecomputedFromTheOutputs()
    {
        var (cfg, s) = Shared;
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(cfg.Out, "summary.json")))!.AsObject();
        Assert.Equal(["stage", "steps", "train_tokens", "final_train_loss", "eval_loss", "eval_perplexity", "gold_mean", "gold_std", "gold_reference_mean",
                      "eos_fraction", "parameters", "seconds", "tokens_per_second"], json.Select(kv => kv.Key).ToArray());
        Assert.Equal("sft", json["stage"]!.GetValue<string>());
        Assert.Equal(4, json["steps"]!.GetValue<int>());

        // train_tokens: response tokens (incl. EOS) of the 64 training examples, each seen once
        var tokenizer = TextTokenizer.Load(cfg.Out);
        var data = SftData.Load(cfg);
        long responseTokens = data.Train.Select(e => SftBatch.Tokenize(tokenizer, e, cfg.MaxSeqLen)).Sum(t => (long)t.Ids.Length - t.PromptLength);
        Assert.Equal(responseTokens, json["train_tokens"]!.GetValue<long>());

        // final_train_loss: mean of the last 10% of steps (at least one) of metrics.csv; eval loss is the last eval row
        var metrics = MetricsTable.ReadCsv(Path.Combine(cfg.Out, "metrics.csv"));
        Assert.Equal(metrics.Rows[^1]["loss/train"], json["final_train_loss"]!.GetValue<double>(), 12);
        Assert.Equal(metrics.Rows[^1]["loss/eval"], json["eval_loss"]!.GetValue<double>(), 12);
        Assert.Equal(Math.Exp(s.EvalLoss), json["eval_perplexity"]!.GetValue<double>(), 9);

        // eval_loss independently: mean −log p(target) over held-out response tokens, one unpadded row at a time
        using var m = LlamaForCausalLM.FromPretrained(cfg.Out, CPU, ScalarType.Float32);
        double nll = 0;
        long count = 0;
        foreach (var e in data.Eval.Select(x => SftBatch.Tokenize(tokenizer, x, cfg.MaxSeqLen)))
        {
            using var logits = TinyModels.RowLogits(m, [.. e.Ids.Select(x => (long)x)]);
            using var logp = logits.log_softmax(-1);
            for (int t = e.PromptLength - 1; t < e.Ids.Length - 1; t++, count++) nll -= logp[t, e.Ids[t + 1]].item<float>();
        }
        Assert.True(Math.Abs(nll / count - json["eval_loss"]!.GetValue<double>()) < 1e-4, $"eval_loss {json["eval_loss"]} vs {nll / count} row by row");

        Assert.Equal(m.parameters().Sum(p => p.numel()), json["parameters"]!.GetValue<long>());
        Assert.True(json["seconds"]!.GetValue<double>() > 0 && json["tokens_per_second"]!.GetValue<double>() > 0);

        // gold statistics from samples.csv, with every sample's gold score recomputed by the gold scorer
        var rows = ReadCsv(Path.Combine(cfg.Out, "samples.csv"));
        Assert.Equal(["prompt", "response", "ended_with_eos", "gold", "reference_response", "reference_gold"], rows[0]);
        var samples = rows.Skip(1).ToList();
        Assert.Equal(cfg.SampleCount, samples.Count);
        foreach (var r in samples)
        {
            Assert.Equal(GoldScorer.Score(r[0], r[1], r[2] == "1").Total, double.Parse(r[3], System.Globalization.CultureInfo.InvariantCulture), 3);
            Assert.Equal(GoldScorer.Score(r[0], r[4]).Total, double.Parse(r[5], System.Globalization.CultureInfo.InvariantCulture), 3);
        }
        double[] gold = [.. samples.Select(r => GoldScorer.Score(r[0], r[1], r[2] == "1").Total)];
        var (mean, std) = Statistics.MeanStd(gold);
        Assert.Equal(mean, json["gold_mean"]!.GetValue<double>(), 9);
        Assert.Equal(std, json["gold_std"]!.GetValue<double>(), 9);
        Assert.Equal(samples.Average(r => GoldScorer.Score(r[0], r[4]).Total), json["gold_reference_mean"]!.GetValue<double>(), 9);
        Assert.Equal(samples.Count(r => r[2] == "1") / (double)samples.Count, json["eos_fraction"]!.GetValue<double>(), 12);
    }

    [Fact]
    public void ConfigRoundTripsAndTheExportRecordsItsParity()
    {
        var (cfg, _) = Shared;
        Assert.Equal(ConfigLoader.ToJson(cfg), ConfigLoader.ToJson(ConfigLoader.Load<SftConfig>(Path.Combine(cfg.Out, "sft_config.json"), [])));

        var manifest = ExportManifest.Load(Path.Combine(cfg.Out, "onnx"));
        Assert.Equal(("sft", "policy", "llama", cfg.Out), (manifest.Stage, manifest.Kind, manifest.ModelType, manifest.Parent));
        Assert.Equal(ExportManifest.Sha256(File.ReadAllBytes(Path.Combine(cfg.Out, "config.json"))), manifest.ConfigSha256);
        Assert.NotNull(manifest.Parity);
        Assert.InRange(manifest.Parity!.MaxAbsDiff, 0, 1e-4);
        Assert.Equal("TorchSharp cpu float32", manifest.Parity.Device);
        Assert.Equal(new FileInfo(Path.Combine(cfg.Out, "onnx", "model.onnx")).Length + new FileInfo(Path.Combine(cfg.Out, "onnx", "model.onnx.data")).Length, manifest.OnnxBytes);
    }

    static List<string[]> ReadCsv(string path)
    {
        using var parser = new TextFieldParser(path) { TextFieldType = FieldType.Delimited, HasFieldsEnclosedInQuotes = true };
        parser.SetDelimiters(",");
        var rows = new List<string[]>();
        while (!parser.EndOfData) rows.Add(parser.ReadFields()!);
        return rows;
    }

    [Fact]
    public void ResumeAfterAKillGivesTheSameWeightsAsAnUninterruptedRun()
    {
        var a = Shared.Config;

        var b = a with { Out = Temp() };
        StopAfter.Step(2, c => SftTrainer.Run(b, c));
        Assert.False(File.Exists(Path.Combine(b.Out, "model.safetensors")));
        SftTrainer.Run(b, new RunControl { Progress = false, Resume = true });

        Assert.Equal(File.ReadAllBytes(Path.Combine(a.Out, "model.safetensors")), File.ReadAllBytes(Path.Combine(b.Out, "model.safetensors")));
        var (ma, mb) = (MetricsTable.ReadCsv(Path.Combine(a.Out, "metrics.csv")), MetricsTable.ReadCsv(Path.Combine(b.Out, "metrics.csv")));
        Assert.Equal(ma.Rows.Count, mb.Rows.Count);
        for (int i = 0; i < ma.Rows.Count; i++)                    // every figure but the timing is the same
            foreach (var (k, v) in ma.Rows[i].Where(kv => kv.Key != "tokens/s")) Assert.Equal(v, mb.Rows[i][k]);
    }

    [Fact]
    public void Bf16RunLearnsAsTheFp32RunDoesKeepsFloat32WeightsAndResumesExactly()
    {
        var (a, sa) = Shared;
        var b = a with { Out = Temp(), Precision = Precision.Bf16 };
        var sb = SftTrainer.Run(b, new RunControl { Progress = false });
        Assert.InRange(sb.EvalLoss / sa.EvalLoss, 0.98, 1.02);          // the issue's bar: within 2% of fp32
        Assert.NotEqual(sa.EvalLoss, sb.EvalLoss);                       // and it did run in bf16
        Assert.Contains("\"torch_dtype\": \"float32\"", File.ReadAllText(Path.Combine(b.Out, "config.json")));
        // the export's parity is measured in float32 (what the graph computes), not against the bf16 forward
        var parity = JsonNode.Parse(File.ReadAllText(Path.Combine(b.Out, "onnx", ExportManifest.FileName)))!["parity"]!["max_abs_diff"]!.GetValue<double>();
        Assert.True(parity < 1e-4, $"parity {parity}");

        var c = b with { Out = Temp() };
        StopAfter.Step(2, ctl => SftTrainer.Run(c, ctl));
        SftTrainer.Run(c, new RunControl { Progress = false, Resume = true });
        Assert.Equal(File.ReadAllBytes(Path.Combine(b.Out, "model.safetensors")), File.ReadAllBytes(Path.Combine(c.Out, "model.safetensors")));
    }

    [Fact]
    public void LoraRunWithCheckpointingResumesExactly()
    {
        var a = Shared.Config with { Out = Temp(), LoraRank = 8, LoraTargetModules = ["q_proj", "v_proj"], LoraDropout = 0.1, GradientCheckpointing = true, SampleCount = 0 };
        SftTrainer.Run(a, new RunControl { Progress = false });
        var b = a with { Out = Temp() };
        StopAfter.Step(2, c => SftTrainer.Run(b, c));
        SftTrainer.Run(b, new RunControl { Progress = false, Resume = true });
        foreach (var f in new[] { "model.safetensors", "adapter/adapter_model.safetensors" })
            Assert.Equal(File.ReadAllBytes(Path.Combine(a.Out, f)), File.ReadAllBytes(Path.Combine(b.Out, f)));
    }

    [Fact]
    public void ResumeWithADifferentConfigIsRefused()
    {
        var a = Tiny(Temp());
        StopAfter.Step(2, c => SftTrainer.Run(a, c));
        var e = Assert.Throws<InvalidOperationException>(() => SftTrainer.Run(a with { Lr = 1e-2 }, new RunControl { Progress = false, Resume = true }));
        Assert.Contains("config differs", e.Message);
    }

    [Fact]
    public void NonFiniteLossStopsWithTheLastCheckpointIntact()
    {
        var cfg = Tiny(Temp()) with { Lr = 1e30, GradClip = 0, CheckpointEvery = 1, WarmupSteps = 0 };
        var e = Assert.Throws<NonFiniteLossException>(() => SftTrainer.Run(cfg, new RunControl { Progress = false }));
        Assert.Contains("became NaN", e.Message);
        Assert.True(e.Step >= 1, $"step {e.Step}: no good step before it");
        string ckpt = Path.Combine(cfg.Out, "checkpoint");
        Assert.Contains($"The last checkpoint is intact at {ckpt}", e.Message);
        Assert.True(File.Exists(Path.Combine(ckpt, "trainer_state.json")));
        Assert.Equal(e.Step, JsonNode.Parse(File.ReadAllText(Path.Combine(ckpt, "trainer_state.json")))!["step"]!.GetValue<int>());
        using var m = LlamaForCausalLM.FromPretrained(ckpt, CPU, ScalarType.Float32);   // loadable, not half-written
        Assert.All(m.parameters(), p => Assert.True(p.isfinite().all().item<bool>()));
        Assert.Empty(Directory.GetDirectories(cfg.Out, ".*"));   // no temp or set-aside folder left behind

        // the kept weights are those of the last good step: a run stopped right after that step wrote the same bytes
        var control = cfg with { Out = Temp() };
        StopAfter.Step(e.Step, c => SftTrainer.Run(control, c));
        Assert.Equal(File.ReadAllBytes(Path.Combine(control.Out, "checkpoint", "model.safetensors")), File.ReadAllBytes(Path.Combine(ckpt, "model.safetensors")));
    }

    /// <summary>A fresh tiny model folder for <paramref name="cfg"/>'s data, with <paramref name="edit"/> applied to its weights.</summary>
    static string EditedInit(SftConfig cfg, Action<Dictionary<string, Tensor>> edit)
    {
        string init = Path.Combine(Directory.CreateTempSubdirectory().FullName, "init");
        SftTrainer.WriteFreshModel(init, SftData.Load(cfg).Train.Select(x => PromptFormat.Join(x.Prompt, x.Response)), cfg.TokenizerVocabSize, cfg.ModelConfig, 1);
        using var m = LlamaForCausalLM.FromPretrained(init, CPU, ScalarType.Float32);
        Assert.True(m.Config.TieWordEmbeddings);
        using (var noGrad = torch.no_grad()) edit(m.state_dict());
        m.SavePretrained(init);
        return init;
    }

    [Fact]
    public void NonFiniteGradientNormAloneStopsTheRun()
    {
        // A model whose loss stays finite while one gradient column overflows the norm: the final norm's weight 0 is 1e30
        // and column 0 of the (tied) embedding is 0, so logits never see dimension 0 but d loss / d E[:, 0] ≈ 1e30 · h_0.
        var cfg = Tiny(Temp());
        string init = EditedInit(cfg, w => { w["model.norm.weight"][0] = 1e30f; w["model.embed_tokens.weight"][.., 0] = 0f; });
        var run = cfg with { InitFrom = init, GradClip = 0, CheckpointEvery = 1 };
        var e = Assert.Throws<NonFiniteLossException>(() => SftTrainer.Run(run, new RunControl { Progress = false }));
        Assert.Equal(0, e.Step);
        Assert.StartsWith("sft: the gradient norm became", e.Message);
        Assert.Contains("No checkpoint had been written yet", e.Message);
        Assert.False(Directory.Exists(Path.Combine(run.Out, "checkpoint")));
        Assert.False(File.Exists(Path.Combine(run.Out, "model.safetensors")));

        // with clipping on, the same overflow is caught too (clip_grad_norm_ returns the non-finite total norm)
        var clipped = run with { Out = Temp(), GradClip = 1.0 };
        Assert.StartsWith("sft: the gradient norm became", Assert.Throws<NonFiniteLossException>(() => SftTrainer.Run(clipped, new RunControl { Progress = false })).Message);

        // a NaN weight makes the loss itself NaN, which is reported first
        var nan = cfg with { Out = Temp(), InitFrom = EditedInit(cfg, w => w["model.norm.weight"][0] = float.NaN) };
        var l = Assert.Throws<NonFiniteLossException>(() => SftTrainer.Run(nan, new RunControl { Progress = false }));
        Assert.StartsWith("sft: the training loss became NaN at step 0", l.Message);
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
