using Rlhf.Training.Ppo;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Ppo;

/// <summary>Truncated importance sampling weights and the weighted policy loss against plain loops.</summary>
public sealed class TisTests
{
    [Fact]
    public void WeightsAreTheTruncatedRatioOfTrainerToRolloutProbabilities()
    {
        float[] old = [-1.0f, -2.0f, -0.5f, -3.0f, -1.2f, -0.7f];
        float[] rollout = [-1.1f, -1.0f, -0.5f, -4.5f, -1.2f, 9f];   // last: padding, any value
        float[] mask = [1, 1, 1, 1, 1, 0];
        const double cap = 2.0;
        var (w, mean, clip) = Tis.Weights(tensor(old, [2, 3]), tensor(rollout, [2, 3]), tensor(mask, [2, 3]), cap);
        float[] got = w.data<float>().ToArray();
        double sum = 0; int n = 0, truncated = 0;
        for (int i = 0; i < 6; i++)
        {
            if (mask[i] == 0) { Assert.Equal(1f, got[i]); continue; }
            double ratio = Math.Exp(old[i] - rollout[i]);            // e^0.1, e^-1, 1, e^1.5 (> 2), 1
            double expected = Math.Min(ratio, cap);
            Assert.Equal(expected, got[i], 5);
            sum += expected; n++;
            if (ratio > cap) truncated++;
        }
        Assert.Equal(sum / n, mean, 5);
        Assert.Equal(truncated / (double)n, clip, 6);
        Assert.Equal(0.2, clip, 6);
    }

    [Fact]
    public void RowsWithoutEngineLogProbsGetWeightOne()
    {
        using var old = tensor(new float[] { -1f, -2f, -3f, -0.5f, -0.25f, -4f }, [2, 3]);
        var (r, allRecorded) = Tis.RolloutLogProbs([[float.NaN, float.NaN], [-0.4f, -0.3f, -4f]], old);
        using (r) Assert.Equal(new[] { -1f, -2f, -3f, -0.4f, -0.3f, -4f }, r.data<float>().ToArray());
        Assert.False(allRecorded);
        var (r2, allRecorded2) = Tis.RolloutLogProbs([[-1f], [-0.4f, -0.3f]], old);
        using (r2) Assert.Equal(new[] { -1f, 0f, 0f, -0.4f, -0.3f, 0f }, r2.data<float>().ToArray());   // right padding with 0
        Assert.True(allRecorded2);
    }

    [Fact]
    public void WeightedPolicyLossEqualsAPlainPerTokenLoop()
    {
        float[] logp = [-1.0f, -0.2f, -2.0f, -0.9f, -1.5f, -0.4f];
        float[] logpOld = [-1.3f, -0.2f, -1.0f, -1.0f, -1.0f, -0.1f];
        float[] adv = [1.0f, -0.5f, 2.0f, -1.5f, 0.3f, 0.7f];
        float[] w = [0.5f, 1.0f, 2.0f, 1.7f, 0.9f, 1.0f];
        float[] mask = [1, 1, 1, 1, 1, 0];
        const double eps = 0.2;
        var lp = tensor(logp, [2, 3]).requires_grad_();
        var (loss, _, _) = PpoLosses.Policy(lp, tensor(logpOld, [2, 3]), tensor(adv, [2, 3]), tensor(mask, [2, 3]), eps, tensor(w, [2, 3]));
        loss.backward();
        double expected = 0; int n = 0;
        var grad = new double[6];
        for (int i = 0; i < 6; i++)
        {
            if (mask[i] == 0) continue;
            n++;
            double ratio = Math.Exp(logp[i] - logpOld[i]);
            double unclipped = -adv[i] * ratio, clipped = -adv[i] * Math.Clamp(ratio, 1 - eps, 1 + eps);
            expected += w[i] * Math.Max(unclipped, clipped);
            grad[i] = unclipped >= clipped ? w[i] * -adv[i] * ratio : 0;   // d/dlogp of the unclipped branch
        }
        Assert.Equal(expected / n, loss.item<float>(), 5);
        float[] g = lp.grad!.data<float>().ToArray();
        for (int i = 0; i < 6; i++) Assert.Equal(grad[i] / n, g[i], 5);
    }
}
