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
    public void ARowsTokensDependOnItsPromptAndSeedAlone()
    {
        var m = TinyModels.Randomized(TinyModels.Config(), 23);
        var o = new SamplingOptions { MaxNewTokens = 10, Temperature = 1f, TopK = 20, TopP = 0.9f, RepetitionPenalty = 1.3f };
        var together = Generation.Generate(m, Prompts, o, [], 0, seeds: [7, 8]);
        var alone = Generation.Generate(m, [Prompts[1]], o, [], 0, seeds: [8]);
        Assert.Equal(together[1].Tokens, alone[0].Tokens);
        var swapped = Generation.Generate(m, [Prompts[1], Prompts[0]], o, [], 0, seeds: [8, 7]);
        Assert.Equal(together[0].Tokens, swapped[1].Tokens);
        Assert.Throws<ArgumentException>(() => Generation.Generate(m, Prompts, o, [], 0, seeds: [1]));
    }

    [Fact]
    public void LogProbsAreTheTemperedLogSoftmaxOfAFullForward()
    {
        var m = TinyModels.Randomized(TinyModels.Config(), 24);
        const float T = 0.7f;
        var got = Generation.Generate(m, Prompts, new SamplingOptions { MaxNewTokens = 6, Temperature = T, TopK = 5, Seed = 3 }, [], 0);
        for (int r = 0; r < Prompts.Length; r++)
        {
            var seq = Prompts[r].ToList();
            for (int i = 0; i < got[r].Tokens.Length; i++)
            {
                // log softmax(logits / T) over the whole vocabulary, before top-k (the rollout engine's definition)
                float expected = (TinyModels.RowLogits(m, seq.ToArray())[-1] / T).log_softmax(-1)[got[r].Tokens[i]].item<float>();
                Assert.True(Math.Abs(expected - got[r].LogProbs[i]) < 1e-4f, $"row {r} token {i}: {got[r].LogProbs[i]} vs {expected}");
                seq.Add(got[r].Tokens[i]);
            }
        }
    }
}
