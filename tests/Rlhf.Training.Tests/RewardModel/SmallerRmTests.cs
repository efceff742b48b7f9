using Rlhf.Training.Model;
using Rlhf.Training.Tests.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.RewardModel;

/// <summary><c>rm.num_layers</c>: an RM of the SFT model's first N decoder layers.</summary>
public sealed class SmallerRmTests
{
    [Fact]
    public void TheFirstLayersScoreAsTheWholeModelWithItsLaterLayersMadeIdentities()
    {
        var cfg = TinyModels.Config(layers: 2);
        string folder = Directory.CreateTempSubdirectory("rlhf-rm-layers-").FullName;
        try
        {
            using (var sft = TinyModels.Randomized(cfg, 9)) sft.SavePretrained(folder);
            using var small = LlamaForSequenceClassification.FromPretrained(folder, CPU, ScalarType.Float32, newHeadSeed: 3, keepLayers: 1);
            using var full = LlamaForSequenceClassification.FromPretrained(folder, CPU, ScalarType.Float32, newHeadSeed: 3);
            Assert.Equal(1, small.Config.NumHiddenLayers);
            Assert.Single(small.named_parameters().Select(p => p.name).Where(n => n.StartsWith("model.layers.", StringComparison.Ordinal)).Select(n => n.Split('.')[2]).Distinct());
            // Layer 1 with zero output projections adds nothing to the residual stream: h + attn(·)·0 + mlp(·)·0 = h.
            using (no_grad())
                foreach (var (name, p) in full.named_parameters())
                    if (name is "model.layers.1.self_attn.o_proj.weight" or "model.layers.1.mlp.down_proj.weight") p.zero_();
            using var ids = tensor(new long[] { 1, 5, 9, 3, 7, 2, 4, 8 }, [2, 4]);
            using var mask = ones_like(ids);
            using var a = small.Scores(ids, mask);
            using var b = full.Scores(ids, mask);
            Assert.True((a - b).abs().max().item<float>() < 1e-5f, $"{string.Join(", ", a.data<float>().ToArray())} vs {string.Join(", ", b.data<float>().ToArray())}");
            Assert.Throws<InvalidDataException>(() => LlamaForSequenceClassification.FromPretrained(folder, CPU, ScalarType.Float32, newHeadSeed: 3, keepLayers: 3));
        }
        finally
        {
            Directory.Delete(folder, true);
        }
    }
}
