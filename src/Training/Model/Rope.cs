using Rlhf.Export.Hf;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>
/// Rotary position embedding (Su et al. 2021) in the Hugging Face "rotate half" layout: the head dimension is split
/// into halves [x1, x2] and <c>rope(x) = x·cos + [−x2, x1]·sin</c> with angle <c>pos · f_i</c>, i &lt; D/2, each
/// frequency used for dimension i and i + D/2; f_i = θ^(−2i/D) under the config's rope_scaling (<see cref="RopeFrequencies.Inverse"/>).
/// </summary>
public static class Rope
{
    /// <summary>
    /// cos and sin tables for explicit positions. positionIds [B, S] int64 -> (cos, sin) each [B, S, D] in <paramref name="dtype"/>.
    /// </summary>
    public static (Tensor Cos, Tensor Sin) CosSin(Tensor positionIds, ModelConfig c, ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        var inv = RopeFrequencies.Inverse(c.HeadDim, c.RopeTheta, c.RopeScaling);
        var invFreq = torch.tensor(inv, device: positionIds.device);                      // [D/2]
        var freqs = positionIds.to(ScalarType.Float32).unsqueeze(-1) * invFreq;           // [B, S, D/2]
        var emb = torch.cat([freqs, freqs], -1);                                          // [B, S, D]
        return scope.MoveToOuter(emb.cos().to(dtype), emb.sin().to(dtype));
    }

    /// <summary>[x1, x2] -> [−x2, x1] along the last dimension.</summary>
    public static Tensor RotateHalf(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var halves = x.chunk(2, -1);
        return scope.MoveToOuter(torch.cat([-halves[1], halves[0]], -1));
    }

    /// <summary>x [B, heads, S, D], cos/sin [B, S, D] -> rotated x [B, heads, S, D].</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        using var scope = torch.NewDisposeScope();
        var c = cos.unsqueeze(1);
        var s = sin.unsqueeze(1);
        return scope.MoveToOuter(x * c + RotateHalf(x) * s);
    }
}
