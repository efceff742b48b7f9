using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Ppo;
using Rlhf.Training.Tests.Common;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Ppo;

/// <summary>The critic-free estimators against hand-computed values, and critic-free PPO runs end to end.</summary>
public sealed class AdvantageEstimatorTests
{
    static float[] F(Tensor t) => [.. t.to_type(ScalarType.Float32).data<float>()];

    static void Close(double[] expected, float[] actual, double tol = 1e-5)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++) Assert.True(Math.Abs(expected[i] - actual[i]) < tol, $"[{i}]: expected {expected[i]}, got {actual[i]}");
    }

    [Fact]
    public void LeaveOneOutSubtractsTheMeanOfTheGroupsOtherScores()
    {
        using var _ = NewDisposeScope();
        var s = tensor(new float[] { 1, 2, 3, 6 });
        Close([1 - 2, 2 - 1, 3 - 6, 6 - 3], F(AdvantageEstimators.LeaveOneOut(s, 2)));
        Close([1 - 11 / 3.0, 2 - 10 / 3.0, 3 - 9 / 3.0, 6 - 6 / 3.0], F(AdvantageEstimators.LeaveOneOut(s, 4)));
        Close([0, 0, 0, 0], F(AdvantageEstimators.LeaveOneOut(s, 1)));          // a group of one has no baseline
        Close([0, 0], F(AdvantageEstimators.LeaveOneOut(tensor(new float[] { 2, 2 }), 2)));   // equal rewards: no signal
        Assert.Throws<ArgumentException>(() => AdvantageEstimators.LeaveOneOut(s, 3));
    }

    [Fact]
    public void GroupNormalisationDividesByTheUnbiasedStdOnlyForGrpo()
    {
        using var _ = NewDisposeScope();
        var s = tensor(new float[] { 1, 2, 3, 6, 5, 5, 5, 5 });
        double std = Math.Sqrt((4 + 1 + 0 + 9) / 3.0);
        Close([-2 / (std + 1e-4), -1 / (std + 1e-4), 0, 3 / (std + 1e-4), 0, 0, 0, 0], F(AdvantageEstimators.GroupNormalised(s, 4, divideByStd: true)));
        Close([-2, -1, 0, 3, 0, 0, 0, 0], F(AdvantageEstimators.GroupNormalised(s, 4, divideByStd: false)));
        Close([0, 0, 0, 0, 0, 0, 0, 0], F(AdvantageEstimators.GroupNormalised(s, 1, divideByStd: true)));
    }

    [Fact]
    public void ReturnsToGoAndPerTokenAdvantagesRespectTheMask()
    {
        using var _ = NewDisposeScope();
        var mask = tensor(new float[] { 1, 1, 1, 1, 1, 0 }, [2, 3]);
        var rewards = tensor(new float[] { 1, 2, 3, 4, 5, 7 }, [2, 3]);   // 7 sits on padding and must not count
        Close([6, 5, 3, 9, 5, 0], F(AdvantageEstimators.ReturnsToGo(rewards, mask)));
        Close([0.5, 0.5, 0.5, -2, -2, 0], F(AdvantageEstimators.PerToken(tensor(new float[] { 0.5f, -2 }), mask)));
    }

    [Fact]
    public void LossAggregationsAndTheKlPenaltyMatchHandSums()
    {
        using var _ = NewDisposeScope();
        var mask = tensor(new float[] { 1, 1, 1, 1, 1, 0 }, [2, 3]);
        var x = tensor(new float[] { 1, 2, 3, 4, 5, 100 }, [2, 3]);
        Assert.Equal(15 / 5.0, PpoLosses.Aggregate(x, mask, LossAggregation.TokenMean, 0).item<float>(), 5);
        Assert.Equal((6 / 3.0 + 9 / 2.0) / 2, PpoLosses.Aggregate(x, mask, LossAggregation.SequenceMeanTokenMean, 0).item<float>(), 5);
        Assert.Equal((6 + 9) / 2.0 / 4, PpoLosses.Aggregate(x, mask, LossAggregation.SequenceMeanTokenSumNorm, 4).item<float>(), 5);

        float[] lp = [-1.0f, -0.5f, -2.0f, -0.1f, -3.0f, 0f], lr = [-1.2f, -0.4f, -2.5f, -0.1f, -1.0f, 0f];
        double[] k3 = [.. lp.Select((l, i) => Math.Exp(lr[i] - l) - (lr[i] - l) - 1)];
        double tokenMean = (k3[0] + k3[1] + k3[2] + k3[3] + k3[4]) / 5;
        Assert.Equal(0.1 * tokenMean, PpoLosses.KlPenalty(tensor(lp, [2, 3]), tensor(lr, [2, 3]), mask, 0.1, LossAggregation.TokenMean, 0).item<float>(), 5);
    }

    [Theory]
    [InlineData("rloo")]
    [InlineData("grpo")]
    [InlineData("dr_grpo")]
    public void GroupEstimatorsRefuseOneSamplePerPrompt(string estimator)
    {
        var cfg = ConfigLoader.FromJson<PpoConfig>(new System.Text.Json.Nodes.JsonObject { ["advantage_estimator"] = estimator }, "test");
        var e = Assert.Throws<InvalidDataException>(cfg.Validate);
        Assert.Contains($"advantage_estimator {estimator} compares the samples of a prompt: set n_samples_per_prompt ≥ 2", e.Message);
        Assert.Contains("divide rollout_batch", Assert.Throws<InvalidDataException>((cfg with { NSamplesPerPrompt = 3 }).Validate).Message);
    }

    [Theory]
    [InlineData(AdvantageEstimator.Grpo)]
    [InlineData(AdvantageEstimator.Rloo)]
    [InlineData(AdvantageEstimator.ReinforcePp)]
    public void CriticFreeRunsWriteNoCriticAndResumeExactly(AdvantageEstimator estimator)
    {
        var a = PpoTrainerTests.Tiny() with { AdvantageEstimator = estimator, NSamplesPerPrompt = 2, BestOfN = [1] };
        var s = PpoTrainer.Train(a, new RunControl { Progress = false });
        Assert.Equal(3, s.Iterations);
        Assert.False(Directory.Exists(Path.Combine(a.Out, "critic")));
        Assert.False(Directory.Exists(Path.Combine(a.Out, "checkpoint", "critic")));
        Assert.False(File.Exists(Path.Combine(a.Out, "checkpoint", "critic_optimizer.bin")));
        var m = MetricsTable.ReadCsv(Path.Combine(a.Out, "metrics.csv"));
        Assert.DoesNotContain("loss/value", m.Columns);
        Assert.Equal(estimator == AdvantageEstimator.Grpo, m.Columns.Contains("loss/kl"));
        var b = a with { Out = Path.Combine(Directory.CreateTempSubdirectory().FullName, "ppo") };
        StopAfter.Step(2, c => PpoTrainer.Train(b, c));
        PpoTrainer.Train(b, new RunControl { Progress = false, Resume = true });
        Assert.Equal(File.ReadAllBytes(Path.Combine(a.Out, "model.safetensors")), File.ReadAllBytes(Path.Combine(b.Out, "model.safetensors")));
    }

    /// <summary>Records the requests and answers each with an empty response.</summary>
    sealed class RecordingEngine : IRolloutService
    {
        public List<RolloutRequest> Requests { get; } = [];
        public ulong WeightsVersion => 0;
        public IReadOnlyDictionary<string, long[]> WeightLayout => new Dictionary<string, long[]>();
        public PolicyWeightFormat? WeightFormat => null;
        public Task<IReadOnlyList<RolloutResult>> GenerateAsync(IReadOnlyList<RolloutRequest> requests, RolloutCall? call = null, CancellationToken cancellationToken = default)
        {
            Requests.AddRange(requests);
            return Task.FromResult<IReadOnlyList<RolloutResult>>([.. requests.Select(r => new RolloutResult([.. r.PromptIds!], [2], null, [0f], RolloutFinishReason.Eos, new RolloutTimings(0, 0, 1, 1)))]);
        }
        public Task<TimeSpan> PushWeightsAsync(PolicyWeights weights, TimeSpan? timeout = null, CancellationToken cancellationToken = default) => Task.FromResult(TimeSpan.Zero);
        public void Dispose() { }
    }

    [Fact]
    public void EachIterationSamplesItsPromptsKTimesInConsecutiveRowsWithDistinctSeeds()
    {
        var tokenizer = TextTokenizer.Load(PpoTrainerTests.Models.Value.Sft);
        string[] prompts = [.. Enumerable.Range(0, 32).Select(i => $"prompt {i}")];
        var one = new RecordingEngine();
        var four = new RecordingEngine();
        var cfg = new PpoConfig { RolloutBatch = 16, Seed = 5 };
        new RolloutPhase(one, tokenizer, prompts, cfg).Generate(1);
        var batch = new RolloutPhase(four, tokenizer, prompts, cfg with { NSamplesPerPrompt = 4 }).Generate(1);
        Assert.Equal(16, four.Requests.Count);
        Assert.Equal(16, four.Requests.Select(r => r.Sampling!.Seed).Distinct().Count());
        for (int g = 0; g < 4; g++)
            Assert.Single(batch.Prompts.Skip(4 * g).Take(4).Distinct());
        // the four prompts are those that 16 prompts per iteration would take in iteration 1 under a batch of 4: the seeded order's slice
        Assert.Equal(RolloutPhase.BatchRows(32, 1, 4, 5).Select(i => prompts[i]), batch.Prompts.Where((_, i) => i % 4 == 0));
        Assert.Equal(16, one.Requests.Select(r => string.Join(",", r.PromptIds!)).Distinct().Count());
    }
}
