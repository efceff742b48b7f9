using Rlhf.Export;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Model;
using Rlhf.Training.OnnxExport;
using static TorchSharp.torch;

namespace Rlhf.Training.Engines;

/// <summary>
/// The one rollout-engine factory of the trainer side: every <see cref="RolloutEngineKind"/> for a TorchSharp policy in
/// memory (<c>ppo</c>, <c>rm</c> labelling, <c>dpo</c>) or for a model folder (<c>generate</c>). The ONNX kinds open
/// through <see cref="RolloutEngines.OpenOnnx"/>, the factory <c>serve rollout</c> uses as well; the torch kind is
/// <see cref="TorchRollouts"/>, which lives here because only this side has TorchSharp.
/// </summary>
public static class PolicyRollouts
{
    /// <summary>
    /// The rollout service for <paramref name="actor"/>: an ONNX engine over the default rollout graph (GroupQueryAttention
    /// where the head size allows, see <see cref="ExportStage.DefaultGraph"/>) exported once to <paramref name="scratch"/>
    /// (deleted on dispose), weights then flowing in memory via <see cref="InferenceServices.Sync"/>; or TorchSharp generation
    /// from a float32 copy of the actor. GenAI's graph and the copy hold no weights: the actor's are pushed as version 0.
    /// </summary>
    public static IRolloutService ForActor(RolloutEngineKind kind, LlamaForCausalLM actor, TextTokenizer tokenizer, string tokenizerFolder, string scratch, int threads,
        RolloutPrecision precision = RolloutPrecision.Fp32)
    {
        if (precision != RolloutPrecision.Fp32 && kind != RolloutEngineKind.Ort)
            throw new ArgumentException($"rollout precision {ExportNames.Name(precision)} is available with the ort engine only.");
        // a LoRA actor on our engine: the base exported once with LoRA inputs, the adapter pushed after every update
        bool adapters = actor.Lora is not null && kind == RolloutEngineKind.Ort && ExportStage.DefaultGraph(actor.Config) == GraphKind.ContribGqa;
        IRolloutService rollouts = kind == RolloutEngineKind.Torch ? TorchRollouts.CopyOf(actor, tokenizer)
            : new ScratchRollouts(RolloutEngines.OpenOnnx(kind, Export(actor, scratch, tokenizerFolder, "ppo-rollout", kind, precision, adapters), tokenizer, threads), scratch);
        if (kind != RolloutEngineKind.Ort || adapters) InferenceServices.Sync(rollouts, actor, 0);
        return rollouts;
    }

    /// <summary>
    /// The rollout service for a model folder: the torch kind loads an HF folder on <paramref name="device"/> and generates
    /// each call's prompts as one batch; the ONNX kinds open an ONNX folder as it is, or export an HF folder to a temporary
    /// folder first (stopping at every EOS the HF folder names) and delete it on dispose.
    /// </summary>
    public static IRolloutService ForFolder(RolloutEngineKind kind, string folder, TextTokenizer tokenizer, int threads, ComputeDevice device)
    {
        if (kind == RolloutEngineKind.Torch)
            return new TorchRollouts(LlamaForCausalLM.FromPretrained(folder, DeviceSelector.Resolve(device), ScalarType.Float32), tokenizer, batchRows: int.MaxValue);
        if (device != ComputeDevice.Cpu)
            throw new ArgumentException($"--engine {RolloutEngines.Name(kind)} runs on the CPU (this build has the CPU ONNX Runtime); drop --device.");
        if (IsOnnxFolder(folder)) return RolloutEngines.OpenOnnx(kind, folder, tokenizer, threads);
        string temp = Path.Combine(Path.GetTempPath(), $"rlhf-generate-{Guid.NewGuid():N}");
        IReadOnlyList<int> stopIds;
        using (var lm = LlamaForCausalLM.FromPretrained(folder, CPU, ScalarType.Float32))
        {
            Export(lm, temp, folder, "generate", RolloutEngineKind.Ort, RolloutPrecision.Fp32);
            stopIds = Generation.StopIds(lm.Config, tokenizer);
        }
        return new ScratchRollouts(RolloutEngines.OpenOnnx(kind, temp, tokenizer, threads, stopIds), temp);   // GenAI: EOS from genai_config.json
    }

    /// <summary>True for a folder holding an exported ONNX decoder rather than HF safetensors.</summary>
    public static bool IsOnnxFolder(string folder) =>
        File.Exists(Path.Combine(folder, "genai_config.json")) || File.Exists(Path.Combine(folder, "model.onnx")) || folder.EndsWith(".onnx", StringComparison.Ordinal);

    /// <summary>
    /// Exports <paramref name="model"/> to <paramref name="folder"/> in the default graph (weights as graph inputs for a
    /// GenAI training engine; with <paramref name="loraInputs"/> the base with LoRA inputs, <see cref="LoraAdapterExport"/>); returns the folder.
    /// </summary>
    static string Export(LlamaForCausalLM model, string folder, string tokenizerFolder, string stage, RolloutEngineKind kind, RolloutPrecision precision, bool loraInputs = false)
    {
        var options = new ExportOptions { TokenizerFolder = tokenizerFolder, Overwrite = true, Stage = stage, Precision = precision };
        if (loraInputs) LoraAdapterExport.Export(model, folder, options, parity: false);
        else ExportStage.ExportPolicy(model, folder, ExportStage.DefaultGraph(model.Config),
            kind == RolloutEngineKind.Genai ? options with { Weights = WeightPlacement.Inputs } : options, parity: false);
        return folder;
    }
}
