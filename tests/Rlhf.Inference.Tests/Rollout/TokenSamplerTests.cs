using Rlhf.Inference.Rollout;

namespace Rlhf.Inference.Tests.Rollout;

public sealed class TokenSamplerTests
{
    // V = 5. Sorted: id 1 (3.0), 3 (2.0), 0 (1.0), 2 (0.5), 4 (-1.0).
    // softmax at T=1: [0.084394, 0.623591, 0.051187, 0.229406, 0.011421]; best-first cumulative 0.6236, 0.8530, 0.9374, ...
    static readonly float[] L = [1.0f, 3.0f, 0.5f, 2.0f, -1.0f];
    const double Tol = 1e-5;

    static SamplingOptions Opt(float t = 1f, int k = 0, float p = 1f, float rep = 1f) =>
        new SamplingOptions { Temperature = t, TopK = k, TopP = p, RepetitionPenalty = rep }.Validate();

    [Fact]
    public void TopLogProbs_are_the_k_largest_of_the_penalised_tempered_log_softmax()
    {
        var s = new TokenSampler(6);
        float[] logits = [1.0f, 3.0f, -0.5f, 2.5f, 3.0f, 0.2f];
        var o = new SamplingOptions { Temperature = 0.7f, RepetitionPenalty = 1.3f };
        int[] previous = [4];   // token 4's positive logit is divided by the penalty
        // by hand, in double: z = penalise(logits) / T, log softmax, the 3 largest (ties: lower id first)
        double[] z = [.. logits.Select((x, i) => (i == 4 ? x / 1.3 : x) / 0.7)];
        double m = z.Max(), logS = Math.Log(z.Sum(x => Math.Exp(x - m)));
        var expected = z.Select((x, i) => (Id: i, Lp: x - m - logS)).OrderByDescending(x => x.Lp).ThenBy(x => x.Id).Take(3).ToArray();
        var top = s.TopLogProbs(logits, previous, o, 3);
        Assert.Equal(expected.Select(e => e.Id), top.Select(t => t.Token));
        for (int i = 0; i < 3; i++) Assert.Equal(expected[i].Lp, top[i].LogProb, 5);
        // the chosen token's logprob is the same number the sampler reports for it
        Assert.Equal(s.LogProb(logits, previous, o, top[0].Token), top[0].LogProb, 6);
        Assert.Equal(6, s.TopLogProbs(logits, previous, o, 10).Length);
    }

    [Fact]
    public void Greedy_picks_argmax_with_log_softmax_at_T1()
    {
        var s = new TokenSampler(5);
        int t = s.Sample(L, [], Opt(t: 0f), new Rng(1), out float lp, out float tlp);
        Assert.Equal(1, t);
        Assert.Equal(-0.47226068138655636, lp, Tol);
        Assert.Equal(0f, tlp);
    }

    [Fact]
    public void Greedy_ties_go_to_the_lower_id()
    {
        var s = new TokenSampler(4);
        Assert.Equal(1, s.Sample([0f, 2f, 1f, 2f], [], Opt(t: 0f), new Rng(1), out _));
    }

    [Theory]
    [InlineData(1f, new[] { -2.4722606813865564, -0.47226068138655636, -2.9722606813865564, -1.4722606813865564, -4.472260681386556 })]
    [InlineData(0.5f, new[] { -4.149044234171198, -0.14904423417119833, -5.149044234171198, -2.1490442341711984, -8.149044234171198 })]
    [InlineData(2f, new[] { -1.8739050909044244, -0.8739050909044244, -2.123905090904424, -1.3739050909044244, -2.873905090904424 })]
    public void LogProb_is_log_softmax_of_logits_over_T(float temperature, double[] expected)
    {
        var s = new TokenSampler(5);
        var seen = new bool[5];
        var rng = new Rng(7);
        for (int i = 0; i < 2000; i++)
        {
            int t = s.Sample(L, [], Opt(t: temperature), rng, out float lp);
            Assert.Equal(expected[t], lp, Tol);
            seen[t] = true;
        }
        Assert.True(seen.Count(b => b) >= 3);   // id 4 has p = 3e-4 at T = 0.5
    }

    [Fact]
    public void LogProb_is_before_truncation_and_truncated_logprob_is_renormalised()
    {
        var s = new TokenSampler(5);
        var rng = new Rng(3);
        for (int i = 0; i < 200; i++)
        {
            int t = s.Sample(L, [], Opt(k: 2), rng, out float lp, out float tlp);
            double[] full = [-2.4722606813865564, -0.47226068138655636, -2.9722606813865564, -1.4722606813865564, -4.472260681386556];
            Assert.Equal(full[t], lp, Tol);
            // top-2 {1, 3}: q = e^3 / (e^3 + e^2) = 0.731059, e^2 / (e^3 + e^2) = 0.268941
            Assert.Equal(t == 1 ? Math.Log(0.7310585786300049) : Math.Log(0.2689414213699951), tlp, Tol);
        }
    }

    [Fact]
    public void TopK2_draws_only_the_top_two_with_renormalised_frequencies()
    {
        var s = new TokenSampler(5);
        var rng = new Rng(2024);
        var counts = new int[5];
        const int N = 20_000;
        for (int i = 0; i < N; i++) counts[s.Sample(L, [], Opt(k: 2), rng, out _)]++;
        Assert.Equal(0, counts[0] + counts[2] + counts[4]);
        Assert.Equal(0.7310585786300049, counts[1] / (double)N, 0.015);
        Assert.Equal(0.2689414213699951, counts[3] / (double)N, 0.015);
        Assert.Equal([1, 3], s.LastKept.ToArray());
    }

    [Theory]
    [InlineData(0.8f, new[] { 1, 3 })]        // 0.6236 < 0.8 <= 0.8530
    [InlineData(0.9f, new[] { 0, 1, 3 })]     // 0.8530 < 0.9 <= 0.9374
    [InlineData(0.6f, new[] { 1 })]           // 0.6 <= 0.6236
    [InlineData(0.99f, new[] { 0, 1, 2, 3, 4 })]
    public void TopP_keeps_exactly_the_nucleus(float topP, int[] nucleus)
    {
        var s = new TokenSampler(5);
        var rng = new Rng(5);
        var seen = new HashSet<int>();
        for (int i = 0; i < 5000; i++)
        {
            seen.Add(s.Sample(L, [], Opt(p: topP), rng, out _));
            Assert.Equal(nucleus, s.LastKept.ToArray());
        }
        Assert.Equal(nucleus, seen.Order().ToArray());
    }

    [Fact]
    public void TopP_after_TopK_uses_the_top_k_renormalised_mass()
    {
        // top-3 {1, 3, 0}: renormalised 0.6653, 0.2447, 0.0900 -> cumulative 0.6653, 0.9100: top-p 0.9 keeps {1, 3}.
        var s = new TokenSampler(5);
        s.Sample(L, [], Opt(k: 3, p: 0.9f), new Rng(1), out _);
        Assert.Equal([1, 3], s.LastKept.ToArray());
    }

    [Fact]
    public void Repetition_penalty_follows_the_CTRL_formula_once_per_distinct_id()
    {
        var s = new TokenSampler(5);
        float[] logits = [1.0f, 3.0f, 0.5f, 2.0f, -1.0f];
        s.Sample(logits, [0, 4, 4, 2, 0], Opt(t: 0f, rep: 1.5f), new Rng(1), out float lp);
        Assert.Equal([1.0f / 1.5f, 3.0f, 0.5f / 1.5f, 2.0f, -1.0f * 1.5f], s.ProcessedLogits.ToArray());
        double[] z = [1.0 / 1.5, 3.0, 0.5 / 1.5, 2.0, -1.5];
        double lse = Math.Log(z.Sum(Math.Exp));
        Assert.Equal(3.0 - lse, lp, Tol);

        // Penalty < 1 boosts; temperature applies after the penalty.
        s.Sample(logits, [3, 4], Opt(t: 2f, rep: 0.5f), new Rng(1), out _);
        Assert.Equal([0.5f, 1.5f, 0.25f, 2.0f, -0.25f], s.ProcessedLogits.ToArray());
        Assert.Equal([1.0f, 3.0f, 0.5f, 2.0f, -1.0f], logits);
    }

    [Fact]
    public void Same_seed_gives_the_same_tokens_whatever_else_shares_the_sampler()
    {
        const int V = 300;
        var gen = new Rng(99);
        var rows = Enumerable.Range(0, 40).Select(_ => Enumerable.Range(0, V).Select(_ => 2f * SamplerBench.Gaussian(gen)).ToArray()).ToArray();
        var o = Opt(t: 0.9f, k: 40, p: 0.95f, rep: 1.1f);

        int[] Run(bool interleave)
        {
            var s = new TokenSampler(V);
            var mine = new Rng(1234);
            var other = new Rng(555);
            var history = new List<int>();
            for (int i = 0; i < rows.Length; i++)
            {
                if (interleave) s.Sample(rows[(i + 7) % rows.Length], [1, 2, 3], o, other, out _);
                history.Add(s.Sample(rows[i], history.ToArray(), o, mine, out _));
            }
            return history.ToArray();
        }

        int[] alone = Run(false);
        Assert.Equal(alone, Run(true));
        Assert.Equal(alone, Run(false));
    }

    [Fact]
    public void Rng_stream_is_pinned()
    {
        // xoshiro256** seeded by SplitMix64(42), computed independently.
        var r = new Rng(42);
        Assert.Equal(0x15780b2e0c2ec716UL, r.NextUInt64());
        Assert.Equal(0x6104d9866d113a7eUL, r.NextUInt64());
        Assert.Equal(0xae17533239e499a1UL, r.NextUInt64());
        Assert.NotEqual(new Rng(42, 1).NextUInt64(), new Rng(42, 2).NextUInt64());
        Assert.NotEqual(new Rng(42, 0).NextUInt64(), new Rng(42, 1).NextUInt64());
    }

    [Fact]
    public void Matches_the_plain_loop_reference_on_random_inputs()
    {
        const int V = 2048;
        var gen = new Rng(2718);
        var s = new TokenSampler(V);
        float[] temps = [0f, 0.7f, 1f, 1.3f];
        int[] ks = [0, 1, 5, 50, 700, V];
        float[] ps = [1f, 0.5f, 0.9f, 0.99f];
        float[] stds = [0.3f, 1f, 4f];
        int nontrivial = 0;
        for (int trial = 0; trial < 600; trial++)
        {
            float std = stds[trial % stds.Length];
            var logits = new float[V];
            for (int i = 0; i < V; i++) logits[i] = std * SamplerBench.Gaussian(gen);
            if (trial % 10 == 0) logits[17] = logits[1000] = logits.Max();   // a tie at the top
            var prev = Enumerable.Range(0, (int)(gen.NextUInt64() % 40)).Select(_ => (int)(gen.NextUInt64() % V)).ToArray();
            var o = Opt(t: temps[trial % temps.Length], k: ks[(trial / 4) % ks.Length], p: ps[(trial / 24) % ps.Length],
                rep: trial % 3 == 0 ? 1f : 1.3f);
            double u = gen.NextDouble();

            int expected = ReferenceSampler.Sample(logits, prev, o, u, out double lp, out double tlp, out int[] kept);
            int got = s.SampleWithUniform(logits, prev, o, u, out float lp2, out float tlp2);
            Assert.True(expected == got, $"trial {trial}: {o} u={u}: reference {expected}, sampler {got}");
            Assert.Equal(lp, lp2, 1e-4);
            Assert.Equal(tlp, tlp2, 1e-4);
            if (s.LastKept.Length > 0) Assert.Equal(kept, s.LastKept.ToArray());
            else Assert.Equal(V, kept.Length);
            if (kept.Length > 1 && kept.Length < V) nontrivial++;
        }
        Assert.True(nontrivial > 200, $"only {nontrivial} trials truncated to a non-trivial set");
    }

    [Fact]
    public void Sampling_allocates_nothing()
    {
        const int V = 4096;
        var gen = new Rng(8);
        var logits = new float[8][];
        for (int r = 0; r < logits.Length; r++)
        {
            logits[r] = new float[V];
            for (int i = 0; i < V; i++) logits[r][i] = (r % 2 == 0 ? 4f : 0.3f) * SamplerBench.Gaussian(gen);
        }
        int[] prev = [5, 6, 7, 5, 100, 4000];
        SamplingOptions[] opts =
        [
            Opt(t: 0f), Opt(), Opt(t: 0.7f, k: 50), Opt(p: 0.9f), Opt(k: 50, p: 0.9f, rep: 1.2f), Opt(k: 2000), Opt(p: 0.999f, rep: 0.8f),
        ];
        var s = new TokenSampler(V);
        var rng = new Rng(1);
        for (int i = 0; i < 200; i++) s.Sample(logits[i % logits.Length], prev, opts[i % opts.Length], rng, out _);

        long before = GC.GetAllocatedBytesForCurrentThread();
        int sum = 0;
        for (int i = 0; i < 1000; i++) sum += s.Sample(logits[i % logits.Length], prev, opts[i % opts.Length], rng, out _, out _);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(0, allocated);
        Assert.True(sum > 0);
    }

    [Fact]
    public void Bad_inputs_are_rejected_with_a_reason()
    {
        var s = new TokenSampler(5);
        Assert.Throws<ArgumentException>(() => s.Sample(new float[4], [], Opt(), new Rng(1), out _));
        Assert.Throws<ArgumentOutOfRangeException>(() => s.Sample(L, [5], Opt(rep: 1.2f), new Rng(1), out _));
        Assert.Throws<ArgumentException>(() => s.Sample([1f, float.NaN, 0f, 0f, 0f], [], Opt(), new Rng(1), out _));
        Assert.Contains("TopP", Assert.Throws<ArgumentException>(() => Opt(p: 0f)).Message);
        Assert.Contains("Temperature", Assert.Throws<ArgumentException>(() => Opt(t: -1f)).Message);
        Assert.Contains("TopK", Assert.Throws<ArgumentException>(() => Opt(k: -1)).Message);
        Assert.Contains("RepetitionPenalty", Assert.Throws<ArgumentException>(() => Opt(rep: 0f)).Message);
        Assert.Contains("MaxNewTokens", Assert.Throws<ArgumentException>(() => new SamplingOptions { MaxNewTokens = 0 }.Validate()).Message);
        Assert.Contains("StopStrings[1]", Assert.Throws<ArgumentException>(() => new SamplingOptions { StopStrings = ["a", ""] }.Validate()).Message);
    }
}
