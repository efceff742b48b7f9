namespace Rlhf.Export;

/// <summary>Which decoder graph a policy folder holds.</summary>
public enum GraphKind
{
    /// <summary>Plain ONNX ops (<see cref="Onnx.LlamaGraph"/>): any provider, any padding, takes <c>position_ids</c>.</summary>
    Plain,
    /// <summary>ONNX Runtime contrib ops as GenAI's builder emits them (<see cref="Onnx.LlamaContribGraph"/>): right padding only.</summary>
    ContribGqa,
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
