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
    /// <summary>
    /// <see cref="Bf16"/> where the device multiplies bfloat16 natively (a CUDA device; a CPU whose flags in
    /// /proc/cpuinfo include avx512_bf16 or amx_bf16), <see cref="Fp32"/> elsewhere (bfloat16 emulated on a CPU without
    /// those instructions is slower than float32). Resolved once per stage by <see cref="MixedPrecision.Resolve"/>.
    /// </summary>
    Auto,
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

    /// <summary><paramref name="p"/> itself, or for <see cref="Precision.Auto"/> the precision it stands for on <paramref name="device"/>.</summary>
    public static Precision Resolve(this Precision p, Device device) =>
        p != Precision.Auto ? p : device.type == DeviceType.CUDA || CpuHasNativeBf16.Value ? Precision.Bf16 : Precision.Fp32;

    static readonly Lazy<bool> CpuHasNativeBf16 = new(() => CpuFlagsHaveBf16(ReadCpuFlags()));

    /// <summary>True when a /proc/cpuinfo "flags" line names avx512_bf16 or amx_bf16.</summary>
    internal static bool CpuFlagsHaveBf16(string cpuinfo) =>
        cpuinfo.Split('\n').Where(l => l.StartsWith("flags", StringComparison.Ordinal))
            .SelectMany(l => l.Split([' ', '\t', ':'], StringSplitOptions.RemoveEmptyEntries))
            .Any(f => f is "avx512_bf16" or "amx_bf16");

    static string ReadCpuFlags()
    {
        try { return OperatingSystem.IsLinux() ? File.ReadAllText("/proc/cpuinfo") : ""; }
        catch (IOException) { return ""; }
        catch (UnauthorizedAccessException) { return ""; }
    }

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

    /// <summary>
    /// The outputs of several projections of the same input as one product: y = x·[W₁; W₂; …]ᵀ + [b₁; b₂; …],
    /// x [..., in] -> y [..., Σ outᵢ] in the compute dtype, the layers' outputs side by side in their order. One
    /// matrix product (and one for each gradient) instead of one per layer; the concatenation is differentiable, so
    /// each weight's gradient arrives in its own dtype. Every layer or none has a bias.
    /// </summary>
    public static Tensor FusedLinear(IReadOnlyList<Linear> layers, Tensor x, ScalarType? compute)
    {
        using var scope = torch.NewDisposeScope();
        var w = Cast(torch.cat([.. layers.Select(l => l.weight!)], 0), compute);
        var b = layers[0].bias is null ? null : Cast(torch.cat([.. layers.Select(l => l.bias!)], 0), compute);
        return scope.MoveToOuter(nn.functional.linear(Cast(x, compute), w, b));
    }
}
