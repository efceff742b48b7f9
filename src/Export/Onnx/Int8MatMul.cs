using TorchSharp;

namespace Rlhf.Export.Onnx;

/// <summary>
/// Weight-only int8 projections for rollout graphs. A projection x·W with W stored [K, N] (= [in, out]) becomes
/// <code>
///   s_n  = max(max_k |W_kn|, 1e-12) / 63                per output column, float [N]    initializer {name}_scale
///   W_q  = round_half_even(W / s), in [−63, 63]          int8 [K, N], zero point 0       initializer {name}_int8
///   y    = com.microsoft.DynamicQuantizeMatMul(x, W_q, s)   x quantized per tensor to uint8 at run time,
///                                                            int32 accumulation, rescaled to float
/// </code>
/// The weights use 7 bits (onnxruntime's <c>reduce_range</c>): on x86 CPUs without VNNI (AVX2, AVX-512F) ONNX Runtime's
/// uint8 × int8 kernel adds pairs of products in int16 with saturation, and 2·255·127 = 64,770 overflows where
/// 2·255·63 = 32,130 does not (measured on an AVX2 CPU with full-range weights: log-probs off by 2.4–2.7).
/// <see cref="Quantize"/> is the one implementation of W -> (W_q, s): the export writes its result and the trainer's
/// weight sync sends it (ONNX Runtime folds graph-side quantization of an initializer into a constant when it builds the
/// session, so an override of the float initializer would never reach the int8 weights).
/// </summary>
public static class Int8MatMul
{
    /// <summary>Initializer of the int8 weight of projection <paramref name="name"/> (e.g. <c>model.layers.0.mlp.up_proj.weight_int8</c>).</summary>
    public static string QuantizedName(string name) => name + "_int8";

    /// <summary>Initializer of the per-column scales of projection <paramref name="name"/>.</summary>
    public static string ScaleName(string name) => name + "_scale";

    /// <summary>The largest |W_q|: 7 bits, so that no pair of uint8 × int8 products overflows int16 (see the class).</summary>
    public const int Levels = 63;

    /// <summary>W [K, N] float (any dtype/device) -> (W_q [K, N] int8, s [N] float32), contiguous on the CPU; callers dispose both.</summary>
    public static (torch.Tensor Quantized, torch.Tensor Scale) Quantize(torch.Tensor w)
    {
        if (w.dim() != 2) throw new ArgumentException($"Int8 quantization takes a [K, N] weight, got [{string.Join(", ", w.shape)}].");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var x = w.detach().to(torch.float32).cpu();
        var scale = x.abs().amax([0L]).clamp_min(1e-12) / Levels;                                // [N]
        var q = (x / scale).round().clamp(-Levels, Levels).to(torch.int8).contiguous();           // [K, N]
        return (q.MoveToOuterDisposeScope(), scale.contiguous().MoveToOuterDisposeScope());
    }

    /// <summary>
    /// Adds the int8 product of <paramref name="x"/> [..., K] and projection <paramref name="name"/> whose HF weight
    /// <paramref name="weight"/> is [N, K] (stored transposed, as every projection); returns y [..., N].
    /// </summary>
    public static string Add(GraphBuilder b, string x, string name, torch.Tensor weight, string? output = null)
    {
        var (q, s) = Quantize(weight.t());
        using (q)
        using (s)
        {
            string qn = b.Initializer(QuantizedName(name), q.data<sbyte>().ToArray(), q.shape);
            string sn = b.Initializer(ScaleName(name), s.data<float>().ToArray(), s.shape);
            if (output is null) return b.ContribNode("DynamicQuantizeMatMul", [x, qn, sn]);
            b.AddNode("DynamicQuantizeMatMul", [x, qn, sn], [output], GraphBuilder.MicrosoftDomain);
            return output;
        }
    }
}
