using Rlhf.Training.Model;
using Rlhf.Training.Ppo;
using static Rlhf.Training.Tests.Ppo.PpoTestData;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Ppo;

public sealed class LogProbsTests
{
    [Fact]
    public void GathersLogSoftmaxOfTemperatureScaledLogits()
    {
        using var _ = NewDisposeScope();
        var logits = tensor(new float[] { 0f, MathF.Log(3) }, [1, 1, 2]);
        // T = 1: p = (0.25, 0.75), token 1 → ln 0.75
        Assert.Equal(Math.Log(0.75), LogProbs.OfTokens(logits, tensor(new long[] { 1 }, [1, 1])).item<float>(), 6);
        // T = 2: z/2 = (0, ln √3), p_0 = 1/(1 + √3) → −ln(1 + √3) = −1.005053
        Assert.Equal(-Math.Log(1 + Math.Sqrt(3)), LogProbs.OfTokens(Temperature.Scale(logits, 2), tensor(new long[] { 0 }, [1, 1])).item<float>(), 6);
    }

    [Theory]
    [InlineData(1.0)]
    [InlineData(0.7)]
    public void MatchesAPlainLoop(double temperature)
    {
        using var _ = NewDisposeScope();
        var rng = new Random(13);
        const int b = 3, s = 5, vocab = 11;
        var z = Enumerable.Range(0, b * s * vocab).Select(_ => (float)(3 * Normal(rng))).ToArray();
        var tok = Enumerable.Range(0, b * s).Select(_ => (long)rng.Next(vocab)).ToArray();
        var expected = new float[b * s];
        for (int i = 0; i < b * s; i++)
        {
            double mx = double.MinValue, sum = 0;
            for (int k = 0; k < vocab; k++) mx = Math.Max(mx, z[i * vocab + k] / temperature);
            for (int k = 0; k < vocab; k++) sum += Math.Exp(z[i * vocab + k] / temperature - mx);
            expected[i] = (float)(z[i * vocab + tok[i]] / temperature - mx - Math.Log(sum));
        }
        var got = LogProbs.OfTokens(Temperature.Scale(tensor(z, [b, s, vocab]), temperature), tensor(tok, [b, s]));
        Assert.Equal([b, s], got.shape);
        Close(expected, Flat(got), 1e-5);
        Assert.Throws<ArgumentException>(() => LogProbs.OfTokens(tensor(z, [b, s, vocab]), tensor(tok, [s, b])));
        var half = LogProbs.OfTokens(Temperature.Scale(tensor(z, [b, s, vocab]).to_type(ScalarType.BFloat16), temperature), tensor(tok, [b, s]));
        Assert.Equal(ScalarType.Float32, half.dtype);
        // bf16 rounds each logit by at most 2⁻⁸·|z|, so log π moves by at most 2·2⁻⁸·max|z|/T (see IndependentChecksTests)
        float[] h = Flat(half);
        for (int i = 0; i < b * s; i++)
        {
            double bound = 2.0 / 256 * Enumerable.Range(0, vocab).Max(k => Math.Abs(z[i * vocab + k])) / temperature + 1e-5;
            Assert.True(Math.Abs(expected[i] - h[i]) <= bound, $"index {i}: {h[i]} vs {expected[i]} (bound {bound:E2})");
        }
    }
}
