using Rlhf.Training.Ppo;
using TorchSharp;
using static Rlhf.Training.Tests.Ppo.PpoTestData;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Ppo;

public sealed class MaskedTests
{
    // x = [[1, 2, NaN], [4, Inf, 6]], mask = [[1, 1, 0], [1, 0, 0]]: valid values {1, 2, 4}
    static Tensor X => T([[1f, 2f, float.NaN], [4f, float.PositiveInfinity, 6f]]);
    static Tensor M => T([[1f, 1f, 0f], [1f, 0f, 0f]]);

    [Fact]
    public void SumMeanVarMatchHandComputedValuesAndIgnorePaddingEvenNaN()
    {
        using var _ = NewDisposeScope();
        Assert.Equal(7f, Masked.Sum(X, M).item<float>(), 6);                 // 1 + 2 + 4
        Assert.Equal(7f / 3, Masked.Mean(X, M).item<float>(), 6);            // 7 / 3
        // deviations −4/3, −1/3, 5/3; squares 16/9 + 1/9 + 25/9 = 42/9
        Assert.Equal(42f / 9 / 3, Masked.Var(X, M, unbiased: false).item<float>(), 5);   // 14/9
        Assert.Equal(42f / 9 / 2, Masked.Var(X, M, unbiased: true).item<float>(), 5);    // 7/3
        Close([3f, 4f], Flat(Masked.Sum(X, M, dim: 1)), 1e-6);               // per row 1+2, 4
        Close([1.5f, 4f], Flat(Masked.Mean(X, M, dim: 1)), 1e-6);
    }

    [Fact]
    public void WhitenGivesMaskedMeanZeroAndStdOneWithPaddingZero()
    {
        using var _ = NewDisposeScope();
        var rng = new Random(1);
        const int b = 7, a = 9;
        var len = Lengths(rng, b, a);
        var x = T(Values(rng, len, a, sigma: 3, shift: 5), b, a);
        var mask = T(Mask(len, a), b, a);

        var w = Masked.Whiten(x, mask);
        Assert.Equal(0f, Masked.Mean(w, mask).item<float>(), 5);
        Assert.Equal(1f, Masked.Var(w, mask).item<float>(), 5);
        var wf = Flat(w); var mf = Flat(mask);
        for (int i = 0; i < wf.Length; i++) if (mf[i] == 0) Assert.Equal(0f, wf[i]);

        // shiftMean = false keeps the mean and only rescales
        var ws = Masked.Whiten(x, mask, shiftMean: false);
        Assert.Equal(Masked.Mean(x, mask).item<float>(), Masked.Mean(ws, mask).item<float>(), 4);
        Assert.Equal(1f, Masked.Var(ws, mask).item<float>(), 5);

        // plain loop
        double n = 0, s = 0, ss = 0;
        var xf = Flat(x);
        for (int i = 0; i < xf.Length; i++) if (mf[i] != 0) { n++; s += xf[i]; }
        double mu = s / n;
        for (int i = 0; i < xf.Length; i++) if (mf[i] != 0) ss += (xf[i] - mu) * (xf[i] - mu);
        double sd = Math.Sqrt(ss / (n - 1));
        var expected = new float[xf.Length];
        for (int i = 0; i < xf.Length; i++) expected[i] = mf[i] != 0 ? (float)((xf[i] - mu) / sd) : 0f;
        Close(expected, wf, 1e-5);
    }

    [Fact]
    public void RandomInputsMatchPlainLoops()
    {
        using var _ = NewDisposeScope();
        var rng = new Random(2);
        const int b = 6, a = 11;
        var len = Lengths(rng, b, a);
        float[] xf = Values(rng, len, a), mf = Mask(len, a);
        var x = T(xf, b, a); var mask = T(mf, b, a);

        double n = 0, s = 0;
        for (int i = 0; i < b; i++) for (int t = 0; t < a; t++) if (mf[i * a + t] == 1) { n++; s += xf[i * a + t]; }
        double ss = 0;
        for (int i = 0; i < b; i++) for (int t = 0; t < a; t++) if (mf[i * a + t] == 1) ss += Math.Pow(xf[i * a + t] - s / n, 2);
        Assert.Equal(s, Masked.Sum(x, mask).item<float>(), 4);
        Assert.Equal(s / n, Masked.Mean(x, mask).item<float>(), 5);
        Assert.Equal(ss / n, Masked.Var(x, mask, false).item<float>(), 5);
        Assert.Equal(ss / (n - 1), Masked.Var(x, mask, true).item<float>(), 5);
    }

    [Fact]
    public void ShapeMismatchAndEmptyMaskAreRejected()
    {
        using var _ = NewDisposeScope();
        Assert.Throws<ArgumentException>(() => Masked.Mean(zeros(2, 3), ones(2, 4)));
        Assert.Throws<ArgumentException>(() => Masked.Var(zeros(2, 3), zeros(2, 3)));
        Assert.Throws<ArgumentException>(() => Masked.Var(zeros(2, 3), T([[1f, 0f, 0f], [0f, 0f, 0f]]), unbiased: true));
    }

    [Fact]
    public void PaddingGetsNoGradient()
    {
        using var _ = NewDisposeScope();
        var x = T([[1f, 2f, 3f]]).requires_grad_(true);
        Masked.Mean(x, T([[1f, 1f, 0f]])).backward();
        Close([0.5f, 0.5f, 0f], Flat(x.grad!), 0);
        Assert.Equal(ScalarType.Float32, x.grad!.dtype);
    }
}
