using Rlhf.Export.Hf;

namespace Rlhf.Tests.Shared;

/// <summary>
/// The tiny Llama-family architecture every test project builds its models from (linked into each test project):
/// 4 attention heads of <c>headDim</c>, 2 KV heads (grouped-query) unless <c>mha</c>, FFN 2·H, 2 layers.
/// Variants: llama, qwen2 (q/k/v bias), llama_bias (attention_bias: q/k/v/o bias), tied (tied embeddings),
/// mha (4 KV heads), mistral; architectures with longer-context tricks: llama3 (rope_scaling llama3: factor 8, low 1,
/// high 8, original context 256, so with θ = 10⁴ the frequencies fall in all three bands), linear (rope_scaling linear,
/// factor 4), mistral_window (sliding window 5 in every layer), qwen2_window (q/k/v bias; window 5 from layer 1 on, as
/// Qwen2's max_window_layers), head_dim (head_dim 2·headDim ≠ H / heads, as Gemma-style and Qwen3 configs set it).
/// </summary>
internal static class TinyLlama
{
    /// <summary>H = 4·<paramref name="headDim"/>; special tokens pad 0, BOS 1 (when asked), EOS 2.</summary>
    public static ModelConfig Config(string variant = "llama", int headDim = 8, int vocab = 50, int layers = 2, int maxPositions = 128,
                                     bool tied = false, bool attentionBias = false, bool bos = false) => new()
    {
        ModelType = variant switch { "qwen2" or "qwen2_window" => "qwen2", "mistral" or "mistral_window" => "mistral", _ => "llama" },
        VocabSize = vocab,
        HiddenSize = 4 * headDim,
        IntermediateSize = 8 * headDim,
        NumHiddenLayers = layers,
        NumAttentionHeads = 4,
        NumKeyValueHeads = variant == "mha" ? 4 : 2,
        MaxPositionEmbeddings = maxPositions,
        RopeTheta = 10000.0,
        RmsNormEps = 1e-6,
        TieWordEmbeddings = tied || variant == "tied",
        AttentionBias = attentionBias || variant == "llama_bias",
        EosTokenIds = [2],
        BosTokenId = bos ? 1 : null,
        PadTokenId = 0,
        RopeScaling = variant switch
        {
            "llama3" => new RopeScaling { Type = RopeScalingType.Llama3, Factor = 8, LowFreqFactor = 1, HighFreqFactor = 8, OriginalMaxPositionEmbeddings = 256 },
            "linear" => new RopeScaling { Type = RopeScalingType.Linear, Factor = 4 },
            _ => null,
        },
        HeadDimOverride = variant == "head_dim" ? 2 * headDim : null,
        SlidingWindow = variant is "mistral_window" or "qwen2_window" ? 5 : null,
        FirstSlidingLayer = variant == "qwen2_window" ? 1 : 0,
    };
}
