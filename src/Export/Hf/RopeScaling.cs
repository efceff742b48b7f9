using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Rlhf.Export.Hf;

/// <summary>How RoPE frequencies are rescaled for a longer context (HF <c>rope_scaling.rope_type</c>).</summary>
public enum RopeScalingType
{
    /// <summary><c>linear</c> (position interpolation, Chen et al. 2023): every inverse frequency divided by the factor.</summary>
    Linear,
    /// <summary><c>llama3</c> (Llama 3.1/3.2): low frequencies divided by the factor, high ones kept, a smooth ramp between.</summary>
    Llama3,
}

/// <summary>
/// HF <c>config.json</c> <c>rope_scaling</c>: <c>{"rope_type": "llama3" | "linear", "factor", "low_freq_factor",
/// "high_freq_factor", "original_max_position_embeddings"}</c> (legacy key <c>type</c> for <c>rope_type</c>).
/// The last three are used by llama3 only.
/// </summary>
public sealed record RopeScaling
{
    /// <summary>Scaling variant.</summary>
    public RopeScalingType Type { get; init; }
    /// <summary>Context extension factor s (&gt; 0).</summary>
    public double Factor { get; init; } = 1.0;
    /// <summary>llama3: wavelengths above original/low_freq_factor are divided by the factor.</summary>
    public double LowFreqFactor { get; init; } = 1.0;
    /// <summary>llama3: wavelengths below original/high_freq_factor are kept.</summary>
    public double HighFreqFactor { get; init; } = 4.0;
    /// <summary>llama3: the context the model was pretrained with.</summary>
    public int OriginalMaxPositionEmbeddings { get; init; } = 8192;

    /// <summary>
    /// Parses a <c>rope_scaling</c> object; null for JSON null or <c>rope_type</c> "default" (plain RoPE).
    /// Adds one line per problem to <paramref name="errors"/> (an unsupported rope_type is named); value ranges are
    /// checked by <see cref="ModelConfig.Validate"/>.
    /// </summary>
    public static RopeScaling? FromJson(JsonNode? node, List<string> errors)
    {
        if (node is null || node.GetValueKind() == JsonValueKind.Null) return null;
        if (node is not JsonObject o) { errors.Add("rope_scaling must be an object or null"); return null; }
        string? type = (o["rope_type"] ?? o["type"]) is JsonValue t && t.GetValueKind() == JsonValueKind.String ? t.GetValue<string>() : null;
        RopeScalingType kind;
        switch (type)
        {
            case "default": return null;
            case "linear": kind = RopeScalingType.Linear; break;
            case "llama3": kind = RopeScalingType.Llama3; break;
            default:
                errors.Add($"rope_scaling rope_type '{type ?? "(missing)"}' (supported: linear, llama3; remove rope_scaling for plain RoPE)");
                return null;
        }
        double? Num(string key) => o[key] is JsonValue v && v.GetValueKind() == JsonValueKind.Number
            ? double.Parse(v.ToJsonString(), CultureInfo.InvariantCulture) : null;
        double? factor = Num("factor");
        if (factor is not > 0) { errors.Add($"rope_scaling factor must be a positive number (got {o["factor"]?.ToJsonString() ?? "none"})"); return null; }
        var r = new RopeScaling { Type = kind, Factor = factor.Value };
        if (kind == RopeScalingType.Linear) return r;
        double? low = Num("low_freq_factor"), high = Num("high_freq_factor"), orig = Num("original_max_position_embeddings");
        if (low is null || high is null || orig is null)
        {
            errors.Add("rope_scaling llama3 needs low_freq_factor, high_freq_factor and original_max_position_embeddings");
            return null;
        }
        return r with { LowFreqFactor = low.Value, HighFreqFactor = high.Value, OriginalMaxPositionEmbeddings = (int)orig.Value };
    }

    /// <summary>The <c>rope_scaling</c> object as transformers writes it.</summary>
    public JsonObject ToJson() => Type switch
    {
        RopeScalingType.Linear => new JsonObject { ["factor"] = Factor, ["rope_type"] = "linear" },
        _ => new JsonObject
        {
            ["factor"] = Factor,
            ["high_freq_factor"] = HighFreqFactor,
            ["low_freq_factor"] = LowFreqFactor,
            ["original_max_position_embeddings"] = OriginalMaxPositionEmbeddings,
            ["rope_type"] = "llama3",
        },
    };
}

/// <summary>The one owner of RoPE's inverse frequencies (TorchSharp model, plain ONNX graph, GQA cos/sin caches).</summary>
public static class RopeFrequencies
{
    /// <summary>
    /// inv_freq [D/2] for head size D, base θ and optional scaling, rounded to float32 (as every consumer uses them):
    /// <list type="bullet">
    /// <item>plain (Su et al. 2021, RoFormer): f_i = θ^(−2i/D), i &lt; D/2;</item>
    /// <item>linear (Chen et al. 2023, position interpolation; HF <c>_compute_linear_scaling_rope_parameters</c>): f_i / s,
    /// i.e. positions divided by s;</item>
    /// <item>llama3 (HF <c>_compute_llama3_parameters</c>, Meta's Llama 3.1 reference): with λ_i = 2π / f_i, L = original
    /// context, λ_hi = L / high_freq_factor, λ_lo = L / low_freq_factor: λ_i &lt; λ_hi → f_i; λ_i &gt; λ_lo → f_i / s; otherwise
    /// with smooth = (L / λ_i − low) / (high − low): (1 − smooth)·f_i / s + smooth·f_i.</item>
    /// </list>
    /// Computed in double, then rounded once.
    /// </summary>
    public static float[] Inverse(int headDim, double theta, RopeScaling? scaling)
    {
        var inv = new float[headDim / 2];
        for (int i = 0; i < inv.Length; i++)
        {
            double f = 1.0 / Math.Pow(theta, 2.0 * i / headDim);
            inv[i] = (float)(scaling is null ? f : Scale(f, scaling));
        }
        return inv;
    }

    /// <summary>One inverse frequency f under <paramref name="s"/> (see <see cref="Inverse"/>).</summary>
    static double Scale(double f, RopeScaling s)
    {
        if (s.Type == RopeScalingType.Linear) return f / s.Factor;
        double wavelen = 2 * Math.PI / f;
        double orig = s.OriginalMaxPositionEmbeddings;
        if (wavelen < orig / s.HighFreqFactor) return f;
        if (wavelen > orig / s.LowFreqFactor) return f / s.Factor;
        double smooth = (orig / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
        return (1 - smooth) * f / s.Factor + smooth * f;
    }
}
