using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>
/// Arithmetic precision of a model's forward and backward passes. Parameters, gradients and optimizer state stay in
/// the parameters' own dtype (float32 master weights) either way.
/// </summary>
public enum Precision
{
    /// <summary>Everything in the parameters' dtype.</summary>
    Fp32,
    /// <summary>
    /// Mixed precision: every projection (q/k/v/o, the SwiGLU MLP, the LM head) runs in bfloat16 on bfloat16 casts of
    /// activations and weights; the residual stream, RMSNorm, RoPE and attention itself (softmax(QKᵀ/√d)·V: libtorch's
    /// CPU attention backward runs about twice slower in bfloat16), the scalar value/reward head and everything after the
    /// logits (log-softmax, losses, KL, GAE) stay float32. Gradients reach the float32 weights
    /// through the casts, so the optimizer updates float32 masters and checkpoints stay float32.
    /// </summary>
    Bf16,
}

/// <summary>A model whose forward/backward arithmetic can be switched between <see cref="Precision"/>s.</summary>
public interface IMixedPrecision
{
    /// <summary>Arithmetic of the next forward (and its backward).</summary>
    Precision Precision { get; set; }
}

/// <summary>The casts that implement <see cref="Precision.Bf16"/> (TorchSharp has no autocast).</summary>
public static class MixedPrecision
{
    /// <summary>The dtype projections run in: bfloat16 for <see cref="Precision.Bf16"/>, null (= the input's dtype) otherwise.</summary>
    public static ScalarType? ComputeDtype(this Precision p) => p == Precision.Bf16 ? ScalarType.BFloat16 : null;

    /// <summary>x cast to <paramref name="compute"/> (differentiable); x itself when null or already that dtype.</summary>
    public static Tensor Cast(Tensor x, ScalarType? compute) =>
        compute is ScalarType d && x.dtype != d ? x.to(d) : x;

    /// <summary>
    /// y = x·Wᵀ + b with x, W and b cast to <paramref name="compute"/>: x [..., in] -> y [..., out] in the compute dtype
    /// (the layer's dtype when <paramref name="compute"/> is null). The casts are differentiable, so W's gradient
    /// arrives in W's own (float32) dtype.
    /// </summary>
    public static Tensor Linear(Linear layer, Tensor x, ScalarType? compute)
    {
        if (compute is null) return layer.forward(x);
        using var scope = torch.NewDisposeScope();
        var w = Cast(layer.weight!, compute);
        var b = layer.bias is null ? null : Cast(layer.bias, compute);
        return scope.MoveToOuter(nn.functional.linear(Cast(x, compute), w, b));
    }
}
