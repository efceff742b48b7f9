using Rlhf.Training.Ppo;
using static Rlhf.Training.Tests.Ppo.PpoTestData;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Ppo;

public sealed class RewardShapingTests
{
    [Fact]
    public void KlPenaltyOnEveryTokenAndScoreOnTheLastValidOne()
    {
        using var _ = NewDisposeScope();
        var scores = tensor(new float[] { 2f, -1f, 5f });
        var logpOld = T([[-1f, -2f, -3f], [-0.5f, -1f, 0f], [-1f, -1f, -1f]]);
        var logpRef = T([[-1.5f, -2f, -2f], [-1f, -9f, -9f], [-3f, -3f, -3f]]);
        var mask = T([[1f, 1f, 1f], [1f, 0f, 0f], [0f, 0f, 0f]]);
        var (rewards, kl) = RewardShaping.PerToken(scores, logpOld, logpRef, mask, beta: 0.1, KlEstimator.K1);
        // k1 = logp_old − logp_ref: row 0: 0.5, 0, −1; row 1: 0.5 (padding 0); row 2 empty
        Close([0.5f, 0f, -1f, 0.5f, 0f, 0f, 0f, 0f, 0f], Flat(kl), 1e-6);
        // r = −0.1·kl, last valid token + score: row 0: −0.05, 0, 0.1 + 2 = 2.1; row 1: −0.05 − 1 = −1.05; row 2: no token, no score
        Close([-0.05f, 0f, 2.1f, -1.05f, 0f, 0f, 0f, 0f, 0f], Flat(rewards), 1e-6);
    }

    [Theory]
    [InlineData(KlEstimator.K1)]
    [InlineData(KlEstimator.K3)]
    public void RandomBatchesMatchAPlainLoop(KlEstimator k)
    {
        using var _ = NewDisposeScope();
        var rng = new Random(5);
        const int b = 9, a = 7;
        const double beta = 0.05;
        var len = Lengths(rng, b, a);
        float[] lo = Values(rng, len, a, 1, -2), lr = Values(rng, len, a, 1, -2), mf = Mask(len, a);
        var sc = new float[b];
        for (int i = 0; i < b; i++) sc[i] = (float)Normal(rng);
        var (rewards, kl) = RewardShaping.PerToken(tensor(sc), T(lo, b, a), T(lr, b, a), T(mf, b, a), beta, k);

        var er = new float[b * a]; var ek = new float[b * a];
        for (int i = 0; i < b; i++)
            for (int t = 0; t < len[i]; t++)
            {
                double d = lo[i * a + t] - lr[i * a + t];
                double klt = k == KlEstimator.K1 ? d : Math.Exp(-d) - 1 + d;
                ek[i * a + t] = (float)klt;
                er[i * a + t] = (float)(-beta * klt + (t == len[i] - 1 ? sc[i] : 0));
            }
        Close(ek, Flat(kl), 1e-5);
        Close(er, Flat(rewards), 1e-5);
    }

    [Fact]
    public void EosPenaltyReplacesOrSubtracts()
    {
        using var _ = NewDisposeScope();
        var scores = tensor(new float[] { 1f, 2f, 3f });
        var ended = tensor(new[] { true, false, true });
        Close([1f, -1f, 3f], Flat(RewardPipeline.ApplyEosPenalty(scores, ended, -1)), 0);
        Close([1f, 3f, 3f], Flat(RewardPipeline.ApplyEosPenalty(scores, ended, -1, subtract: true)), 0);  // 2 − (−1)
    }

    [Fact]
    public void ClipAndNormaliseWithRunningMoments()
    {
        using var _ = NewDisposeScope();
        Close([-2f, 0.5f, 2f], Flat(RewardPipeline.Clip(tensor(new float[] { -7f, 0.5f, 3f }), 2)), 0);
        Close([-7f, 3f], Flat(RewardPipeline.Clip(tensor(new float[] { -7f, 3f }), 0)), 0);

        var moments = new RunningMoments();
        // batch {1, 3}: mean 2, unbiased var 2 → (x − 2)/√2
        Close([-0.707107f, 0.707107f], Flat(RewardPipeline.Normalise(tensor(new float[] { 1f, 3f }), moments)), 1e-5);
        // after {5}: values {1, 3, 5}: mean 3, var 4 → 5/2 without shift
        Close([2.5f], Flat(RewardPipeline.Normalise(tensor(new float[] { 5f }), moments, shiftMean: false)), 1e-6);
    }

    [Fact]
    public void RunningMomentsMatchTwoPassStatisticsAndRestoreFromState()
    {
        var rng = new Random(6);
        var all = new List<double>();
        var m = new RunningMoments();
        for (int batch = 0; batch < 5; batch++)
        {
            var xs = Enumerable.Range(0, rng.Next(1, 9)).Select(_ => 10 + 3 * Normal(rng)).ToArray();
            all.AddRange(xs);
            m.Update(xs);
        }
        double mean = all.Average(), var = all.Sum(x => (x - mean) * (x - mean)) / (all.Count - 1);
        Assert.Equal(all.Count, m.Count);
        Assert.Equal(mean, m.Mean, 10);
        Assert.Equal(var, m.Var, 10);

        var restored = new RunningMoments(m.State with { });
        Assert.Equal(m.State, restored.State);
        m.Update([1.0, 2.0]); restored.Update([1.0, 2.0]);
        Assert.Equal(m.State, restored.State);
        var json = System.Text.Json.JsonSerializer.Serialize(m.State);
        Assert.Equal(m.State, System.Text.Json.JsonSerializer.Deserialize<RunningMomentsState>(json));
    }
}
