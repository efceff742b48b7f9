namespace Rlhf.Export;

/// <summary>Which decoder graph a policy folder holds.</summary>
public enum GraphKind
{
    /// <summary>Plain ONNX ops (<see cref="Onnx.LlamaGraph"/>): any provider, any padding, takes <c>position_ids</c>.</summary>
    Plain,
    /// <summary>ONNX Runtime contrib ops as GenAI's builder emits them (<see cref="Onnx.LlamaContribGraph"/>): right padding only.</summary>
    ContribGqa,
}

/// <summary>Where a policy graph keeps its weights.</summary>
public enum WeightPlacement
{
    /// <summary>Initializers in <c>model.onnx.data</c>: a plain GenAI folder any ONNX Runtime application can open.</summary>
    Initializers,
    /// <summary>
    /// Required float32 graph inputs named like the initializers they replace (no initializer, no data file): the caller
    /// feeds every weight at run time, e.g. ONNX Runtime GenAI's <c>Generator.SetModelInput</c> with the trainer's memory,
    /// so a weight update needs no file and no new session.
    /// </summary>
    Inputs,
}

/// <summary>Arithmetic of a policy graph's projections.</summary>
public enum RolloutPrecision
{
    /// <summary>float32 MatMuls.</summary>
    Fp32,
    /// <summary>
    /// Weight-only int8 projections and LM head (<see cref="Onnx.Int8MatMul"/>: per-column scales, activations quantized
    /// at run time), from float32 initializers under the usual names. GroupQueryAttention graph only.
    /// </summary>
    Int8,
}

/// <summary>What an exported folder is for.</summary>
public enum ModelKind
{
    /// <summary>Causal LM with KV cache (actor or frozen reference), GenAI format.</summary>
    Policy,
    /// <summary>Reward model: <c>rewards</c> [B] at the last real token (and <c>values</c> [B, S]).</summary>
    Reward,
    /// <summary>Critic: <c>values</c> [B, S] (and <c>rewards</c> [B]).</summary>
    Value,
}

/// <summary>Command-line / manifest spellings of the export enums.</summary>
public static class ExportNames
{
    /// <summary>plain | gqa.</summary>
    public static string Name(GraphKind g) => g switch
    {
        GraphKind.Plain => "plain",
        GraphKind.ContribGqa => "gqa",
        _ => throw new ArgumentOutOfRangeException(nameof(g), g, null),
    };

    /// <summary>initializers | inputs.</summary>
    public static string Name(WeightPlacement w) => w switch
    {
        WeightPlacement.Initializers => "initializers",
        WeightPlacement.Inputs => "inputs",
        _ => throw new ArgumentOutOfRangeException(nameof(w), w, null),
    };

    /// <summary>Parses initializers | inputs (case-insensitive).</summary>
    public static WeightPlacement ParseWeights(string s) => s.ToLowerInvariant() switch
    {
        "initializers" => WeightPlacement.Initializers,
        "inputs" => WeightPlacement.Inputs,
        _ => throw new ArgumentException($"Unknown weight placement '{s}': use initializers or inputs."),
    };

    /// <summary>fp32 | int8.</summary>
    public static string Name(RolloutPrecision p) => p switch
    {
        RolloutPrecision.Fp32 => "fp32",
        RolloutPrecision.Int8 => "int8",
        _ => throw new ArgumentOutOfRangeException(nameof(p), p, null),
    };

    /// <summary>Parses fp32 | int8 (case-insensitive).</summary>
    public static RolloutPrecision ParsePrecision(string s) => s.ToLowerInvariant() switch
    {
        "fp32" => RolloutPrecision.Fp32,
        "int8" => RolloutPrecision.Int8,
        _ => throw new ArgumentException($"Unknown rollout precision '{s}': use fp32 or int8."),
    };

    /// <summary>policy | reward | value.</summary>
    public static string Name(ModelKind k) => k switch
    {
        ModelKind.Policy => "policy",
        ModelKind.Reward => "reward",
        ModelKind.Value => "value",
        _ => throw new ArgumentOutOfRangeException(nameof(k), k, null),
    };

    /// <summary>Parses plain | gqa (case-insensitive).</summary>
    public static GraphKind ParseGraph(string s) => s.ToLowerInvariant() switch
    {
        "plain" => GraphKind.Plain,
        "gqa" or "contrib" or "contribgqa" => GraphKind.ContribGqa,
        _ => throw new ArgumentException($"Unknown graph '{s}': use plain or gqa."),
    };

    /// <summary>Parses policy | reward | value (case-insensitive).</summary>
    public static ModelKind ParseKind(string s) => s.ToLowerInvariant() switch
    {
        "policy" => ModelKind.Policy,
        "reward" => ModelKind.Reward,
        "value" => ModelKind.Value,
        _ => throw new ArgumentException($"Unknown kind '{s}': use policy, reward or value."),
    };
}
