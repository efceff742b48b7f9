using Rlhf.Training.Common;
using Rlhf.Training.Model;
using Rlhf.Training.Pipeline;
using Rlhf.Training.Ppo;
using Rlhf.Training.RewardModel;
using Rlhf.Training.Sft;
using static Rlhf.Training.Tests.Ppo.PpoTestData;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Ppo;

/// <summary>PPO's options around the core math: accumulation groups, score shaping, temperature, optimizer and pipeline keys.</summary>
public sealed class PpoOptionsTests
{
    [Fact]
    public void AccumulationStepsEveryGMinibatchesWhenGDividesTheEpoch()
    {
        // n = 4 minibatches, g = 2: steps after 1 and 3, every group has 2
        Assert.Equal([false, true, false, true], Enumerable.Range(0, 4).Select(m => GradAccumulation.StepsAfter(m, 4, 2)));
        Assert.Equal([2, 2, 2, 2], Enumerable.Range(0, 4).Select(m => GradAccumulation.GroupSize(m, 4, 2)));
    }

    [Fact]
    public void AccumulationStepsAtTheEpochsEndWhenGDoesNotDivideIt()
    {
        // n = 5, g = 2: groups {0,1} {2,3} {4}; the last minibatch gets its own step with its loss divided by 1
        Assert.Equal([false, true, false, true, true], Enumerable.Range(0, 5).Select(m => GradAccumulation.StepsAfter(m, 5, 2)));
        Assert.Equal([2, 2, 2, 2, 1], Enumerable.Range(0, 5).Select(m => GradAccumulation.GroupSize(m, 5, 2)));
        // n = 2, g = 3: one short group, one step
        Assert.Equal([false, true], Enumerable.Range(0, 2).Select(m => GradAccumulation.StepsAfter(m, 2, 3)));
        Assert.Equal([2, 2], Enumerable.Range(0, 2).Select(m => GradAccumulation.GroupSize(m, 2, 3)));
        Assert.Throws<ArgumentOutOfRangeException>(() => GradAccumulation.StepsAfter(5, 5, 2));
    }

    static float[] Shaped(float[] rm, bool[] eos, double? penalty, EosPenaltyMode mode, ScoreNormalization n, double clip, RunningMoments? moments = null)
    {
        using var _ = NewDisposeScope();
        return Flat(RewardPipeline.Scores(tensor(rm), tensor(eos), penalty, mode, n, moments, clip));
    }

    [Fact]
    public void ScoresApplyPenaltyThenNormalisationThenClip()
    {
        float[] rm = [1f, 3f, -1f, 0.5f];
        bool[] eos = [true, false, true, false];
        // replace: the two truncated responses score −2; clip 1.5 → −1.5
        Close([1f, -1.5f, -1f, -1.5f], Shaped(rm, eos, -2, EosPenaltyMode.Replace, ScoreNormalization.None, 1.5), 1e-7);
        // subtract |p| = 2 (TRL): 3 − 2 = 1, 0.5 − 2 = −1.5; no clip
        Close([1f, 1f, -1f, -1.5f], Shaped(rm, eos, -2, EosPenaltyMode.Subtract, ScoreNormalization.None, 0), 1e-7);
        // no penalty, no clip: the RM's scores
        Close(rm, Shaped(rm, eos, null, EosPenaltyMode.Replace, ScoreNormalization.None, 0), 0);

        // batch whitening of (1, 1, −1, −1.5): mean −0.125, unbiased variance 5.1875 / 3
        double sd = Math.Sqrt(5.1875 / 3 + 1e-8);
        float[] white = [.. new[] { 1.125, 1.125, -0.875, -1.375 }.Select(d => (float)(d / sd))];
        Close(white, Shaped(rm, eos, -2, EosPenaltyMode.Subtract, ScoreNormalization.Batch, 0), 1e-6);
        Close([.. white.Select(w => Math.Clamp(w, -1f, 1f))], Shaped(rm, eos, -2, EosPenaltyMode.Subtract, ScoreNormalization.Batch, 1), 1e-6);
    }

    [Fact]
    public void RunningNormalisationUsesEveryScoreSoFar()
    {
        var moments = new RunningMoments();
        // batch 1 (1, 3): mean 2, variance 2 → (∓1)/√2
        Close([-(float)Math.Sqrt(0.5), (float)Math.Sqrt(0.5)],
            Shaped([1f, 3f], [true, true], null, EosPenaltyMode.Replace, ScoreNormalization.Running, 0, moments), 1e-6);
        // batch 2 (5): all seen (1, 3, 5): mean 3, variance 4 → (5 − 3)/2 = 1
        Close([1f], Shaped([5f], [true], null, EosPenaltyMode.Replace, ScoreNormalization.Running, 0, moments), 1e-6);
        Assert.Equal(3, moments.Count);
        Assert.Throws<ArgumentNullException>(() => Shaped([5f], [true], null, EosPenaltyMode.Replace, ScoreNormalization.Running, 0));
    }

    [Fact]
    public void TemperatureScalingIsZOverTInFloat32()
    {
        using var _ = NewDisposeScope();
        var z = tensor(new float[] { 1f, -2f, 0.5f }, [1, 1, 3]);
        Close([2f, -4f, 1f], Flat(Temperature.Scale(z, 0.5)), 1e-7);
        Close([1f, -2f, 0.5f], Flat(Temperature.Scale(z, 1.0)), 0);
        var half = Temperature.Scale(z.to_type(ScalarType.BFloat16), 2.0);
        Assert.Equal(ScalarType.Float32, half.dtype);
        Close([0.5f, -1f, 0.25f], Flat(half), 0);            // these values are exact in bf16
        Assert.Throws<ArgumentOutOfRangeException>(() => Temperature.Scale(z, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => Temperature.Scale(z, double.NaN));
        Close([1f, -2f, 0.5f], Flat(z), 0);                  // the input is left as it was
    }

    [Fact]
    public void EveryStageTakesTheSameOptimizerKeys()
    {
        string[] keys = ["weight_decay=0.01", "beta1=0.8", "beta2=0.99", "adam_eps=1e-6"];
        var sft = ConfigLoader.Load<SftConfig>(null, keys);
        var rm = ConfigLoader.Load<RmConfig>(null, keys);
        var ppo = ConfigLoader.Load<PpoConfig>(null, keys);
        Assert.Equal((0.01, 0.8, 0.99, 1e-6), (sft.WeightDecay, sft.Beta1, sft.Beta2, sft.AdamEps));
        Assert.Equal((0.01, 0.8, 0.99, 1e-6), (rm.WeightDecay, rm.Beta1, rm.Beta2, rm.AdamEps));
        Assert.Equal((0.01, 0.8, 0.99, 1e-6), (ppo.WeightDecay, ppo.Beta1, ppo.Beta2, ppo.AdamEps));
        // today's defaults: SFT 0.1 decay, RM and PPO none; β = (0.9, 0.95), ε = 1e-8 everywhere
        Assert.Equal((0.0, 0.9, 0.95, 1e-8), (new RmConfig().WeightDecay, new RmConfig().Beta1, new RmConfig().Beta2, new RmConfig().AdamEps));
        Assert.Equal((0.0, 0.9, 0.95, 1e-8), (new PpoConfig().WeightDecay, new PpoConfig().Beta1, new PpoConfig().Beta2, new PpoConfig().AdamEps));
        Assert.Contains("beta1 and beta2", Assert.Throws<InvalidDataException>(() => (sft with { Beta1 = 1 }).Validate()).Message);
        Assert.Contains("beta1 and beta2", Assert.Throws<InvalidDataException>(() => (rm with { Beta2 = -0.1 }).Validate()).Message);
        Assert.Contains("adam_eps", Assert.Throws<InvalidDataException>(() => (ppo with { AdamEps = 0 }).Validate()).Message);
    }

    [Fact]
    public void PipelineRefusesStageKeysItSetsItself()
    {
        new PipelineConfig().Validate();
        foreach (var (cfg, key) in new (PipelineConfig, string)[]
                 {
                     (new() { Ppo = new() { Seed = 7 } }, "ppo.seed"),
                     (new() { Rm = new() { Threads = 1 } }, "rm.threads"),
                     (new() { Sft = new() { Device = "cuda" } }, "sft.device"),
                     (new() { Sft = new() { Out = "x" } }, "sft.out"),
                     (new() { Rm = new() { SftModel = "x" } }, "rm.sft_model"),
                     (new() { Ppo = new() { RmModel = "x" } }, "ppo.rm_model"),
                 })
            Assert.Contains($"{key} is set by the pipeline", Assert.Throws<InvalidDataException>(cfg.Validate).Message);
    }

    [Fact]
    public void TrainerWhitensScoresAndStepsAShortAccumulationGroup()
    {
        // rollout 8 / minibatch 4 = 2 minibatches per epoch, accumulated 3 at a time: one (short) group, one step per epoch
        var cfg = PpoTrainerTests.Tiny() with { Iterations = 2, GradAccum = 3, RewardNormalization = ScoreNormalization.Batch, RewardClip = 0, BestOfN = [1] };
        PpoTrainer.Train(cfg, new RunControl { Progress = false });
        var m = MetricsTable.ReadCsv(Path.Combine(cfg.Out, "metrics.csv"));
        Assert.All(m.Rows, r => Assert.Equal(cfg.PpoEpochs, r["policy/updates"]));
        Assert.All(m.Rows, r => Assert.True(Math.Abs(r["objective/scores"]) < 1e-5, $"whitened scores have mean {r["objective/scores"]}"));
        Assert.All(m.Rows, r => Assert.True(Math.Abs(r["objective/rm_scores"]) > 1e-4, "the RM's own scores are not whitened"));
    }
}
