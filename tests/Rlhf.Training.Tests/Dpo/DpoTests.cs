using Rlhf.Training.Common;
using Rlhf.Training.Dpo;
using Rlhf.Training.Model;
using Rlhf.Training.RewardModel;
using Rlhf.Training.Tests.Common;
using Rlhf.Training.Tests.Model;
using Rlhf.Training.Tests.Ppo;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Dpo;

/// <summary>DPO's loss against hand computations, its sequence log-probabilities against unpadded forwards, and real runs.</summary>
public sealed class DpoTests
{
    [Fact]
    public void LossAndImplicitRewardsEqualAHandComputationOnTwoPairs()
    {
        using var _ = NewDisposeScope();
        // responses: chosen₀, rejected₀, chosen₁, rejected₁
        var logp = tensor(new float[] { -10f, -12f, -9f, -11f });
        var logpRef = tensor(new float[] { -10.5f, -11f, -9.2f, -10f });
        const double beta = 0.1;
        var r = DpoLoss.ImplicitRewards(logp, logpRef, beta);
        double[] expected = [0.05, -0.1, 0.02, -0.1];   // β·(log π − log π_ref)
        for (int i = 0; i < 4; i++) Assert.Equal(expected[i], r[i].item<float>(), 5);
        var chosen = r.index_select(0, tensor(new long[] { 0, 2 }));
        var rejected = r.index_select(0, tensor(new long[] { 1, 3 }));
        var weight = tensor(new float[] { 1, 1 });
        static double LogSigmoid(double x) => -Math.Log(1 + Math.Exp(-x));
        Assert.Equal(-(LogSigmoid(0.15) + LogSigmoid(0.12)) / 2, DpoLoss.Compute(chosen, rejected, weight, 2, beta, DpoLossType.Sigmoid).item<float>(), 5);
        // IPO: h = (r_w − r_l)/β = 1.5, 1.2; (h − 1/(2β))²
        Assert.Equal((Math.Pow(1.5 - 5, 2) + Math.Pow(1.2 - 5, 2)) / 2, DpoLoss.Compute(chosen, rejected, weight, 2, beta, DpoLossType.Ipo).item<float>(), 3);
        Assert.Throws<ArgumentOutOfRangeException>(() => DpoLoss.Compute(chosen, rejected, weight, 2, 0, DpoLossType.Sigmoid));
    }

    [Fact]
    public void EachPromptCountsOnceWhateverItsNumberOfPairs()
    {
        using var _ = NewDisposeScope();
        // prompt A: K = 3, ranking 0 > 1 > 2 (three pairs of weight 1/3); prompt B: K = 2 (one pair of weight 1)
        var a = new DpoTrainer.DpoGroup(RmGroup.FromRanked(new Rlhf.Training.Data.RankedExample("a", ["x", "y", "z"], [0, 1, 2])), [1], [[3], [4], [5]]);
        var b = new DpoTrainer.DpoGroup(RmGroup.FromPair(new Rlhf.Training.Data.PreferencePair("b", "u", "v")), [1], [[6], [7]]);
        var rewards = tensor(new float[] { 3, 2, 1, 0.5f, 1.5f });
        var (chosen, rejected, weight) = RmTrainer.PairTensors(rewards, [a.Group, b.Group], CPU);
        Assert.Equal([3f, 3f, 2f, 0.5f], chosen.data<float>().ToArray());
        Assert.Equal([2f, 1f, 1f, 1.5f], rejected.data<float>().ToArray());
        Assert.Equal([1 / 3f, 1 / 3f, 1 / 3f, 1f], weight.data<float>().ToArray());
    }

    [Fact]
    public void SequenceLogProbsEqualEachResponseScoredAlone()
    {
        using var _ = NewDisposeScope();
        var cfg = TinyModels.Config();
        using var model = TinyModels.Randomized(cfg, 3);
        var groups = new[]
        {
            new DpoTrainer.DpoGroup(RmGroup.FromPair(new Rlhf.Training.Data.PreferencePair("p", "c", "r")), [3, 4, 5], [[6, 7], [8, 9, 10, 11]]),
            new DpoTrainer.DpoGroup(RmGroup.FromPair(new Rlhf.Training.Data.PreferencePair("q", "c", "r")), [12], [[13, 14, 15], [16]]),
        };
        using var __ = no_grad();
        float[] packed = DpoTrainer.SequenceLogProbs(model, groups, 0, CPU).data<float>().ToArray();
        int k = 0;
        foreach (var g in groups)
            foreach (var resp in g.Responses)
            {
                int[] seq = [.. g.Prompt, .. resp];
                var ids = tensor(seq.Select(x => (long)x).ToArray(), [1, seq.Length]);
                var logits = model.Forward(ids, ones(1, seq.Length, dtype: ScalarType.Int64), arange(seq.Length, dtype: ScalarType.Int64).unsqueeze(0));
                var logSoft = nn.functional.log_softmax(logits[0], -1);
                double sum = 0;
                for (int t = 0; t < resp.Length; t++) sum += logSoft[g.Prompt.Length - 1 + t, resp[t]].item<float>();
                Assert.True(Math.Abs(sum - packed[k]) < 1e-4, $"response {k}: alone {sum}, packed {packed[k]}");
                k++;
            }
    }

    static DpoConfig Tiny() => new()
    {
        Out = Path.Combine(Directory.CreateTempSubdirectory().FullName, "dpo"), SftModel = PpoTrainerTests.Models.Value.Sft,
        TrainPrompts = 24, EvalPrompts = 6, K = 3, MaxNewTokens = 8, MaxSeqLen = 40, PromptsPerBatch = 4, Epochs = 2, Lr = 2e-3, WarmupSteps = 0,
        EvalEvery = 3, CheckpointEvery = 2, PolicyEvalPrompts = 8, Threads = 1, Seed = 2,
    };

    [Fact]
    public void ARunWidensTheMarginWritesItsOutputsAndResumesExactly()
    {
        var a = Tiny();
        var s = DpoTrainer.Run(a, new RunControl { Progress = false });
        Assert.Equal(12, s.Steps);
        Assert.Equal(24 * 3, s.TrainPairs);
        Assert.NotNull(s.Policy);
        Assert.True(s.Policy!.Kl > 0, $"KL to SFT {s.Policy.Kl}");
        var m = MetricsTable.ReadCsv(Path.Combine(a.Out, "metrics.csv"));
        // the implicit-reward margin on the training batches grows: mean of the last epoch's steps above the first epoch's
        double first = m.Rows.Take(6).Average(r => r["rewards/margin"]), second = m.Rows.Skip(6).Average(r => r["rewards/margin"]);
        Assert.True(second > first && second > 0, $"margin {first} -> {second}");
        foreach (string f in new[] { "config.json", "model.safetensors", "tokenizer.json", "onnx/model.onnx", "metrics.csv", "loss.png", "rewards.png", "summary.json", "rankings.jsonl" })
            Assert.True(File.Exists(Path.Combine(a.Out, f)), f);

        var b = a with { Out = Path.Combine(Directory.CreateTempSubdirectory().FullName, "dpo") };
        StopAfter.Step(5, c => DpoTrainer.Run(b, c));
        DpoTrainer.Run(b, new RunControl { Progress = false, Resume = true });
        Assert.Equal(File.ReadAllBytes(Path.Combine(a.Out, "model.safetensors")), File.ReadAllBytes(Path.Combine(b.Out, "model.safetensors")));
    }

    [Fact]
    public void LoraRunWidensTheMarginWithTheBaseAsReferenceAndResumesExactly()
    {
        // π_ref is the policy's own frozen base (adapters off): at step 0 every implicit reward is 0, so the margin starts at 0
        var a = Tiny() with { LoraRank = 8, LoraAlpha = 16, Lr = 1e-2 };
        DpoTrainer.Run(a, new RunControl { Progress = false });
        var m = MetricsTable.ReadCsv(Path.Combine(a.Out, "metrics.csv"));
        Assert.Equal(0.0, m.Rows[0]["rewards/margin"], 6);
        double first = m.Rows.Take(6).Average(r => r["rewards/margin"]), second = m.Rows.Skip(6).Average(r => r["rewards/margin"]);
        Assert.True(second > first && second > 0, $"margin {first} -> {second}");
        Assert.True(File.Exists(Path.Combine(a.Out, "adapter", "adapter_model.safetensors")));
        var b = a with { Out = Path.Combine(Directory.CreateTempSubdirectory().FullName, "dpo") };
        StopAfter.Step(2, c => DpoTrainer.Run(b, c));
        DpoTrainer.Run(b, new RunControl { Progress = false, Resume = true });
        Assert.Equal(File.ReadAllBytes(Path.Combine(a.Out, "model.safetensors")), File.ReadAllBytes(Path.Combine(b.Out, "model.safetensors")));
    }

    [Fact]
    public void BadSettingsAreOneLineErrors()
    {
        var e = Assert.Throws<InvalidDataException>(() => (Tiny() with { Beta = 0 }).Validate());
        Assert.Contains("beta must be > 0", e.Message);
        Assert.DoesNotContain('\n', e.Message);
        var (code, output) = Serving.ServerProcess.RunCli(TimeSpan.FromMinutes(1), null, "dpo", "--beta", "-1", "--out", Path.Combine(Path.GetTempPath(), "never"));
        Assert.NotEqual(0, code);
        Assert.Contains("error: Invalid DPO config: beta must be > 0", output);
    }
}
