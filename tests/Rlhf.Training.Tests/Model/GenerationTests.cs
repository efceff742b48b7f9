using Rlhf.Inference.Rollout;
using Rlhf.Training.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Model;

public sealed class GenerationTests
{
    static readonly long[][] Prompts = [[5, 6, 7, 8, 9], [12, 13]];

    [Fact]
    public void GreedyEqualsArgmaxOfRepeatedFullForwards()
    {
        var m = TinyModels.Randomized(TinyModels.Config("qwen2"), 21);
        var opts = new SamplingOptions { MaxNewTokens = 8, Temperature = 0 };
        var got = Generation.Generate(m, Prompts, opts, [], 0);
        for (int r = 0; r < Prompts.Length; r++)
        {
            var seq = Prompts[r].ToList();
            var expected = new List<long>();
            for (int i = 0; i < 8; i++)
            {
                long next = TinyModels.RowLogits(m, seq.ToArray())[-1].argmax().item<long>();
                expected.Add(next);
                seq.Add(next);
            }
            Assert.Equal(expected, got[r].Tokens);
            Assert.Equal(RolloutFinishReason.Length, got[r].FinishReason);
        }
    }

    [Fact]
    public void StopsAtEosPerRow()
    {
        var m = TinyModels.Randomized(TinyModels.Config(), 21);
        var greedy = Generation.Generate(m, Prompts, new SamplingOptions { MaxNewTokens = 6, Temperature = 0 }, [], 0);
        long eos = greedy[0].Tokens[2];                        // make row 0's third token the EOS
        var got = Generation.Generate(m, Prompts, new SamplingOptions { MaxNewTokens = 6, Temperature = 0 }, [(int)eos], 0);
        Assert.Equal(greedy[0].Tokens[..3], got[0].Tokens);
        Assert.Equal(RolloutFinishReason.Eos, got[0].FinishReason);
        int cut = Array.IndexOf(greedy[1].Tokens, eos);
        Assert.Equal(cut < 0 ? greedy[1].Tokens : greedy[1].Tokens[..(cut + 1)], got[1].Tokens);
    }

    [Fact]
    public void SameSeedSameSamples()
    {
        var m = TinyModels.Randomized(TinyModels.Config(), 22);
        var o = new SamplingOptions { MaxNewTokens = 10, Temperature = 1f, TopK = 20, TopP = 0.9f, Seed = 42 };
        m.train();
        var a = Generation.Generate(m, Prompts, o, [], 0);
        Assert.True(m.training);                                   // training flag restored
        var b = Generation.Generate(m, Prompts, o, [], 0);
        var c = Generation.Generate(m, Prompts, o with { Seed = 43 }, [], 0);
        for (int r = 0; r < 2; r++) Assert.Equal(a[r].Tokens, b[r].Tokens);
        Assert.False(a[0].Tokens.SequenceEqual(c[0].Tokens) && a[1].Tokens.SequenceEqual(c[1].Tokens));
    }

    [Fact]
    public void TopKKeepsTheKLargest()
    {
        var l = torch.tensor(new float[] { 1f, 5f, 3f, 4f, 2f }).unsqueeze(0);
        var f = Sampling.TopK(l, 2).data<float>().ToArray();
        Assert.Equal(new[] { float.NegativeInfinity, 5f, float.NegativeInfinity, 4f, float.NegativeInfinity }, f);
        Assert.Equal(l.data<float>().ToArray(), Sampling.TopK(l, 0).data<float>().ToArray());
    }

    [Fact]
    public void TopPKeepsSmallestSetReachingP()
    {
        // probabilities 0.5, 0.3, 0.15, 0.05 (in vocab order 2, 0, 3, 1)
        var p = new[] { 0.3, 0.05, 0.5, 0.15 };
        var l = torch.tensor(p.Select(x => (float)Math.Log(x)).ToArray()).unsqueeze(0);
        static bool[] Kept(Tensor t) => t.data<float>().ToArray().Select(float.IsFinite).ToArray();
        Assert.Equal(new[] { true, false, true, false }, Kept(Sampling.TopP(l, 0.8)));    // 0.5 + 0.3 = 0.8 reaches 0.8
        Assert.Equal(new[] { true, false, true, true }, Kept(Sampling.TopP(l, 0.81)));
        Assert.Equal(new[] { false, false, true, false }, Kept(Sampling.TopP(l, 0.1)));   // top token always kept
        Assert.Equal(new[] { true, true, true, true }, Kept(Sampling.TopP(l, 1.0)));
    }

    [Fact]
    public void FilteredSamplingNeverPicksDroppedTokens()
    {
        var l = torch.tensor(new float[] { 0f, 3f, 2.9f, -1f, 1f, 2.95f }).unsqueeze(0).expand(64, -1).contiguous();
        using var gen = new torch.Generator(7, torch.CPU);
        var picks = Sampling.Next(l, 1.0, 3, 1.0, gen).data<long>().ToArray();
        Assert.All(picks, x => Assert.Contains(x, new long[] { 1, 2, 5 }));
        Assert.Equal(Enumerable.Repeat(1L, 64), Sampling.Next(l, 0, 0, 1.0, null).data<long>().ToArray());
    }

    /// <summary>Draws <paramref name="n"/> tokens from one row of logits and returns the frequency of each id.</summary>
    static double[] Frequencies(float[] logits, int n, double temperature, int topK, double topP, ulong seed)
    {
        using var gen = new torch.Generator(seed, torch.CPU);
        var l = torch.tensor(logits).unsqueeze(0).expand(n, -1).contiguous();
        var counts = new double[logits.Length];
        foreach (long t in Sampling.Next(l, temperature, topK, topP, gen).data<long>().ToArray()) counts[t]++;
        return [.. counts.Select(c => c / n)];
    }

    [Fact]
    public void SampledFrequenciesMatchTheRenormalisedDistribution()
    {
        const int N = 40_000;   // binomial sd ≤ 0.0025: tolerance 0.01 is 4 sd
        // T = 0.5, top-3 of [0, 1, 2, 3, 1.5]: logits/T = [0, 2, 4, 6, 3]; kept ids 3, 2, 4 with e^6, e^4, e^3 renormalised
        double z = Math.Exp(6) + Math.Exp(4) + Math.Exp(3);
        double[] expected = [0, 0, Math.Exp(4) / z, Math.Exp(6) / z, Math.Exp(3) / z];   // 0, 0, 0.1142, 0.8438, 0.0420
        var f = Frequencies([0f, 1f, 2f, 3f, 1.5f], N, 0.5, 3, 1.0, 11);
        for (int i = 0; i < 5; i++) Assert.True(Math.Abs(expected[i] - f[i]) < 0.01, $"top-k: id {i} drawn {f[i]:F4}, expected {expected[i]:F4}");

        // T = 1, top-p 0.81 over probabilities [0.3, 0.05, 0.5, 0.15]: nucleus {2, 0, 3} (0.5 + 0.3 < 0.81), mass 0.95
        double[] p = [0.3, 0.05, 0.5, 0.15];
        expected = [0.3 / 0.95, 0, 0.5 / 0.95, 0.15 / 0.95];
        f = Frequencies([.. p.Select(x => (float)Math.Log(x))], N, 1.0, 0, 0.81, 12);
        for (int i = 0; i < 4; i++) Assert.True(Math.Abs(expected[i] - f[i]) < 0.01, $"top-p: id {i} drawn {f[i]:F4}, expected {expected[i]:F4}");
    }
}
