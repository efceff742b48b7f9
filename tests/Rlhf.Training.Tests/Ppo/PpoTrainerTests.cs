using System.Text.Json.Nodes;
using Rlhf.Training.Common;
using Rlhf.Training.Ppo;
using Rlhf.Training.RewardModel;
using Rlhf.Training.Sft;
using Rlhf.Training.Tests.Sft;
using Rlhf.Training.Tests.Common;
using Rlhf.Inference.Rollout;
using Rlhf.Training.Model;
using Rlhf.Training.Tests.Model;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Ppo;

/// <summary>Short real PPO runs: tiny SFT and RM models, ONNX Runtime rollouts, in-memory weight sync.</summary>
public sealed class PpoTrainerTests
{
    internal static readonly Lazy<(string Sft, string Rm)> Models = new(() =>
    {
        string root = Directory.CreateTempSubdirectory().FullName;
        var sft = SftTrainerTests.Tiny(Path.Combine(root, "sft"));
        SftTrainer.Run(sft, new RunControl { Progress = false });
        var rm = new RmConfig
        {
            Out = Path.Combine(root, "rm"), SftModel = sft.Out, TrainPrompts = 8, EvalPrompts = 4, K = 2, PromptsPerBatch = 4,
            MaxNewTokens = 8, MaxSeqLen = 40, Threads = 1,
        };
        RmTrainer.Run(rm, new RunControl { Progress = false });
        return (sft.Out, rm.Out);
    });

    internal static PpoConfig Tiny() => new()
    {
        Out = Path.Combine(Directory.CreateTempSubdirectory().FullName, "ppo"), SftModel = Models.Value.Sft, RmModel = Models.Value.Rm,
        DefaultPrompts = 64, EvalPrompts = 8, Iterations = 3, RolloutBatch = 8, MiniBatch = 4, PpoEpochs = 2, MaxNewTokens = 10,
        EvalEvery = 2, CheckpointEvery = 1, BestOfN = [1, 2], Threads = 1, Seed = 4,
    };

    [Fact]
    public void RunLogsEveryMetricAndWritesPolicyReportAndSummary()
    {
        var cfg = Tiny();
        var s = PpoTrainer.Train(cfg, new RunControl { Progress = false });
        Assert.Equal(3, s.Iterations);
        var m = MetricsTable.ReadCsv(Path.Combine(cfg.Out, "metrics.csv"));
        foreach (string k in new[] { "objective/rlhf_reward", "objective/scores", "objective/kl", "objective/entropy", "objective/gold",
                     "policy/approxkl", "policy/clipfrac", "val/clipfrac", "loss/policy", "loss/value", "val/explained_variance",
                     "val/mean", "returns", "tokens/eos_fraction", "time/generate", "time/score", "time/experience", "time/train",
                     "time/sync", "samples/s", "policy/rollout_logprob_mismatch", "eval/gold", "eval/kl",
                     "rollout/is_weight_mean", "rollout/is_weight_clipfrac" })
            Assert.Contains(k, m.Columns);
        // float32 rollouts: the importance weights are 1 up to float rounding, none truncated
        Assert.All(m.Rows, r => Assert.True(Math.Abs(r["rollout/is_weight_mean"] - 1) < 1e-3 && r["rollout/is_weight_clipfrac"] == 0));
        // the ORT rollout logprobs and TorchSharp's old logprobs are the same numbers (weights synced each iteration)
        Assert.All(m.Rows, r => Assert.True(r["policy/rollout_logprob_mismatch"] < 1e-3, $"mismatch {r["policy/rollout_logprob_mismatch"]}"));
        foreach (string f in new[] { "config.json", "model.safetensors", "tokenizer.json", "critic/model.safetensors", "onnx/model.onnx",
                     "reward.png", "kl.png", "losses.png", "report.md", "report.png", "summary.json" })
            Assert.True(File.Exists(Path.Combine(cfg.Out, f)), f);
        Assert.Equal(2, s.BestOfN.Count);
        Assert.Equal(0, s.BestOfN[0].Kl, 12);                          // N = 1 is the SFT model
        Assert.Equal(Math.Log(2) - 0.5, s.BestOfN[1].Kl, 12);          // log N − (N − 1)/N
        Assert.Equal("ppo", JsonNode.Parse(File.ReadAllText(Path.Combine(cfg.Out, "summary.json")))!["stage"]!.GetValue<string>());
    }

    [Fact]
    public void OnAUsersPromptsNoGoldFigureAppearsAnywhere()
    {
        var cfg = Tiny() with { Iterations = 2, CheckpointEvery = 0 };
        string prompts = Path.Combine(Path.GetDirectoryName(cfg.Out)!, "prompts.jsonl");
        File.WriteAllLines(prompts, Enumerable.Range(0, 40).Select(i => $"{{\"prompt\": \"question {i}: what do you think of\"}}"));
        cfg = cfg with { PromptsFile = prompts };
        var s = PpoTrainer.Train(cfg, new RunControl { Progress = false });
        Assert.Null(s.SftGoldMean);
        Assert.Null(s.PpoGoldMean);
        Assert.Null(s.GoldGainInSftStd);
        Assert.All(s.BestOfN, b => Assert.Null(b.Gold));
        Assert.InRange(s.RmWinRateVsSft, 0, 1);
        Assert.True(s.PpoResponseTokens > 0);
        var m = MetricsTable.ReadCsv(Path.Combine(cfg.Out, "metrics.csv"));
        Assert.DoesNotContain(m.Columns, c => c.Contains("gold"));
        Assert.Contains("eval/score", m.Columns);
        Assert.DoesNotContain("gold", File.ReadAllText(Path.Combine(cfg.Out, "report.md")));
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(cfg.Out, "summary.json")))!;
        Assert.Null(json["gold_gain_in_sft_std"]);
        Assert.Contains("question 39:", File.ReadAllText(Path.Combine(cfg.Out, "report.md")));   // the held-out prompts are the file's last four
    }

    [Fact]
    public void ResumeAfterAKillMatchesAnUninterruptedRun()
    {
        var a = Tiny() with { BestOfN = [1] };
        PpoTrainer.Train(a, new RunControl { Progress = false });
        var b = a with { Out = Path.Combine(Directory.CreateTempSubdirectory().FullName, "ppo") };
        StopAfter.Step(2, c => PpoTrainer.Train(b, c));
        PpoTrainer.Train(b, new RunControl { Progress = false, Resume = true });
        Assert.Equal(File.ReadAllBytes(Path.Combine(a.Out, "model.safetensors")), File.ReadAllBytes(Path.Combine(b.Out, "model.safetensors")));
        Assert.Equal(File.ReadAllBytes(Path.Combine(a.Out, "critic", "model.safetensors")), File.ReadAllBytes(Path.Combine(b.Out, "critic", "model.safetensors")));
    }

    [Fact]
    public void LoraRunTrainsAdaptersOnlyAndResumesExactly()
    {
        // actor and critic with rank-4 adapters: the checkpoint holds base + adapter/, the resumed run ends byte-equal,
        // and the outputs are merged weights (moved away from the SFT model) with PEFT adapters next to them
        var a = Tiny() with { BestOfN = [1], LoraRank = 4, LoraAlpha = 8, ActorLr = 1e-2, CriticLr = 1e-2 };
        PpoTrainer.Train(a, new RunControl { Progress = false });
        var b = a with { Out = Path.Combine(Directory.CreateTempSubdirectory().FullName, "ppo") };
        StopAfter.Step(2, c => PpoTrainer.Train(b, c));
        Assert.True(File.Exists(Path.Combine(b.Out, "checkpoint", "actor", "adapter", "adapter_model.safetensors")));
        PpoTrainer.Train(b, new RunControl { Progress = false, Resume = true });
        foreach (var file in new[] { "model.safetensors", "adapter/adapter_model.safetensors", "critic/model.safetensors", "critic/adapter/adapter_model.safetensors" })
            Assert.Equal(File.ReadAllBytes(Path.Combine(a.Out, file)), File.ReadAllBytes(Path.Combine(b.Out, file)));
        Assert.NotEqual(File.ReadAllBytes(Path.Combine(Models.Value.Sft, "model.safetensors")), File.ReadAllBytes(Path.Combine(a.Out, "model.safetensors")));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(a.Out, "adapter", "adapter_config.json")))!;
        Assert.Equal("CAUSAL_LM", (string?)config["task_type"]);
        Assert.Equal(Models.Value.Sft, (string?)config["base_model_name_or_path"]);
    }

    [Fact]
    public void WithoutCriticLoraTheCriticTrainsFullyWhileTheActorKeepsItsAdapters()
    {
        var cfg = Tiny() with { BestOfN = [1], LoraRank = 4, LoraAlpha = 8, ActorLr = 1e-2, CriticLora = false };
        PpoTrainer.Train(cfg, new RunControl { Progress = false });
        Assert.True(File.Exists(Path.Combine(cfg.Out, "adapter", "adapter_model.safetensors")));
        Assert.False(Directory.Exists(Path.Combine(cfg.Out, "critic", "adapter")));
        // every trunk matrix of the critic moved from the RM it started from (adapters alone would leave the base as it was)
        using var rm = LlamaForSequenceClassification.FromPretrained(Models.Value.Rm, CPU, ScalarType.Float32);
        using var critic = LlamaForSequenceClassification.FromPretrained(Path.Combine(cfg.Out, "critic"), CPU, ScalarType.Float32);
        var before = rm.state_dict();
        foreach (var (name, p) in critic.state_dict().Where(kv => kv.Key.EndsWith("proj.weight", StringComparison.Ordinal)))
            Assert.False(TinyModels.Same(before[name], p), $"{name} did not train");
    }

    [Fact]
    public void RunningRewardMomentsSurviveAResume()
    {
        // reward_normalization running: the moments of iterations 1–2 must come back from the checkpoint, or iteration 3
        // normalises its scores differently and the weights part
        var a = Tiny() with { BestOfN = [1], RewardNormalization = ScoreNormalization.Running };
        PpoTrainer.Train(a, new RunControl { Progress = false });
        var b = a with { Out = Path.Combine(Directory.CreateTempSubdirectory().FullName, "ppo") };
        StopAfter.Step(2, c => PpoTrainer.Train(b, c));
        PpoTrainer.Train(b, new RunControl { Progress = false, Resume = true });
        Assert.Equal(File.ReadAllBytes(Path.Combine(a.Out, "model.safetensors")), File.ReadAllBytes(Path.Combine(b.Out, "model.safetensors")));
        var m = MetricsTable.ReadCsv(Path.Combine(b.Out, "metrics.csv"));
        Assert.Equal(MetricsTable.ReadCsv(Path.Combine(a.Out, "metrics.csv")).Rows[^1]["objective/scores"], m.Rows[^1]["objective/scores"]);
    }

    [Fact]
    public void GenAiRolloutsFollowEveryUpdate()
    {
        var cfg = Tiny() with { Engine = RolloutEngineKind.Genai, BestOfN = [1] };
        var s = PpoTrainer.Train(cfg, new RunControl { Progress = false });
        Assert.Equal(3, s.Iterations);
        var m = MetricsTable.ReadCsv(Path.Combine(cfg.Out, "metrics.csv"));
        // GenAI's logprobs equal TorchSharp's old logprobs in every iteration: the weights fed to its generators are the
        // actor's after each update (a stale policy would differ by the update's size from iteration 2 on).
        Assert.All(m.Rows, r => Assert.True(r["policy/rollout_logprob_mismatch"] < 1e-3, $"mismatch {r["policy/rollout_logprob_mismatch"]}"));
        Assert.True(m.Rows[^1]["policy/approxkl"] > 0);
        Assert.False(Directory.Exists(Path.Combine(cfg.Out, ".rollout_engine")));   // the scratch export is removed
        // The policies the stages export (SFT's and PPO's onnx/) are GenAI folders that decode as our engine does.
        int vocab = Rlhf.Export.Hf.ModelConfig.Load(Path.Combine(cfg.Out, "config.json")).VocabSize;
        Assert.True(Rollout.GenAiRolloutTests.AssertGenAiDecodesAsOurEngine(Path.Combine(Models.Value.Sft, "onnx"), vocab) > 0);
        Assert.True(Rollout.GenAiRolloutTests.AssertGenAiDecodesAsOurEngine(Path.Combine(cfg.Out, "onnx"), vocab) > 0);
    }

    /// <summary>An SFT model whose head_dim is 16 (the GroupQueryAttention graph, which int8 rollouts need), trained once.</summary>
    internal static readonly Lazy<string> GqaSft = new(() =>
    {
        string arch = Path.Combine(Directory.CreateTempSubdirectory().FullName, "config.json");
        File.WriteAllText(arch, """
        { "model_type": "llama", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "tie_word_embeddings": true }
        """);
        var sft = SftTrainerTests.Tiny(Path.Combine(Directory.CreateTempSubdirectory().FullName, "sft")) with { ModelConfig = arch, SampleCount = 0 };
        SftTrainer.Run(sft, new RunControl { Progress = false });
        return sft.Out;
    });

    [Fact]
    public void Int8RolloutsAreCorrectedByTruncatedImportanceWeights()
    {
        PpoConfig Int8(double cap) => Tiny() with
        {
            SftModel = GqaSft.Value, RmModel = null, RewardModel = Path.Combine(Models.Value.Rm, "onnx"), BestOfN = [1],
            RolloutPrecision = Rlhf.Export.RolloutPrecision.Int8, TisCap = cap,
        };
        var a = Int8(2.0);
        PpoTrainer.Train(a, new RunControl { Progress = false });
        var m = MetricsTable.ReadCsv(Path.Combine(a.Out, "metrics.csv"));
        foreach (var r in m.Rows)
        {
            // int8 rollouts are a different policy than the trainer's: the mismatch is visible, the weights are not all 1
            Assert.True(r["policy/rollout_logprob_mismatch"] > 1e-3, $"mismatch {r["policy/rollout_logprob_mismatch"]}: int8 not in use?");
            Assert.True(r["policy/rollout_logprob_mismatch"] < 0.5, $"mismatch {r["policy/rollout_logprob_mismatch"]}: stale or broken int8 weights?");
            Assert.InRange(r["rollout/is_weight_mean"], 0.8, 1.2);
            Assert.NotEqual(1.0, r["rollout/is_weight_mean"]);
            Assert.InRange(r["rollout/is_weight_clipfrac"], 0.0, 0.2);
        }
        // the weights enter the update: without them (tis_cap 0) the same rollouts give other parameters
        var b = Int8(0);
        PpoTrainer.Train(b, new RunControl { Progress = false });
        Assert.NotEqual(File.ReadAllBytes(Path.Combine(a.Out, "model.safetensors")), File.ReadAllBytes(Path.Combine(b.Out, "model.safetensors")));
        var mb = MetricsTable.ReadCsv(Path.Combine(b.Out, "metrics.csv"));
        Assert.Equal(m.Rows[0]["policy/rollout_logprob_mismatch"], mb.Rows[0]["policy/rollout_logprob_mismatch"]);   // same first rollouts
    }

    [Fact]
    public void ALoraActorPushesItsAdapterAloneAndTheEngineSamplesTheAdaptedPolicy()
    {
        // on the GroupQueryAttention graph the rollout engine holds the base once and takes the adapter after every update:
        // its log-probs equal the trainer's in every iteration (a stale or missing adapter would differ from iteration 2 on)
        var cfg = Tiny() with
        {
            SftModel = GqaSft.Value, RmModel = null, RewardModel = Path.Combine(Models.Value.Rm, "onnx"), BestOfN = [1],
            LoraRank = 4, LoraAlpha = 8, ActorLr = 1e-2, CriticLr = 1e-2,
        };
        PpoTrainer.Train(cfg, new RunControl { Progress = false });
        var m = MetricsTable.ReadCsv(Path.Combine(cfg.Out, "metrics.csv"));
        Assert.All(m.Rows, r => Assert.True(r["policy/rollout_logprob_mismatch"] < 1e-3, $"mismatch {r["policy/rollout_logprob_mismatch"]}"));
        Assert.True(m.Rows[^1]["policy/approxkl"] > 0);   // the adapter moved
    }

    [Fact]
    public void Int8RolloutsNeedTheGroupQueryAttentionGraph()
    {
        var cfg = Tiny() with { RolloutPrecision = Rlhf.Export.RolloutPrecision.Int8, BestOfN = [1] };
        var e = Assert.ThrowsAny<Exception>(() => PpoTrainer.Train(cfg, new RunControl { Progress = false }));
        Assert.Contains("GroupQueryAttention", e.Message);
    }
}
