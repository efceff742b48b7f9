using Rlhf.Training.Model;
using Rlhf.Training.Ppo;
using Rlhf.Training.Tests.Model;
using static Rlhf.Training.Tests.Ppo.PpoTestData;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Ppo;

/// <summary>Checks against numbers computed another way: best-of-N, bf16 log-probs, and where values and logits of a response sit.</summary>
public sealed class IndependentChecksTests
{
    /// <summary>KL(p_N ‖ p) summed exactly for p uniform over M outcomes with distinct rewards: p_N(j) = (j/M)^N − ((j−1)/M)^N.</summary>
    static double ExactBestOfNKl(int n, int m)
    {
        double kl = 0;
        for (int j = 1; j <= m; j++)
        {
            double pn = Math.Pow((double)j / m, n) - Math.Pow((j - 1.0) / m, n);
            if (pn > 0) kl += pn * Math.Log(pn * m);
        }
        return kl;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    [InlineData(16)]
    [InlineData(64)]
    public void BestOfNKlMatchesTheExactSumOverManyOutcomes(int n)
    {
        double exact = ExactBestOfNKl(n, 200_000);
        Assert.True(Math.Abs(exact - BestOfN.Kl(n)) < 1e-3, $"N={n}: exact {exact:F6}, formula {BestOfN.Kl(n):F6}");
        Assert.True(exact <= BestOfN.Kl(n) + 1e-9);
    }

    [Fact]
    public void BestOfNKlIsAnUpperBoundWithFewOutcomes()
    {
        // two equally likely outcomes, N = 2: the better one is drawn with probability 3/4
        double exact = 0.75 * Math.Log(1.5) + 0.25 * Math.Log(0.5);     // 0.130812
        Assert.Equal(exact, ExactBestOfNKl(2, 2), 12);
        Assert.Equal(0.130812, exact, 6);
        Assert.True(exact < BestOfN.Kl(2));                              // log 2 − 1/2 = 0.193147
    }

    [Fact]
    public void BestOfNPicksTheHighestOfEachPromptsFirstNSamples()
    {
        // 3 prompts, samples laid out sample-major: k = 0 → indices 0..2, k = 1 → 3..5, k = 2 → 6..8
        float[] scores = [0.1f, 0.9f, -1f, /* k=1 */ 0.5f, 0.2f, -2f, /* k=2 */ 0.3f, 0.95f, -0.5f];
        Assert.Equal([0, 1, 2], BestOfN.Pick(scores, 3, 1));
        Assert.Equal([3, 1, 2], BestOfN.Pick(scores, 3, 2));
        Assert.Equal([3, 7, 8], BestOfN.Pick(scores, 3, 3));
        Assert.Equal([0], BestOfN.Pick([1f, 1f], 1, 2));                  // a tie keeps the first sample
        Assert.Throws<ArgumentException>(() => BestOfN.Pick(scores, 3, 4));
    }

    /// <summary>
    /// bf16 keeps 8 significant bits, so each logit is off by at most u·|z| with u = 2⁻⁸; log π(a) = z_a − logsumexp(z)
    /// moves by Δz_a − Σ p_k Δz_k, at most 2·u·max|z| (divided by T, which is applied in float32 after the upcast).
    /// </summary>
    [Theory]
    [InlineData(1.0)]
    [InlineData(0.7)]
    public void Bf16LogProbsStayWithinTheRoundingBound(double temperature)
    {
        using var _ = NewDisposeScope();
        var rng = new Random(29);
        const int b = 4, s = 6, vocab = 50;
        float[] z = [.. Enumerable.Range(0, b * s * vocab).Select(_ => (float)(3 * Normal(rng)))];
        long[] tok = [.. Enumerable.Range(0, b * s).Select(_ => (long)rng.Next(vocab))];
        float[] exact = Flat(LogProbs.OfTokens(Temperature.Scale(tensor(z, [b, s, vocab]).to_type(ScalarType.Float64), temperature), tensor(tok, [b, s])));
        float[] half = Flat(LogProbs.OfTokens(Temperature.Scale(tensor(z, [b, s, vocab]).to_type(ScalarType.BFloat16), temperature), tensor(tok, [b, s])));
        const double u = 1.0 / 256;
        double worst = 0;
        for (int i = 0; i < b * s; i++)
        {
            double maxAbs = Enumerable.Range(0, vocab).Max(k => Math.Abs(z[i * vocab + k]));
            double bound = 2 * u * maxAbs / temperature + 1e-5;
            double err = Math.Abs(exact[i] - half[i]);
            Assert.True(err <= bound, $"position {i}: |Δ log π| = {err:E3} > bound {bound:E3}");
            worst = Math.Max(worst, err);
        }
        Assert.True(worst > 1e-4, "bf16 rounding should show");       // the inputs were really rounded
    }

    /// <summary>
    /// A padded layout, the reference for what PPO reads from packed rows: prompts left-padded to P, responses
    /// right-padded to A (ids [B, P + A], mask [B, P + A]), and of [B, S, ·] per-position outputs those that
    /// predict/evaluate the response, positions P − 1 … P + A − 2 → [B, A, ·].
    /// </summary>
    static (Tensor Ids, Tensor Mask, Func<Tensor, Tensor> ResponseSlice) Padded(int[][] prompts, int[][] responses)
    {
        int p = prompts.Max(x => x.Length), a = responses.Max(x => x.Length);
        var ids = new long[prompts.Length * (p + a)];
        var mask = new long[ids.Length];
        for (int i = 0; i < prompts.Length; i++)
        {
            long[] row = [.. Enumerable.Repeat(-1L, p - prompts[i].Length), .. prompts[i].Select(x => (long)x), .. responses[i].Select(x => (long)x), .. Enumerable.Repeat(-1L, a - responses[i].Length)];
            for (int t = 0; t < p + a; t++) { ids[i * (p + a) + t] = Math.Max(0, row[t]); mask[i * (p + a) + t] = row[t] < 0 ? 0 : 1; }
        }
        return (tensor(ids, [prompts.Length, p + a]), tensor(mask, [prompts.Length, p + a]), x => x.narrow(1, p - 1, a));
    }

    [Fact]
    public void PackPutsEachRowEndToEndAndIndexesThePositionBeforeEachResponseToken()
    {
        using var _ = NewDisposeScope();
        // prompts of 3 and 1 tokens, responses of 2 and 3 tokens (A = 3): sequences of 5 and 4 tokens, one row each (width 5)
        using var exp = Experience.Build([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], padId: 0, CPU);
        var (packed, index) = exp.Pack();
        using var _p = packed;
        Assert.Equal(new long[] { 5, 6, 7, 9, 10, 8, 11, 12, 13, 0 }, packed.InputIds.data<long>().ToArray());
        Assert.Equal(new long[] { 0, 1, 2, 3, 4, 0, 1, 2, 3, 0 }, packed.PositionIds.data<long>().ToArray());
        // response token t of row i is predicted at flat position start_i + |prompt_i| − 1 + t; padding reads position 0
        Assert.Equal(new long[] { 2, 3, 0, 5, 6, 7 }, index.data<long>().ToArray());
        // a per-position tensor holding each position's flat index, with and without a trailing feature axis
        var perPosition = arange(10).view(2, 5).to_type(ScalarType.Float32);
        Assert.Equal([2f, 3f, 0f, 5f, 6f, 7f], Flat(exp.PackedResponses(perPosition, index)));
        Assert.Equal([2f, 2f, 3f, 3f, 0f, 0f, 5f, 5f, 6f, 6f, 7f, 7f], Flat(exp.PackedResponses(perPosition.unsqueeze(-1).expand(2, 5, 2), index)));
        Assert.Equal([1f, 1f, 0f, 1f, 1f, 1f], Flat(exp.ResponseMask));
        Assert.Equal(new long[] { 9, 10, 0, 11, 12, 13 }, exp.Responses.data<long>().ToArray());
    }

    [Fact]
    public void SlicedValuesAndLogProbsEqualThoseOfEachRowAlone()
    {
        using var _ = NewDisposeScope();
        var cfg = TinyModels.Config();
        using var critic = LlamaForSequenceClassification.Create(cfg, CPU, ScalarType.Float32, 5);
        using var actor = TinyModels.Randomized(cfg, 6);
        critic.eval();
        int[][] prompts = [[3, 4, 5, 6], [7, 8]];
        int[][] responses = [[9, 10], [11, 12, 13, 14]];
        using var exp = Experience.Build(prompts, responses, padId: 0, CPU);
        float[] values, logp;
        using (no_grad())
        {
            var (packed, index) = exp.Pack();   // what PPO runs: rows packed without padding, the LM head on response positions only
            using var _p = packed;
            values = Flat(ExperienceMaker.ResponseValues(critic, exp, packed, index));
            logp = Flat(LogProbs.OfTokens(ExperienceMaker.ResponseLogits(actor, exp, packed, index), exp.Responses));
            // the padded layout gives the same numbers at every response token
            float[] real = Flat(exp.ResponseMask);
            var (ids, mask, slice) = Padded(prompts, responses);
            float[] paddedValues = Flat(slice(critic.Values(ids, mask, PositionIds.FromAttentionMask(mask))));
            float[] paddedLogp = Flat(LogProbs.OfTokens(slice(actor.Forward(ids, mask, PositionIds.FromAttentionMask(mask))), exp.Responses));
            for (int k = 0; k < real.Length; k++)
                if (real[k] != 0)
                {
                    Assert.True(Math.Abs(paddedValues[k] - values[k]) < 1e-5, $"value {k}: padded {paddedValues[k]}, packed {values[k]}");
                    Assert.True(Math.Abs(paddedLogp[k] - logp[k]) < 1e-5, $"log-prob {k}: padded {paddedLogp[k]}, packed {logp[k]}");
                }
        }
        int a = (int)exp.Responses.shape[1];
        for (int i = 0; i < prompts.Length; i++)
        {
            long[] row = [.. prompts[i].Concat(responses[i]).Select(x => (long)x)];
            using var ids = tensor(row, [1, row.Length]);
            using var mask = ones_like(ids);
            using var pos = arange(row.Length, dtype: ScalarType.Int64).unsqueeze(0);
            float[] v, lp;
            using (no_grad())
            {
                v = Flat(critic.Values(ids, mask, pos));                                   // [S_i]: V after each token
                var logits = actor.Forward(ids, mask, pos);
                lp = Flat(nn.functional.log_softmax(logits, -1));                     // [S_i · V]
            }
            for (int t = 0; t < responses[i].Length; t++)
            {
                int state = prompts[i].Length - 1 + t;                                // the token before response token t
                Assert.True(Math.Abs(v[state] - values[i * a + t]) < 1e-4, $"row {i} token {t}: value alone {v[state]}, sliced {values[i * a + t]}");
                Assert.True(Math.Abs(lp[state * cfg.VocabSize + responses[i][t]] - logp[i * a + t]) < 1e-4, $"row {i} token {t}: log-prob alone vs sliced");
            }
        }
    }
}
