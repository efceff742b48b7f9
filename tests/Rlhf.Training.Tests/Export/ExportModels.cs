using Rlhf.Export.Hf;
using Rlhf.Training.Model;
using Rlhf.Training.Tests.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Export;

/// <summary>Configs with head_dim 16 (the GQA graph's minimum) and scrambled models for the export tests.</summary>
internal static class ExportModels
{
    /// <summary>
    /// V=96, H=64, 4 heads of D=16, 2 KV heads (GQA), FFN 128, 2 layers. Variants: llama, qwen2 (q/k/v bias),
    /// llama_bias (attention_bias: q/k/v/o bias), tied (tied embeddings), mha (4 KV heads), mistral.
    /// </summary>
    public static ModelConfig Config(string variant) =>
        Rlhf.Tests.Shared.TinyLlama.Config(variant, headDim: 16, vocab: 96, maxPositions: 64, bos: true);

    /// <summary>Causal LM, every parameter random (biases and norms too), eval mode.</summary>
    public static LlamaForCausalLM Policy(string variant, long seed = 5) => TinyModels.Randomized(Config(variant), seed);

    /// <summary>Sequence classifier, every parameter random, eval mode.</summary>
    public static LlamaForSequenceClassification Reward(string variant, long seed = 6)
    {
        var m = LlamaForSequenceClassification.Create(Config(variant), torch.CPU, ScalarType.Float32, seed);
        TinyModels.Scramble(m, seed);
        m.eval();
        return m;
    }

    /// <summary>A fresh temp folder path (not created).</summary>
    public static string TempPath(string hint) => Path.Combine(Path.GetTempPath(), $"rlhf-export-{hint}-{Guid.NewGuid():N}"[..40]);
}
