using Rlhf.Inference.Services;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Inference.Rollout;

/// <summary>
/// Which engine generates rollouts. One kind for every command that picks one (<c>ppo</c>, <c>rm</c> labelling, <c>dpo</c>,
/// <c>generate</c>, <c>serve rollout</c>); config files and options spell it in lower case (<c>ort</c>, <c>torch</c>, <c>genai</c>).
/// </summary>
public enum RolloutEngineKind
{
    /// <summary>Our ONNX Runtime engine over the exported actor (<see cref="RolloutEngine"/>; the default).</summary>
    Ort,
    /// <summary>TorchSharp eager generation with the KV cache (the reference path; needs TorchSharp, so <c>rlhf</c> only, not <c>rlhf-serve</c>).</summary>
    Torch,
    /// <summary>ONNX Runtime GenAI over the exported actor (<see cref="GenAiRolloutEngine"/>).</summary>
    Genai,
}

/// <summary>
/// The factory of the ONNX engines over an exported folder, used by <c>serve rollout</c> and (through the training side's
/// policy factory, which adds the TorchSharp engine and the export) by <c>ppo</c>, <c>rm</c>, <c>dpo</c> and <c>generate</c>.
/// </summary>
public static class RolloutEngines
{
    /// <summary>The kinds' names as options and configs spell them: ort, torch, genai.</summary>
    public static IReadOnlyList<string> Names { get; } = [.. Enum.GetValues<RolloutEngineKind>().Select(Name)];

    /// <summary>The lower-case name of <paramref name="kind"/> (<c>ort</c>, <c>torch</c>, <c>genai</c>).</summary>
    public static string Name(RolloutEngineKind kind) => kind.ToString().ToLowerInvariant();

    /// <summary>The kind named <paramref name="name"/> (any case); throws naming the choices otherwise.</summary>
    public static RolloutEngineKind Parse(string name) =>
        Names.Contains(name.ToLowerInvariant()) ? Enum.Parse<RolloutEngineKind>(name, ignoreCase: true)
            : throw new ArgumentException($"--engine {name} is not known; use {string.Join(", ", Names)}.");

    /// <summary>
    /// Opens an ONNX engine (<see cref="RolloutEngineKind.Ort"/> or <see cref="RolloutEngineKind.Genai"/>) over the exported
    /// <paramref name="folder"/> with <paramref name="threads"/> intra-op threads (0 = all cores). <paramref name="stopIds"/>
    /// overrides the folder's EOS ids for our engine (GenAI reads genai_config.json's). The torch engine needs a TorchSharp
    /// model, which this assembly does not have: it is refused with a one-line error.
    /// </summary>
    public static LocalRolloutEngine OpenOnnx(RolloutEngineKind kind, string folder, TextTokenizer? tokenizer, int threads, IReadOnlyList<int>? stopIds = null) => kind switch
    {
        RolloutEngineKind.Ort => RolloutEngine.Load(folder, new RolloutEngineOptions { Threads = threads, MaxBatchSize = 64, EosTokenIds = stopIds }, tokenizer),
        RolloutEngineKind.Genai => GenAiRolloutEngine.Load(folder, new GenAiEngineOptions { Threads = threads }, tokenizer),
        RolloutEngineKind.Torch => throw new ArgumentException("The torch engine samples with TorchSharp, which an ONNX folder and rlhf-serve do not have; use --engine ort or genai."),
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };
}
