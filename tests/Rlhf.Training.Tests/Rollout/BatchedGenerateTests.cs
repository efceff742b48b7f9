using Rlhf.Export.Hf;
using Rlhf.Export.Onnx;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Data.Tokenizer;
using Rlhf.Training.Model;
using Rlhf.Training.Tests.Model;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Rollout;

/// <summary>
/// Repetition penalty and stop strings inside one batched <see cref="RolloutEngine.Generate(IReadOnlyList{RolloutRequest})"/>:
/// every row uses its own history and its own options, checked against TorchSharp logits with the CTRL penalty applied in
/// a plain loop, and against the same request run alone.
/// </summary>
public sealed class BatchedGenerateTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), $"rlhf-batchgen-{Guid.NewGuid():N}");
    static readonly string[] Corpus = [.. Enumerable.Range(0, 60).Select(i => $"the product {i % 7} was great and the service was slow, review number {i}.")];

    public void Dispose()
    {
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }

    static ModelConfig Config(int vocab) =>
        TinyModels.Config() with { VocabSize = vocab, HiddenSize = 64, NumAttentionHeads = 4, NumKeyValueHeads = 2, IntermediateSize = 96 };   // head_dim 16 (GQA)

    string Export(LlamaForCausalLM m, string graph)
    {
        string dir = Path.Combine(_dir, graph);
        if (graph == "gqa") LlamaContribGraph.Export(m.Config, m.state_dict(), dir);
        else LlamaGraph.Export(m.Config, m.state_dict(), dir);
        return dir;
    }

    /// <summary>Greedy decoding with the CTRL repetition penalty (Keskar et al. 2019) over the row's prompt + generated ids, in plain loops on TorchSharp logits.</summary>
    static int[] ReferenceGreedy(LlamaForCausalLM m, int[] prompt, float penalty, int maxNew)
    {
        var history = prompt.Select(x => (long)x).ToList();
        var response = new List<int>();
        for (int t = 0; t < maxNew; t++)
        {
            using var logits = TinyModels.RowLogits(m, [.. history]);
            float[] z = logits[^1].data<float>().ToArray();
            foreach (long id in history.Distinct()) z[id] = z[id] > 0 ? z[id] / penalty : z[id] * penalty;
            int best = 0;
            for (int v = 1; v < z.Length; v++) if (z[v] > z[best]) best = v;
            response.Add(best);
            history.Add(best);
            if (best == 2) break;                                   // EOS
        }
        return [.. response];
    }

    [Theory]
    [InlineData("plain")]
    [InlineData("gqa")]
    public void RepetitionPenaltyUsesEachRowsOwnHistory(string graph)
    {
        var cfg = Config(50);
        using var m = TinyModels.Randomized(cfg, 13);
        using var engine = RolloutEngine.Load(Export(m, graph), new RolloutEngineOptions { Threads = 1, EosTokenIds = [2], PadTokenId = 0 });
        int[][] prompts = [[1, 5, 9, 12, 7, 5, 9], [1, 30], [1, 4, 4, 8, 16, 23, 42, 3, 4], [1, 5, 9, 12, 7, 5, 9]];
        float[] penalties = [3f, 1f, 1.5f, 1f];
        const int MaxNew = 12;
        var requests = prompts.Select((p, i) => RolloutRequest.FromIds(p, new SamplingOptions { Temperature = 0, MaxNewTokens = MaxNew, RepetitionPenalty = penalties[i] })).ToArray();
        var batched = engine.Generate(requests);
        int mattered = 0;
        for (int i = 0; i < prompts.Length; i++)
        {
            int[] expected = ReferenceGreedy(m, prompts[i], penalties[i], MaxNew);
            Assert.Equal(expected, batched[i].ResponseIds);
            Assert.Equal(engine.Generate(requests[i]).ResponseIds, batched[i].ResponseIds);     // the same request alone
            if (!expected.SequenceEqual(ReferenceGreedy(m, prompts[i], 1f, MaxNew))) mattered |= 1 << i;
        }
        Assert.Equal(0b0101, mattered);   // the penalty changes both penalised rows, so ignoring it shows
        Assert.NotEqual(batched[0].ResponseIds, batched[3].ResponseIds);   // same prompt, own penalty
    }

    [Theory]
    [InlineData("plain")]
    [InlineData("gqa")]
    public void StopStringsEndOnlyTheirOwnRow(string graph)
    {
        string folder = Path.Combine(_dir, "tok");
        var bpe = BpeTrainer.Train(Corpus, new BpeTrainerOptions { VocabSize = 300 });
        bpe.Save(folder);
        var tok = TextTokenizer.Load(folder);
        using var m = TinyModels.Randomized(Config(bpe.VocabSize), 9);
        using var engine = RolloutEngine.Load(Export(m, graph), new RolloutEngineOptions { Threads = 1, EosTokenIds = [] }, tok);
        string[] prompts = ["the product", "review number 3 was", "slow", "the service"];
        var greedy = new SamplingOptions { Temperature = 0, MaxNewTokens = 12 };
        var free = engine.Generate([.. prompts.Select(p => RolloutRequest.FromText(p, greedy))]);

        // Rows 0 and 2 get a visible two-character stop string from their own free text (after token 3); rows 1 and 3 none.
        var stops = new string?[prompts.Length];
        var cutAt = new int[prompts.Length];
        foreach (int r in new[] { 0, 2 })
        {
            string full = tok.Decode(free[r].ResponseIds);
            int from = tok.Decode(free[r].ResponseIds[..3]).Length;
            int visible = Enumerable.Range(from, full.Length - from - 1).First(i => !char.IsWhiteSpace(full[i]) && !char.IsWhiteSpace(full[i + 1]));
            stops[r] = full.Substring(visible, 2);
            cutAt[r] = Enumerable.Range(1, 12).First(n => tok.Decode(free[r].ResponseIds[..n]).Contains(stops[r]!, StringComparison.Ordinal));
        }
        var cut = engine.Generate([.. prompts.Select((p, r) => RolloutRequest.FromText(p, stops[r] is { } s ? greedy with { StopStrings = [s] } : greedy))]);
        for (int r = 0; r < prompts.Length; r++)
        {
            if (stops[r] is { } stop)
            {
                string full = tok.Decode(free[r].ResponseIds);
                Assert.Equal(RolloutFinishReason.StopString, cut[r].FinishReason);
                Assert.Equal(free[r].ResponseIds[..cutAt[r]], cut[r].ResponseIds);
                Assert.Equal(full[..full.IndexOf(stop, StringComparison.Ordinal)].TrimStart(), cut[r].Text);
            }
            else
            {
                Assert.Equal(RolloutFinishReason.Length, cut[r].FinishReason);
                Assert.Equal(free[r].ResponseIds, cut[r].ResponseIds);
                Assert.Equal(free[r].Text, cut[r].Text);
            }
            Assert.Equal(cut[r].ResponseIds.Length, cut[r].LogProbs.Length);
        }
    }
}
