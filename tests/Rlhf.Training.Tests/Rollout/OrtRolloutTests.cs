using Rlhf.Export.Hf;
using Rlhf.Export.Onnx;
using Rlhf.Inference.Rollout;
using Rlhf.Training.Model;
using Rlhf.Training.Tests.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Rollout;

/// <summary>The ONNX Runtime rollout engine against the TorchSharp model on the same weights.</summary>
public sealed class OrtRolloutTests : IDisposable
{
    readonly List<string> _dirs = [];

    public void Dispose()
    {
        foreach (var d in _dirs) try { Directory.Delete(d, true); } catch (IOException) { }
    }

    string Export(LlamaForCausalLM m)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"rlhf-rollout-{Guid.NewGuid():N}");
        _dirs.Add(dir);
        LlamaGraph.Export(m.Config, m.state_dict(), dir);
        return dir;
    }

    static float MaxDiff(float[] ort, Tensor reference)
    {
        float[] r = reference.contiguous().data<float>().ToArray();
        Assert.Equal(r.Length, ort.Length);
        float max = 0;
        for (int i = 0; i < r.Length; i++) max = Math.Max(max, Math.Abs(ort[i] - r[i]));
        return max;
    }

    static readonly long[][] Prompts = [[1, 5, 9, 12, 7], [1, 30], [1, 4, 4, 8, 16, 23, 42, 3], [1]];

    [Theory]
    [InlineData(false, true)]
    [InlineData(true, false)]
    public void LogitsEqualTorchAfterWeightUpdate(bool tied, bool bias)
    {
        var cfg = TinyModels.Config(tied: tied, attentionBias: bias);
        using var a = TinyModels.Randomized(cfg, 1);
        using var b = TinyModels.Randomized(cfg, 2);
        using var engine = RolloutEngine.Load(Export(a), new RolloutEngineOptions { Threads = 2 });
        int[] ids = [1, 7, 3, 22, 41, 9];
        using var refA = TinyModels.RowLogits(a, [.. ids.Select(x => (long)x)]);
        using var refB = TinyModels.RowLogits(b, [.. ids.Select(x => (long)x)]);
        Assert.True(MaxDiff(engine.Logits(ids), refA) <= 1e-4f);
        Assert.True(MaxDiff(engine.Logits(ids), refB) > 1e-2f);

        var weights = OrtWeights.From(b);
        engine.UpdateWeights(weights.Buffers, weights);
        float diff = MaxDiff(engine.Logits(ids), refB);
        Assert.True(diff <= 1e-4f, $"max |ort - torch| after update = {diff}");

        // A second update (back to a) releases the first snapshot and is seen too.
        var again = OrtWeights.From(a);
        engine.UpdateWeights(again.Buffers, again);
        Assert.True(MaxDiff(engine.Logits(ids), refA) <= 1e-4f);
    }

    [Fact]
    public void UnknownOrMisshapedWeightIsRejected()
    {
        var cfg = TinyModels.Config();
        using var a = TinyModels.Randomized(cfg, 1);
        using var engine = RolloutEngine.Load(Export(a), new RolloutEngineOptions { Threads = 1 });
        var bad = new Dictionary<string, WeightBuffer> { ["model.norm.weight"] = new("model.norm.weight", [3], new float[3]) };
        var e = Assert.Throws<ArgumentException>(() => engine.UpdateWeights(bad));
        Assert.Contains("'model.norm.weight' has shape [3], the graph stores [32]", e.Message);
        var unknown = new Dictionary<string, WeightBuffer> { ["model.nope.weight"] = new("model.nope.weight", [3], new float[3]) };
        Assert.Contains("'model.nope.weight' is not an initializer of the graph", Assert.Throws<ArgumentException>(() => engine.UpdateWeights(unknown)).Message);
        int[] ids = [1, 2, 3];
        using var refA = TinyModels.RowLogits(a, [1, 2, 3]);
        Assert.True(MaxDiff(engine.Logits(ids), refA) <= 1e-4f);   // the old session is still in place
    }

    [Theory]
    [InlineData(PaddingSide.Left)]
    [InlineData(PaddingSide.Right)]
    public void GreedyEqualsTorchGeneration(PaddingSide padding)
    {
        var cfg = TinyModels.Config(layers: 2);
        using var m = TinyModels.Randomized(cfg, 3);
        var torchOut = Generation.Generate(m, Prompts, new SamplingOptions { MaxNewTokens = 12, Temperature = 0 }, [2], 0);
        using var engine = RolloutEngine.Load(Export(m), new RolloutEngineOptions { Threads = 2, Padding = padding, EosTokenIds = [2], PadTokenId = 0 });
        var sampling = new SamplingOptions { Temperature = 0, MaxNewTokens = 12 };
        var ort = engine.Generate([.. Prompts.Select(p => RolloutRequest.FromIds([.. p.Select(x => (int)x)], sampling))]);
        for (int i = 0; i < Prompts.Length; i++)
        {
            Assert.Equal(torchOut[i].Tokens.Select(x => (int)x), ort[i].ResponseIds);
            Assert.Equal(torchOut[i].FinishReason, ort[i].FinishReason);
            Assert.Equal(Prompts[i].Select(x => (int)x), ort[i].PromptIds);
        }
    }

    [Fact]
    public void LogProbsAreTorchLogSoftmaxAtTemperature()
    {
        var cfg = TinyModels.Config();
        using var m = TinyModels.Randomized(cfg, 4);
        using var engine = RolloutEngine.Load(Export(m), new RolloutEngineOptions { Threads = 2, EosTokenIds = [2] });
        const float T = 0.7f;
        var sampling = new SamplingOptions { Temperature = T, MaxNewTokens = 10, Seed = 11 };
        var results = engine.Generate([.. Prompts.Select(p => RolloutRequest.FromIds([.. p.Select(x => (int)x)], sampling with { Seed = (ulong)p.Length }))]);
        foreach (var r in results)
        {
            long[] all = [.. r.PromptIds.Concat(r.ResponseIds).Select(x => (long)x)];
            using var logits = TinyModels.RowLogits(m, all);                       // [S, V]
            using var logp = (logits / T).log_softmax(-1);
            for (int j = 0; j < r.ResponseIds.Length; j++)
            {
                float expected = logp[r.PromptIds.Length - 1 + j, r.ResponseIds[j]].item<float>();
                Assert.True(Math.Abs(expected - r.LogProbs[j]) <= 1e-4f, $"token {j}: {r.LogProbs[j]} vs {expected}");
            }
            Assert.True(r.Timings.TokensPerSecond > 0);
        }
    }

    [Fact]
    public void SeededRequestIsTheSameAloneInABatchAndConcurrently()
    {
        var cfg = TinyModels.Config();
        using var m = TinyModels.Randomized(cfg, 5);
        using var engine = RolloutEngine.Load(Export(m), new RolloutEngineOptions { Threads = 1 });
        var req = RolloutRequest.FromIds([1, 5, 9], new SamplingOptions { Temperature = 1, TopK = 20, MaxNewTokens = 16, Seed = 42 });
        var alone = engine.Generate(req);
        var batch = engine.Generate([RolloutRequest.FromIds([1, 2, 3, 4, 5, 6, 7], new SamplingOptions { Seed = 1, MaxNewTokens = 3 }), req,
                                     RolloutRequest.FromIds([1], new SamplingOptions { Seed = 2, MaxNewTokens = 20 })]);
        Assert.Equal(alone.ResponseIds, batch[1].ResponseIds);
        Assert.Equal(3, batch[0].ResponseIds.Length);
        Assert.Equal(RolloutFinishReason.Length, batch[0].FinishReason);
        var parallel = Enumerable.Range(0, 4).AsParallel().Select(_ => engine.Generate(req).ResponseIds).ToList();
        Assert.All(parallel, p => Assert.Equal(alone.ResponseIds, p));
    }
}
