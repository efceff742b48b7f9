using Rlhf.Export.Hf;
using Rlhf.Export.Onnx;
using Rlhf.Inference.Rollout;
using Rlhf.Training.Model;
using Rlhf.Training.Tests.Model;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Rollout;

/// <summary>
/// The engine on the GroupQueryAttention graph (right padding, contiguous rows, shared past/present KV buffers bound
/// with OrtIoBinding) and weight sync with packed q/k/v.
/// </summary>
public sealed class OrtGqaRolloutTests
{

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void GreedyAndWeightSyncEqualTorch(bool shareKvBuffer)
    {
        var cfg = TinyModels.Config() with { HiddenSize = 64, NumAttentionHeads = 4, NumKeyValueHeads = 2, IntermediateSize = 96 };   // head_dim 16
        using var m = TinyModels.Randomized(cfg, 3);
        string dir = Path.Combine(Path.GetTempPath(), $"rlhf-gqa-{Guid.NewGuid():N}");
        try
        {
            LlamaContribGraph.Export(cfg, m.state_dict(), dir);
            long[][] prompts = [[1, 5, 9, 12, 7], [1, 30], [1, 4, 4, 8, 16, 23, 42, 3], [1]];
            var torchOut = Generation.Generate(m, prompts, new SamplingOptions { MaxNewTokens = 12, Temperature = 0 }, [2], 0);
            using var engine = RolloutEngine.Load(dir, new RolloutEngineOptions { Threads = 2, EosTokenIds = [2], PadTokenId = 0, ShareKvBuffer = shareKvBuffer });
            Assert.Equal(PaddingSide.Right, engine.Padding);
            var ort = engine.Generate([.. prompts.Select(p => RolloutRequest.FromIds([.. p.Select(x => (int)x)], new SamplingOptions { Temperature = 0, MaxNewTokens = 12 }))]);
            for (int i = 0; i < prompts.Length; i++) Assert.Equal(torchOut[i].Tokens.Select(x => (int)x), ort[i].ResponseIds);

            using var b = TinyModels.Randomized(cfg, 4);
            var w = OrtWeights.From(b, packedQkv: true);
            engine.UpdateWeights(w.Buffers, w);
            int[] ids = [1, 7, 3, 22, 41, 9];
            using var refB = TinyModels.RowLogits(b, [.. ids.Select(x => (long)x)]);
            float[] r = refB.contiguous().data<float>().ToArray(), o = engine.Logits(ids);
            Assert.True(r.Zip(o).Max(p => Math.Abs(p.First - p.Second)) <= 1e-4f);
        }
        finally
        {
            try { Directory.Delete(dir, true); } catch (IOException) { }
        }
    }
}
