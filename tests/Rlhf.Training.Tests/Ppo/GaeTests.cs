using Rlhf.Training.Ppo;
using static Rlhf.Training.Tests.Ppo.PpoTestData;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Ppo;

public sealed class GaeTests
{
    /// <summary>Plain GAE per row over its own length: δ_t = r_t + γ V_{t+1} − V_t (V_len = 0), A_t = δ_t + γλ A_{t+1}.</summary>
    static (float[] Adv, float[] Ret) Reference(float[] r, float[] v, int[] len, int a, double gamma, double lambda)
    {
        var adv = new float[r.Length]; var ret = new float[r.Length];
        for (int i = 0; i < len.Length; i++)
        {
            double next = 0;
            for (int t = len[i] - 1; t >= 0; t--)
            {
                double nextV = t + 1 < len[i] ? v[i * a + t + 1] : 0;
                double delta = r[i * a + t] + gamma * nextV - v[i * a + t];
                next = delta + gamma * lambda * next;
                adv[i * a + t] = (float)next;
                ret[i * a + t] = (float)(next + v[i * a + t]);
            }
        }
        return (adv, ret);
    }

    [Fact]
    public void HandComputedWithRowsOfDifferentLengths()
    {
        using var _ = NewDisposeScope();
        var r = T([[0f, 0f, 1f], [1f, 2f, 9f]]);
        var v = T([[0.5f, 0.2f, 0.1f], [1f, 1f, 7f]]);
        var mask = T([[1f, 1f, 1f], [1f, 1f, 0f]]);
        var (adv, ret) = Gae.Compute(r, v, mask, gamma: 0.5, lambda: 0.5);   // γλ = 0.25
        // row 0: δ2 = 1 + 0 − 0.1 = 0.9; δ1 = 0 + 0.5·0.1 − 0.2 = −0.15; δ0 = 0 + 0.5·0.2 − 0.5 = −0.4
        //        A2 = 0.9; A1 = −0.15 + 0.25·0.9 = 0.075; A0 = −0.4 + 0.25·0.075 = −0.38125
        //        R = A + V = −0.38125 + 0.5 = 0.11875, 0.075 + 0.2 = 0.275, 0.9 + 0.1 = 1.0
        // row 1 (length 2; the padded 9 and 7 are ignored): δ1 = 2 + 0 − 1 = 1; δ0 = 1 + 0.5·1 − 1 = 0.5
        //        A1 = 1; A0 = 0.5 + 0.25·1 = 0.75; R = 1.75, 2
        Close([-0.38125f, 0.075f, 0.9f, 0.75f, 1f, 0f], Flat(adv), 1e-6);
        Close([0.11875f, 0.275f, 1f, 1.75f, 2f, 0f], Flat(ret), 1e-6);
    }

    [Theory]
    [InlineData(1.0, 0.95)]
    [InlineData(0.99, 0.9)]
    [InlineData(1.0, 1.0)]
    [InlineData(0.9, 0.0)]
    public void RandomUnevenBatchesMatchThePlainLoop(double gamma, double lambda)
    {
        using var _ = NewDisposeScope();
        var rng = new Random(7);
        const int b = 10, a = 13;
        var len = Lengths(rng, b, a);
        float[] r = Values(rng, len, a), v = Values(rng, len, a), mf = Mask(len, a);
        var (adv, ret) = Gae.Compute(T(r, b, a), T(v, b, a), T(mf, b, a), gamma, lambda);
        var (ea, er) = Reference(r, v, len, a, gamma, lambda);
        Close(ea, Flat(adv), 1e-5);
        Close(er, Flat(ret), 1e-5);
    }

    [Fact]
    public void GammaOneLambdaOneGivesMonteCarloReturns()
    {
        using var _ = NewDisposeScope();
        var rng = new Random(8);
        const int b = 6, a = 8;
        var len = Lengths(rng, b, a);
        float[] r = Values(rng, len, a), v = Values(rng, len, a), mf = Mask(len, a);
        var (adv, ret) = Gae.Compute(T(r, b, a), T(v, b, a), T(mf, b, a), 1, 1);
        var mc = new float[b * a];
        for (int i = 0; i < b; i++)
            for (int t = 0; t < len[i]; t++)
                for (int k = t; k < len[i]; k++) mc[i * a + t] += r[i * a + k];     // R_t = Σ_{k≥t} r_k
        Close(mc, Flat(ret), 1e-5);
        var expectedAdv = mc.Select((x, i) => mf[i] == 0 ? 0f : x - v[i]).ToArray();
        Close(expectedAdv, Flat(adv), 1e-5);
    }

    [Fact]
    public void LambdaZeroGivesOneStepTd()
    {
        using var _ = NewDisposeScope();
        var rng = new Random(9);
        const int b = 6, a = 8;
        const double gamma = 0.9;
        var len = Lengths(rng, b, a);
        float[] r = Values(rng, len, a), v = Values(rng, len, a), mf = Mask(len, a);
        var (adv, _) = Gae.Compute(T(r, b, a), T(v, b, a), T(mf, b, a), gamma, 0);
        var td = new float[b * a];
        for (int i = 0; i < b; i++)
            for (int t = 0; t < len[i]; t++)
                td[i * a + t] = (float)(r[i * a + t] + gamma * (t + 1 < len[i] ? v[i * a + t + 1] : 0) - v[i * a + t]);
        Close(td, Flat(adv), 1e-5);
    }

    [Fact]
    public void RejectsBadShapesAndCoefficients()
    {
        using var _ = NewDisposeScope();
        Assert.Throws<ArgumentException>(() => Gae.Compute(zeros(2, 3), zeros(2, 4), ones(2, 3), 1, 0.95));
        Assert.Throws<ArgumentException>(() => Gae.Compute(zeros(3), zeros(3), ones(3), 1, 0.95));
        Assert.Throws<ArgumentOutOfRangeException>(() => Gae.Compute(zeros(2, 3), zeros(2, 3), ones(2, 3), 1.5, 0.95));
    }
}
