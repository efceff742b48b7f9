using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>Position ids that make left padding invisible to RoPE.</summary>
public static class PositionIds
{
    /// <summary>
    /// attentionMask [B, T] (1 = real token) -> [B, T] int64: <c>max(cumsum(mask) − 1, 0)</c>, so each row's first
    /// real token is at position 0 whatever its padding. Padding positions get 0 (they are masked out anyway).
    /// </summary>
    public static Tensor FromAttentionMask(Tensor attentionMask)
    {
        if (attentionMask.dim() != 2) throw new ArgumentException($"attentionMask must be [B, T], got [{string.Join(", ", attentionMask.shape)}].");
        using var scope = torch.NewDisposeScope();
        var pos = attentionMask.to(ScalarType.Int64).cumsum(-1) - 1;
        return scope.MoveToOuter(pos.clamp_min(0));
    }
}
