using Rlhf.Training.Ppo;
using static Rlhf.Training.Tests.Ppo.PpoTestData;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Ppo;

public sealed class PpoLossesTests
{
    // ε = 0.2, logp_old = 0, so ratio = exp(logp):
    //   token  ratio  A    −A·r   −A·clip(r)  max (the loss)   branch
    //   t1     1.5    +1   −1.5   −1.2        −1.2             clipped  (A > 0, r > 1 + ε)
    //   t2     0.5    −1   +0.5   +0.8        +0.8             clipped  (A < 0, r < 1 − ε)
    //   t3     1.1    +2   −2.2   −2.2        −2.2             inside the clip range
    //   t4     0.5    +1   −0.5   −0.8        −0.5             unclipped (r < 1 − ε but A > 0)
    //   t5     1.5    −1   +1.5   +1.2        +1.5             unclipped (r > 1 + ε but A < 0)
    //   pad    3.0    +5   (ignored)
    // N = 5: loss = (−1.2 + 0.8 − 2.2 − 0.5 + 1.5)/5 = −1.6/5 = −0.32; clipfrac = 2/5
    // ∂loss/∂logp = −A·r/N where unclipped: t3 −2·1.1/5 = −0.44, t4 −0.5/5 = −0.1, t5 1.5/5 = 0.3; clipped and pad: 0
    static readonly float[][] Ratios = [[1.5f, 0.5f, 1.1f], [0.5f, 1.5f, 3f]];
    static readonly float[][] Adv = [[1f, -1f, 2f], [1f, -1f, 5f]];
    static readonly float[][] PolicyMask = [[1f, 1f, 1f], [1f, 1f, 0f]];

    [Fact]
    public void PolicyLossClipFracAndApproxKlMatchHandComputedValues()
    {
        using var _ = NewDisposeScope();
        var logp = T(Ratios.Select(r => r.Select(x => MathF.Log(x)).ToArray()).ToArray());
        var (loss, clipFrac, approxKl) = PpoLosses.Policy(logp, zeros(2, 3), T(Adv), T(PolicyMask), clipEps: 0.2);
        Assert.Equal(-0.32f, loss.item<float>(), 5);
        Assert.Equal(0.4f, clipFrac.item<float>(), 6);
        // ½·mean(log r)² = ½·(2 ln²1.5 + 2 ln²0.5 + ln²1.1)/5 ≈ 0.129879
        double l15 = Math.Log(1.5), l05 = Math.Log(0.5), l11 = Math.Log(1.1);
        Assert.Equal(0.5 * (2 * l15 * l15 + 2 * l05 * l05 + l11 * l11) / 5, approxKl.item<float>(), 5);
    }

    [Fact]
    public void ClippingZeroesTheGradientOfClippedTokens()
    {
        using var _ = NewDisposeScope();
        var logp = T(Ratios.Select(r => r.Select(x => MathF.Log(x)).ToArray()).ToArray()).requires_grad_(true);
        var (loss, _, _) = PpoLosses.Policy(logp, zeros(2, 3), T(Adv), T(PolicyMask), clipEps: 0.2);
        loss.backward();
        var g = Flat(logp.grad!);
        Assert.Equal(0f, g[0]);     // t1 clipped: exactly zero
        Assert.Equal(0f, g[1]);     // t2 clipped: exactly zero
        Assert.Equal(0f, g[5]);     // padding
        Assert.Equal(-2 * 1.1f / 5, g[2], 5);   // −A·ratio/N
        Assert.Equal(-1 * 0.5f / 5, g[3], 5);
        Assert.Equal(1 * 1.5f / 5, g[4], 5);
    }

    [Fact]
    public void NonFinitePaddingNeitherLeaksIntoLossNorGradient()
    {
        using var _ = NewDisposeScope();
        var logp = T([[-1f, 0f]]).requires_grad_(true);
        var logpOld = T([[-1f, float.NegativeInfinity]]);
        var adv = T([[2f, float.NaN]]);
        var mask = T([[1f, 0f]]);
        var (loss, _, approxKl) = PpoLosses.Policy(logp, logpOld, adv, mask, 0.2);
        loss.backward();
        Assert.Equal(-2f, loss.item<float>(), 6);      // ratio 1, −A = −2
        Assert.Equal(0f, approxKl.item<float>());
        Close([-2f, 0f], Flat(logp.grad!), 1e-6);

        var v = T([[1f, 0f]]).requires_grad_(true);
        var (vLoss, _) = PpoLosses.Value(v, T([[1f, float.NaN]]), T([[0f, float.PositiveInfinity]]), mask, 0.2);
        vLoss.backward();
        Assert.Equal(0.5f, vLoss.item<float>(), 6);    // ½·(1 − 0)²
        Close([1f, 0f], Flat(v.grad!), 1e-6);
    }

    [Fact]
    public void PolicyLossMatchesAPlainLoopOnRandomInputs()
    {
        using var _ = NewDisposeScope();
        var rng = new Random(10);
        const int b = 8, a = 10;
        const double eps = 0.2;
        var len = Lengths(rng, b, a);
        float[] lp = Values(rng, len, a, 0.3, -1), adv = Values(rng, len, a), mf = Mask(len, a);
        var lpo = lp.Select((x, i) => mf[i] == 0 ? 0f : x + (float)(0.3 * Normal(rng))).ToArray();
        var logp = T(lp, b, a).requires_grad_(true);
        var (loss, clipFrac, approxKl) = PpoLosses.Policy(logp, T(lpo, b, a), T(adv, b, a), T(mf, b, a), eps);
        loss.backward();

        double n = 0, sum = 0, clipped = 0, kl = 0;
        var grad = new float[b * a];
        for (int i = 0; i < b; i++)
            for (int t = 0; t < len[i]; t++) n++;
        for (int i = 0; i < b; i++)
            for (int t = 0; t < len[i]; t++)
            {
                int j = i * a + t;
                double ratio = Math.Exp((double)lp[j] - lpo[j]);
                double l1 = -adv[j] * ratio, l2 = -adv[j] * Math.Clamp(ratio, 1 - eps, 1 + eps);
                sum += Math.Max(l1, l2);
                if (l2 > l1) clipped++;
                else grad[j] = (float)(-adv[j] * ratio / n);
                kl += 0.5 * Math.Pow(lp[j] - lpo[j], 2);
            }
        Assert.True(clipped > 0 && clipped < n);
        Assert.Equal(sum / n, loss.item<float>(), 5);
        Assert.Equal(clipped / n, clipFrac.item<float>(), 5);
        Assert.Equal(kl / n, approxKl.item<float>(), 5);
        Close(grad, Flat(logp.grad!), 1e-4);
    }

    // ε_v = 0.2; V_clip = V_old + clip(V − V_old, ±0.2):
    //   V     V_old  R     V_clip  (V−R)²  (V_clip−R)²  max    branch      ∂/∂V = (V − R)/N if unclipped
    //   1.0   0.5    0.0   0.7     1.00    0.49         1.00   unclipped   0.2
    //   1.0   0.5    2.0   0.7     1.00    1.69         1.69   clipped     0
    //   0.1   0.0    1.0   0.1     0.81    0.81         0.81   inside      −0.18
    //   −1    0.0    0.5   −0.2    2.25    0.49         2.25   unclipped   −0.3
    //   −1    0.0    −3    −0.2    4.00    7.84         7.84   clipped     0
    //   5     0      −10   (pad)
    // loss = ½·(1 + 1.69 + 0.81 + 2.25 + 7.84)/5 = ½·13.59/5 = 1.359; clipfrac = 2/5
    [Fact]
    public void ValueLossClipsAndZeroesTheGradientOfClippedTokens()
    {
        using var _ = NewDisposeScope();
        var values = T([[1f, 1f, 0.1f], [-1f, -1f, 5f]]).requires_grad_(true);
        var valuesOld = T([[0.5f, 0.5f, 0f], [0f, 0f, 0f]]);
        var returns = T([[0f, 2f, 1f], [0.5f, -3f, -10f]]);
        var mask = T([[1f, 1f, 1f], [1f, 1f, 0f]]);
        var (loss, clipFrac) = PpoLosses.Value(values, valuesOld, returns, mask, clipEpsV: 0.2);
        Assert.Equal(1.359f, loss.item<float>(), 5);
        Assert.Equal(0.4f, clipFrac.item<float>(), 6);
        loss.backward();
        var g = Flat(values.grad!);
        Assert.Equal(0f, g[1]);
        Assert.Equal(0f, g[4]);
        Assert.Equal(0f, g[5]);
        Close([0.2f, 0f, -0.18f, -0.3f, 0f, 0f], g, 1e-5);
    }

    [Fact]
    public void ValueLossMatchesAPlainLoopOnRandomInputs()
    {
        using var _ = NewDisposeScope();
        var rng = new Random(11);
        const int b = 7, a = 9;
        const double eps = 0.2;
        var len = Lengths(rng, b, a);
        float[] v = Values(rng, len, a), vo = Values(rng, len, a, 0.2), ret = Values(rng, len, a), mf = Mask(len, a);
        var (loss, clipFrac) = PpoLosses.Value(T(v, b, a), T(vo, b, a), T(ret, b, a), T(mf, b, a), eps);
        double n = 0, sum = 0, clipped = 0;
        for (int i = 0; i < b; i++)
            for (int t = 0; t < len[i]; t++)
            {
                int j = i * a + t;
                double vc = vo[j] + Math.Clamp((double)v[j] - vo[j], -eps, eps);
                double l1 = Math.Pow((double)v[j] - ret[j], 2), l2 = Math.Pow(vc - ret[j], 2);
                n++; sum += Math.Max(l1, l2);
                if (l2 > l1) clipped++;
            }
        Assert.Equal(0.5 * sum / n, loss.item<float>(), 4);
        Assert.Equal(clipped / n, clipFrac.item<float>(), 5);
    }

    [Fact]
    public void EntropyMatchesHandValuesAndAPlainLoop()
    {
        using var _ = NewDisposeScope();
        // token 0: logits (0, 0) → H = ln 2 = 0.693147; token 1: (ln 3, 0) → p = (0.75, 0.25),
        // H = −0.75 ln 0.75 − 0.25 ln 0.25 = 0.215762 + 0.346574 = 0.562335; padded token ignored; mean 0.627741
        var logits = tensor(new float[] { 0f, 0f, MathF.Log(3), 0f, 100f, -100f }, [1, 3, 2]);
        Assert.Equal(0.627741f, PpoLosses.Entropy(logits, T([[1f, 1f, 0f]])).item<float>(), 5);

        var rng = new Random(12);
        const int b = 5, a = 6, vocab = 7;
        var len = Lengths(rng, b, a);
        var z = Enumerable.Range(0, b * a * vocab).Select(_ => (float)(2 * Normal(rng))).ToArray();
        double total = 0, n = 0;
        for (int i = 0; i < b; i++)
            for (int t = 0; t < len[i]; t++)
            {
                int o = (i * a + t) * vocab;
                double mx = z.Skip(o).Take(vocab).Max(), s = 0;
                for (int k = 0; k < vocab; k++) s += Math.Exp(z[o + k] - mx);
                double lse = mx + Math.Log(s), h = 0;
                for (int k = 0; k < vocab; k++) { double lp = z[o + k] - lse; h -= Math.Exp(lp) * lp; }
                total += h; n++;
            }
        var got = PpoLosses.Entropy(tensor(z, [b, a, vocab]), T(Mask(len, a), b, a)).item<float>();
        Assert.Equal(total / n, got, 5);
    }

    [Fact]
    public void PtxIsMinusGammaTimesMeanLogProb()
    {
        using var _ = NewDisposeScope();
        // mean over valid (−1, −2, −3) = −2; −0.5·(−2) = 1
        var loss = PpoLosses.Ptx(T([[-1f, -2f], [-3f, -50f]]), T([[1f, 1f], [1f, 0f]]), gammaPtx: 0.5);
        Assert.Equal(1f, loss.item<float>(), 6);
    }

    [Fact]
    public void ShapesAreChecked()
    {
        using var _ = NewDisposeScope();
        Assert.Throws<ArgumentException>(() => PpoLosses.Policy(zeros(2, 3), zeros(2, 3), zeros(2, 4), ones(2, 3), 0.2));
        Assert.Throws<ArgumentException>(() => PpoLosses.Value(zeros(2, 3), zeros(3, 2), zeros(2, 3), ones(2, 3), 0.2));
        Assert.Throws<ArgumentException>(() => PpoLosses.Entropy(zeros(2, 3), ones(2, 3)));
        Assert.Throws<ArgumentException>(() => PpoLosses.Entropy(zeros(2, 4, 5), ones(2, 3)));
    }
}
