namespace Rlhf.Inference.Services;

/// <summary>
/// How a policy graph stores the weights a trainer pushes into it, as the exporter declares it in the graph's metadata
/// (<c>rlhf export</c>; docs/onnx-and-engines.md): 2-D projection weights always transposed to [in, out], under their HF
/// names; with <see cref="PackedQkv"/> q, k and v packed into one <c>qkv_proj.weight</c> [in, (h + 2·h_kv)·d] (the
/// GroupQueryAttention graph, <c>rlhf.graph</c> = <c>decoder_gqa</c>; the plain graph, <c>decoder</c>, keeps them
/// apart); with <see cref="Int8"/> every projection and the LM head as <c>{name}_int8</c> [in, out] and
/// <c>{name}_scale</c> [out] (<c>rlhf.int8</c> present). With <see cref="Lora"/> (<c>rlhf.lora</c> present) the graph also
/// takes LoRA factors as inputs, <c>{module}.lora_A.weight</c> [in, r] and <c>{module}.lora_B.weight</c> [r, out] with
/// α/r folded into B: a push may then carry those alone (the adapter), and the base weights stay as they are.
/// </summary>
public sealed record PolicyWeightFormat(bool PackedQkv, bool Int8, bool Lora = false)
{
    /// <summary>Metadata key present in graphs with LoRA inputs.</summary>
    public const string LoraKey = "rlhf.lora";
    /// <summary>Metadata key of a LoRA-input graph's base fingerprint (the exporter's <c>LoraBase.Fingerprint</c>), checked against an adapter push's <see cref="PolicyWeights.Base"/>.</summary>
    public const string LoraBaseKey = "rlhf.lora_base";

    /// <summary>True for the name of a LoRA factor input (<c>….lora_A.weight</c> or <c>….lora_B.weight</c>).</summary>
    public static bool IsLoraName(string name) =>
        name.EndsWith(".lora_A.weight", StringComparison.Ordinal) || name.EndsWith(".lora_B.weight", StringComparison.Ordinal);

    /// <summary>Metadata key naming the graph kind.</summary>
    public const string GraphKey = "rlhf.graph";
    /// <summary>Metadata key present in int8 graphs.</summary>
    public const string Int8Key = "rlhf.int8";

    /// <summary>The format a policy graph's metadata declares; null for a graph that declares none (not one of our decoder exports), which weights cannot be pushed into.</summary>
    public static PolicyWeightFormat? FromMetadata(IReadOnlyDictionary<string, string> metadata) =>
        metadata.TryGetValue(GraphKey, out string? graph) switch
        {
            true when graph == "decoder" => new(PackedQkv: false, Int8: metadata.ContainsKey(Int8Key), Lora: metadata.ContainsKey(LoraKey)),
            true when graph == "decoder_gqa" => new(PackedQkv: true, Int8: metadata.ContainsKey(Int8Key), Lora: metadata.ContainsKey(LoraKey)),
            _ => null,
        };
}
