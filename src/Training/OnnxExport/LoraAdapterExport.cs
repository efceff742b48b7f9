using Rlhf.Export;
using Rlhf.Export.Onnx;
using Rlhf.Training.Model;
using static TorchSharp.torch;

namespace Rlhf.Training.OnnxExport;

/// <summary>
/// A LoRA policy as ONNX Runtime (GenAI) runs adapters: the base model exported once as the GroupQueryAttention graph
/// with LoRA inputs (<see cref="LlamaContribGraph.Build"/>), and the adapter as an <c>.onnx_adapter</c> file
/// (<see cref="OnnxAdapterFile"/>) that <c>OrtLoraAdapter</c> or GenAI's <c>Adapters.LoadAdapter</c> feeds into those inputs.
/// </summary>
public static class LoraAdapterExport
{
    /// <summary>The adapter's file name inside an exported folder.</summary>
    public const string AdapterFile = "adapter" + OnnxAdapterFile.Extension;

    /// <summary>
    /// The adapters as the graph's inputs: PEFT's A [r, in] and B [out, r] become A' = Aᵀ [in, r] and B' = (α/r)·Bᵀ
    /// [r, out], so that x·W'ᵀ + (x·A')·B' = x·(W + (α/r)·B·A)ᵀ, the merged projection.
    /// </summary>
    public static List<AdapterTensor> Tensors(LoraAdapters lora)
    {
        var result = new List<AdapterTensor>(2 * lora.Items.Count);
        using var _ = no_grad();
        foreach (var (path, adapter) in lora.Items)
        {
            using var a = adapter.A.detach().to(ScalarType.Float32).cpu().t().contiguous();                    // [in, r]
            using var b = (adapter.B.detach().to(ScalarType.Float32).cpu() * adapter.Scale).t().contiguous();    // [r, out]
            result.Add(new AdapterTensor(path + ".lora_A.weight", a.shape, a.data<float>().ToArray()));
            result.Add(new AdapterTensor(path + ".lora_B.weight", b.shape, b.data<float>().ToArray()));
        }
        return result;
    }

    /// <summary>The adapter tensors as the weight buffers a rollout engine takes (name -> array, no copy).</summary>
    public static Dictionary<string, Inference.Rollout.WeightBuffer> Buffers(IEnumerable<AdapterTensor> tensors) =>
        tensors.ToDictionary(t => t.Name, t => new Inference.Rollout.WeightBuffer(t.Name, t.Dims, t.Data), StringComparer.Ordinal);

    /// <summary>
    /// The fingerprint of <paramref name="model"/>'s base (<see cref="LoraBase.Fingerprint"/> of its unmerged weights), the
    /// <c>rlhf.lora_base</c> its LoRA-input export records; computed once per adapter set (the base is frozen under LoRA).
    /// </summary>
    public static string BaseFingerprint(LlamaForCausalLM model)
    {
        var lora = model.Lora ?? throw new InvalidOperationException("The model carries no LoRA adapters.");
        if (lora.BaseFingerprint is { } known) return known;
        using var weights = ModelWeights.Of(model, merged: false);
        return lora.BaseFingerprint = LoraBase.Fingerprint(weights.State);
    }

    /// <summary>
    /// Exports <paramref name="model"/>'s base weights (adapters not merged) as the LoRA-input graph into
    /// <paramref name="outFolder"/>, then writes its adapters beside it as <see cref="AdapterFile"/>.
    /// </summary>
    /// <remarks>
    /// With <paramref name="parity"/> (and the model on the CPU in float32) the folder's manifest records ORT-vs-TorchSharp
    /// parity of the adapted model: the graph with the adapter fed against the TorchSharp model with its adapters on.
    /// </remarks>
    public static ExportResult Export(LlamaForCausalLM model, string outFolder, ExportOptions options, bool parity = true)
    {
        var lora = model.Lora ?? throw new InvalidOperationException("The model carries no LoRA adapters to export.");
        ExportResult result;
        using (var weights = ModelWeights.Of(model, merged: false))
            result = PolicyExport.Export(model.Config, weights.State, outFolder, GraphKind.ContribGqa,
                options with { LoraInputs = true, LoraBaseFingerprint = BaseFingerprint(model) });   // the fingerprint adapter pushes will state, computed once
        var tensors = Tensors(lora);
        OnnxAdapterFile.Write(Path.Combine(result.Folder, AdapterFile), tensors);
        return parity ? ExportStage.WithPolicyParity(model, result, Buffers(tensors), AdapterFile) : result;
    }
}
