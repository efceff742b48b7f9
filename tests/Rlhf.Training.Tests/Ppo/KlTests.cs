using Rlhf.Training.Ppo;
using static Rlhf.Training.Tests.Ppo.PpoTestData;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Ppo;

public sealed class KlTests
{
    [Fact]
    public void K1AndK3MatchHandComputedValues()
    {
        using var _ = NewDisposeScope();
        var logp = T([[MathF.Log(0.5f), MathF.Log(0.2f)]]);
        var logpRef = T([[MathF.Log(0.25f), MathF.Log(0.4f)]]);
        // k1 = log(0.5/0.25) = ln 2, log(0.2/0.4) = −ln 2
        Close([0.693147f, -0.693147f], Flat(Kl.Estimate(logp, logpRef, KlEstimator.K1)), 1e-5);
        // r = 0.25/0.5 = 0.5: (0.5 − 1) − ln 0.5 = 0.193147;  r = 0.4/0.2 = 2: (2 − 1) − ln 2 = 0.306853
        Close([0.193147f, 0.306853f], Flat(Kl.Estimate(logp, logpRef, KlEstimator.K3)), 1e-5);
    }

    [Fact]
    public void K3IsNonNegativeAndBothAreUnbiasedOnSampledTokens()
    {
        using var _ = NewDisposeScope();
        double[] p = [0.4, 0.3, 0.15, 0.1, 0.05], q = [0.2, 0.2, 0.2, 0.2, 0.2];
        double trueKl = 0;
        for (int v = 0; v < p.Length; v++) trueKl += p[v] * Math.Log(p[v] / q[v]);   // ≈ 0.2305

        var rng = new Random(3);
        const int n = 200_000;
        var lp = new float[n]; var lq = new float[n];
        for (int i = 0; i < n; i++)
        {
            double u = rng.NextDouble(), c = 0; int v = 0;
            for (; v < p.Length - 1; v++) { c += p[v]; if (u < c) break; }
            lp[i] = (float)Math.Log(p[v]); lq[i] = (float)Math.Log(q[v]);
        }
        var logp = T(lp, 1, n); var logq = T(lq, 1, n);
        var k1 = Kl.Estimate(logp, logq, KlEstimator.K1);
        var k3 = Kl.Estimate(logp, logq, KlEstimator.K3);
        Assert.True(k3.min().item<float>() >= 0);
        Assert.True(k1.min().item<float>() < 0);    // k1 is negative on some tokens
        // unbiased: each sample mean within 4 standard errors of the exact KL (the seed is fixed, so this is deterministic) …
        Assert.True(WithinFourStandardErrors(trueKl, k1), "k1 is biased");
        Assert.True(WithinFourStandardErrors(trueKl, k3), "k3 is biased");
        // … a bound tight enough to tell a biased estimator apart: k2 = ½(log p/q)² has E_p = ½Σ p·log²(p/q) ≈ 0.144 ≠ 0.2305
        var k2 = 0.5 * (logp - logq).square();
        Assert.False(WithinFourStandardErrors(trueKl, k2), "the bound cannot tell k2 (biased) apart");
    }

    /// <summary>|mean(k) − expected| &lt; 4·σ(k)/√n: the sample mean is consistent with <paramref name="expected"/> as its expectation.</summary>
    static bool WithinFourStandardErrors(double expected, Tensor k)
    {
        using var d = k.to_type(ScalarType.Float64);
        double mean = d.mean().item<double>(), se = d.std().item<double>() / Math.Sqrt(d.numel());
        return Math.Abs(mean - expected) < 4 * se;
    }

    [Fact]
    public void K3IsNonNegativeOnArbitraryLogProbs()
    {
        using var _ = NewDisposeScope();
        manual_seed(4);
        var k3 = Kl.Estimate(randn(8, 16) * 3, randn(8, 16) * 3, KlEstimator.K3);
        Assert.True(k3.min().item<float>() >= 0);
        Assert.Throws<ArgumentException>(() => Kl.Estimate(zeros(2, 3), zeros(3, 2), KlEstimator.K1));
    }
}
