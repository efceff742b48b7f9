using Rlhf.Training.Ppo;
using static Rlhf.Training.Tests.Ppo.PpoTestData;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Ppo;

public sealed class ExplainedVarianceTests
{
    [Fact]
    public void HandComputedValues()
    {
        using var _ = NewDisposeScope();
        var mask = T([[1f, 1f, 1f, 0f]]);
        var returns = T([[1f, 2f, 3f, 99f]]);       // Var(R) = 1 (unbiased)
        Assert.Equal(1.0, ExplainedVariance.Compute(returns, returns, mask), 6);
        // V = 1: R − V = (0, 1, 2), same variance as R → 0
        Assert.Equal(0.0, ExplainedVariance.Compute(T([[1f, 1f, 1f, -5f]]), returns, mask), 6);
        // V = (1, 2, 2): R − V = (0, 0, 1), Var = 1/3 → 1 − 1/3 = 2/3
        Assert.Equal(2.0 / 3, ExplainedVariance.Compute(T([[1f, 2f, 2f, 7f]]), returns, mask), 6);
        Assert.True(double.IsNaN(ExplainedVariance.Compute(returns, returns, T([[1f, 0f, 0f, 0f]]))));
        Assert.True(double.IsNaN(ExplainedVariance.Compute(returns, ones(1, 4), ones(1, 4))));     // Var(R) = 0
    }

    [Fact]
    public void MatchesAPlainLoop()
    {
        using var _ = NewDisposeScope();
        var rng = new Random(14);
        const int b = 6, a = 8;
        var len = Lengths(rng, b, a);
        float[] v = Values(rng, len, a), r = Values(rng, len, a, 2), mf = Mask(len, a);
        static double Var(IList<double> x) { double m = x.Average(); return x.Sum(y => (y - m) * (y - m)) / (x.Count - 1); }
        var rs = new List<double>(); var res = new List<double>();
        for (int i = 0; i < b; i++)
            for (int t = 0; t < len[i]; t++) { rs.Add(r[i * a + t]); res.Add(r[i * a + t] - v[i * a + t]); }
        Assert.Equal(1 - Var(res) / Var(rs), ExplainedVariance.Compute(T(v, b, a), T(r, b, a), T(mf, b, a)), 5);
    }
}
