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
        var opts = new GenerationOptions { MaxNewTokens = 8, Temperature = 0, EosTokenIds = [] };
        var got = Generation.Generate(m, Prompts, opts);
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
            Assert.Equal(FinishReason.Length, got[r].FinishReason);
        }
    }

    [Fact]
    public void StopsAtEosPerRow()
    {
        var m = TinyModels.Randomized(TinyModels.Config(), 21);
        var greedy = Generation.Generate(m, Prompts, new GenerationOptions { MaxNewTokens = 6, Temperature = 0 });
        long eos = greedy[0].Tokens[2];                        // make row 0's third token the EOS
        var got = Generation.Generate(m, Prompts, new GenerationOptions { MaxNewTokens = 6, Temperature = 0, EosTokenIds = [(int)eos] });
        Assert.Equal(greedy[0].Tokens[..3], got[0].Tokens);
        Assert.Equal(FinishReason.Stop, got[0].FinishReason);
        int cut = Array.IndexOf(greedy[1].Tokens, eos);
        Assert.Equal(cut < 0 ? greedy[1].Tokens : greedy[1].Tokens[..(cut + 1)], got[1].Tokens);
    }

    [Fact]
    public void SameSeedSameSamples()
    {
        var m = TinyModels.Randomized(TinyModels.Config(), 22);
        var o = new GenerationOptions { MaxNewTokens = 10, Temperature = 1.0, TopK = 20, TopP = 0.9, Seed = 42 };
        m.train();
        var a = Generation.Generate(m, Prompts, o);
        Assert.True(m.training);                                   // training flag restored
        var b = Generation.Generate(m, Prompts, o);
        var c = Generation.Generate(m, Prompts, o with { Seed = 43 });
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
}
