using Rlhf.Export;
using Rlhf.Export.Hf;
using Rlhf.Training.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.OnnxExport;

/// <summary>
/// Training-side export: writes the ONNX folder of a TorchSharp model (<see cref="PolicyExport"/>), then measures ORT
/// vs TorchSharp parity on a few random sequences and records it in the folder's manifest.
/// </summary>
public static class ExportStage
{
    /// <summary>Sub-folder of a stage's output that holds its ONNX export.</summary>
    public const string OnnxFolderName = "onnx";

    /// <summary>Rows and decode steps of the parity check run after each export.</summary>
    static readonly int[] ParityLengths = [9, 5, 2];
    const int ParitySteps = 4;

    /// <summary>
    /// The graph used for rollouts by default: the GQA contrib graph (faster on CPU, see <c>rlhf bench export</c>) when
    /// the head size allows it (a multiple of 16), else the plain graph.
    /// </summary>
    public static GraphKind DefaultGraph(ModelConfig cfg) => cfg.HeadDim % 16 == 0 ? GraphKind.ContribGqa : GraphKind.Plain;

    /// <summary>
    /// Exports a causal LM and (when it is on the CPU in float32 and the graph holds its weights) measures parity; a graph
    /// that takes its weights as inputs (<see cref="WeightPlacement.Inputs"/>) is checked where it is fed (the GenAI engine's tests).
    /// </summary>
    public static ExportResult ExportPolicy(LlamaForCausalLM model, string outFolder, GraphKind graph, ExportOptions options, bool parity = true)
    {
        ExportResult result;
        using (var weights = ModelWeights.Of(model))   // LoRA merged: rollouts and serving read plain weights
            result = PolicyExport.Export(model.Config, weights.State, outFolder, graph, options);
        return !parity || options.Weights == WeightPlacement.Inputs ? result : WithPolicyParity(model, result);
    }

    /// <summary>
    /// <paramref name="result"/> with ORT-vs-TorchSharp parity of the exported policy recorded in its manifest (prefill and
    /// decode logits, right padding), when <paramref name="model"/> is on the CPU in float32; with
    /// <paramref name="adapter"/> (a LoRA-input graph) the adapter is fed and the model keeps its adapters on.
    /// </summary>
    internal static ExportResult WithPolicyParity(LlamaForCausalLM model, ExportResult result,
        IReadOnlyDictionary<string, Rlhf.Inference.Rollout.WeightBuffer>? adapter = null, string? adapterName = null)
    {
        if (!OnCpuFloat32(model)) return result;
        var figure = WithEval(model, () =>
        {
            var p = OnnxParity.Policy(model, result.Folder, ParityLengths, ParitySteps, leftPad: false, seed: 1234, adapter: adapter);
            return new ParityFigure(p.Max, $"{ParityLengths.Length} right-padded rows (lengths {string.Join(", ", ParityLengths)})" +
                                           (adapter is null ? "" : $" with {adapterName} fed") +
                                           $": prefill {p.Prefill:E2}, {ParitySteps} decode steps {p.Decode:E2} (logits)",
                                           adapter is null ? "TorchSharp cpu float32" : "TorchSharp cpu float32, adapters on");
        });
        return Record(result, figure);
    }

    /// <summary>Exports a reward or value model and measures parity of rewards and values (left and right padding).</summary>
    public static ExportResult ExportReward(LlamaForSequenceClassification model, string outFolder, ModelKind kind, ExportOptions options, bool parity = true)
    {
        ExportResult result;
        using (var weights = ModelWeights.Of(model))
            result = PolicyExport.ExportReward(model.Config, weights.State, outFolder, kind, options);
        if (!parity || !OnCpuFloat32(model)) return result;
        double diff = WithEval(model, () => OnnxParity.Reward(model, result.Folder, ParityLengths, seed: 1234));
        return Record(result, new ParityFigure(diff, $"{ParityLengths.Length} rows (lengths {string.Join(", ", ParityLengths)}), left and right padding (rewards, values)",
            "TorchSharp cpu float32"));
    }

    /// <summary>
    /// <c>rlhf export</c>: loads a HF folder (llama/qwen2/mistral; for reward/value it must hold <c>score.weight</c>) on
    /// the CPU in float32 and exports it with parity. Tokenizer files of the folder are copied.
    /// <para>With <paramref name="adapterFolder"/> (a PEFT causal-LM adapter of this base) the base is exported as the
    /// GroupQueryAttention graph with LoRA inputs and the adapter as <see cref="LoraAdapterExport.AdapterFile"/> beside it
    /// (<see cref="LoraAdapterExport"/>), for ONNX Runtime's and GenAI's adapter APIs; parity is measured with the adapter fed.</para>
    /// </summary>
    public static ExportResult FromHfFolder(string modelFolder, string outFolder, ModelKind kind, GraphKind? graph, bool overwrite,
        WeightPlacement weights = WeightPlacement.Initializers, RolloutPrecision precision = RolloutPrecision.Fp32, string? adapterFolder = null)
    {
        if (!Directory.Exists(modelFolder)) throw new DirectoryNotFoundException($"Model folder {modelFolder} does not exist.");
        if (!HfFolder.HasWeights(modelFolder))
            throw new FileNotFoundException($"{modelFolder} has no model.safetensors or model.safetensors.index.json (a Hugging Face model folder is expected).");
        if (weights == WeightPlacement.Inputs && kind != ModelKind.Policy)
            throw new ArgumentException("--weights inputs applies to policies (rollout engines feed them); reward and value models keep their initializers.");
        if (precision != RolloutPrecision.Fp32 && (kind != ModelKind.Policy || weights == WeightPlacement.Inputs))
            throw new ArgumentException("--precision int8 applies to policies with their weights as initializers (our ort engine's graph).");
        var options = new ExportOptions { TokenizerFolder = modelFolder, Overwrite = overwrite, Stage = "export", Parent = modelFolder, Weights = weights, Precision = precision };
        if (adapterFolder is not null)
        {
            if (kind != ModelKind.Policy || graph == GraphKind.Plain || weights == WeightPlacement.Inputs)
                throw new ArgumentException("--adapter exports a policy as the gqa graph with its weights as initializers (the adapter's factors are the graph inputs).");
            if (!File.Exists(Path.Combine(adapterFolder, PeftAdapter.ConfigFile)))
                throw new FileNotFoundException($"{adapterFolder} has no {PeftAdapter.ConfigFile} (a PEFT adapter folder, such as a LoRA run's adapter/, is expected).");
            using var adapted = LlamaForCausalLM.FromPretrained(modelFolder, torch.CPU, ScalarType.Float32);
            if (DefaultGraph(adapted.Config) != GraphKind.ContribGqa)
                throw new ArgumentException($"--adapter needs the gqa graph, and this model's head_dim {adapted.Config.HeadDim} is not a multiple of 16.");
            var lora = adapted.AttachLora(PeftAdapter.ReadSettings(adapterFolder), 0, modelFolder);
            PeftAdapter.Load(adapterFolder, lora, new Dictionary<string, Tensor>());
            return LoraAdapterExport.Export(adapted, outFolder, options);
        }
        if (kind == ModelKind.Policy)
        {
            using var model = LlamaForCausalLM.FromPretrained(modelFolder, torch.CPU, ScalarType.Float32);
            return ExportPolicy(model, outFolder, graph ?? DefaultGraph(model.Config), options);
        }
        if (graph == GraphKind.ContribGqa) throw new ArgumentException("Reward and value models are exported with the plain graph only (no KV cache); drop --graph gqa.");
        LlamaForSequenceClassification rm;
        try { rm = LlamaForSequenceClassification.FromPretrained(modelFolder, torch.CPU, ScalarType.Float32); }
        catch (InvalidDataException e) when (e.Message.Contains("Missing: score.weight", StringComparison.Ordinal))
        {
            throw new InvalidDataException($"{modelFolder} has no score.weight: --kind {ExportNames.Name(kind)} needs a reward/value model " +
                                           "(LlamaForSequenceClassification, e.g. the output of `rlhf rm`); export a causal LM with --kind policy.", e);
        }
        using (rm) return ExportReward(rm, outFolder, kind, options);
    }

    /// <summary>
    /// The export at the end of a training stage: <c>{stageOut}/onnx</c>, replacing an earlier one, default graph,
    /// tokenizer files from <paramref name="stageOut"/>, manifest stage <paramref name="stage"/>.
    /// </summary>
    public static ExportResult AfterStage(LlamaForCausalLM model, string stageOut, string stage) =>
        ExportPolicy(model, Path.Combine(stageOut, OnnxFolderName), DefaultGraph(model.Config),
            new ExportOptions { TokenizerFolder = stageOut, Overwrite = true, Stage = stage, Parent = stageOut });

    /// <summary>Reward-model variant of <see cref="AfterStage(LlamaForCausalLM, string, string)"/>.</summary>
    public static ExportResult AfterStage(LlamaForSequenceClassification model, string stageOut, string stage, ModelKind kind = ModelKind.Reward) =>
        ExportReward(model, Path.Combine(stageOut, OnnxFolderName), kind,
            new ExportOptions { TokenizerFolder = stageOut, Overwrite = true, Stage = stage, Parent = stageOut });

    static ExportResult Record(ExportResult result, ParityFigure figure)
    {
        var manifest = result.Manifest with { Parity = figure };
        manifest.Save(result.Folder);
        return result with { Manifest = manifest };
    }

    static bool OnCpuFloat32(nn.Module m) =>
        m.parameters().All(p => p.device.type == DeviceType.CPU && p.dtype == ScalarType.Float32);

    /// <summary>Runs <paramref name="body"/> with <paramref name="m"/> in eval mode and float32 arithmetic (what the exported graph computes), then restores both.</summary>
    static T WithEval<T>(nn.Module m, Func<T> body)
    {
        bool wasTraining = m.training;
        var mixed = m as IMixedPrecision;
        var precision = mixed?.Precision;
        m.eval();
        if (mixed is not null) mixed.Precision = Precision.Fp32;
        try { return body(); }
        finally
        {
            m.train(wasTraining);
            if (mixed is not null) mixed.Precision = precision!.Value;
        }
    }
}
