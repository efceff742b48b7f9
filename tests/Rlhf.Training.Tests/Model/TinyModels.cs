using Rlhf.Export.Hf;
using Rlhf.Training.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Model;

/// <summary>Hand-built tiny configs and helpers shared by the model tests.</summary>
internal static class TinyModels
{
    /// <summary>V=50, H=32, 4 heads (D=8), 2 kv heads, intermediate 64.</summary>
    public static ModelConfig Config(string type = "llama", bool tied = false, int layers = 2, bool attentionBias = false) =>
        Rlhf.Tests.Shared.TinyLlama.Config(type, layers: layers, tied: tied, attentionBias: attentionBias);

    /// <summary>A model in eval mode whose every parameter (biases and norms too) is random, so nothing hides behind zeros/ones.</summary>
    public static LlamaForCausalLM Randomized(ModelConfig cfg, long seed)
    {
        var m = LlamaForCausalLM.Create(cfg, torch.CPU, ScalarType.Float32, seed);
        Scramble(m, seed);
        m.eval();
        return m;
    }

    public static void Scramble(nn.Module m, long seed)
    {
        using var noGrad = torch.no_grad();
        using var gen = new torch.Generator((ulong)seed + 1000, torch.CPU);
        foreach (var (name, p) in m.named_parameters())
        {
            using var r = torch.randn(p.shape, generator: gen);
            if (name.EndsWith("norm.weight", StringComparison.Ordinal)) p.copy_(1 + 0.2 * r);
            else p.copy_(0.2 * r);
        }
    }

    public static Tensor Ids(params long[][] rows) =>
        torch.tensor(rows.SelectMany(r => r).ToArray(), [rows.Length, rows[0].Length]);

    public static float MaxAbsDiff(Tensor a, Tensor b) => (a - b).abs().max().item<float>();

    public static bool Same(Tensor a, Tensor b) =>
        a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    /// <summary>Full-sequence logits of one unpadded row [S] -> [S, V].</summary>
    public static Tensor RowLogits(LlamaForCausalLM m, long[] ids)
    {
        using var noGrad = torch.no_grad();
        var x = torch.tensor(ids, [1, ids.Length]);
        var mask = torch.ones([1, ids.Length], ScalarType.Int64);
        var pos = PositionIds.FromAttentionMask(mask);
        return m.Forward(x, mask, pos)[0];
    }
}
