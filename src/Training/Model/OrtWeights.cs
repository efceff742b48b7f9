using Rlhf.Export.Onnx;
using Rlhf.Inference.Rollout;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>
/// A frozen float32 CPU copy of a <see cref="LlamaForCausalLM"/>'s weights in the layout the ONNX decoder stores
/// (HF names; projections transposed to [in, out] as <see cref="LlamaGraph.IsStoredTransposed"/> says; optionally
/// q/k/v packed into <c>qkv_proj</c> for the GroupQueryAttention graph), exposed as <see cref="WeightBuffer"/>s that
/// point at the tensors' memory. Hand it to <see cref="RolloutEngine.UpdateWeights"/> as the owner: the engine
/// keeps it alive while its session reads the memory and disposes it at the next update. The copy decouples the
/// engine from the optimiser's in-place updates of the live parameters.
/// </summary>
public sealed class OrtWeights : IDisposable
{
    readonly List<Tensor> _tensors = [];
    readonly Dictionary<string, WeightBuffer> _buffers = new(StringComparer.Ordinal);

    /// <summary>Initializer name -> buffer.</summary>
    public IReadOnlyDictionary<string, WeightBuffer> Buffers => _buffers;

    /// <summary>Bytes held.</summary>
    public long Bytes => _buffers.Values.Sum(b => b.ByteLength);

    /// <summary>
    /// Copies the weights of <paramref name="model"/> (any device/dtype; LoRA adapters merged) the decoder graph reads. With
    /// <paramref name="int8"/> (the int8 rollout graph, packed q/k/v) every projection and the LM head (the embedding when
    /// tied) go as <see cref="Int8MatMul.Quantize"/>'s int8 weight and float32 scales instead of float32.
    /// </summary>
    public static OrtWeights From(LlamaForCausalLM model, bool packedQkv = false, bool int8 = false)
    {
        if (int8 && !packedQkv) throw new ArgumentException("int8 rollout graphs are GroupQueryAttention graphs: pass packedQkv too.");
        var cfg = model.Config;
        var result = new OrtWeights();
        using var noGrad = torch.no_grad();
        using var weights = ModelWeights.Of(model);   // LoRA: W + (α/r)·B A, the function the actor computes
        var state = weights.State;
        foreach (var (name, shape) in LlamaGraph.ExpectedShapes(cfg))
        {
            if (packedQkv && name.Contains(".self_attn.", StringComparison.Ordinal) &&
                (name.Contains("q_proj", StringComparison.Ordinal) || name.Contains("k_proj", StringComparison.Ordinal) || name.Contains("v_proj", StringComparison.Ordinal)))
                continue;
            if (!state.TryGetValue(name, out var t)) throw new InvalidOperationException($"The model has no weight '{name}'.");
            result.Add(name, t, LlamaGraph.IsStoredTransposed(name), int8);
        }
        if (int8 && cfg.TieWordEmbeddings) result.Add("lm_head.weight", state["model.embed_tokens.weight"], transpose: true, int8: true);
        if (packedQkv)
        {
            for (int i = 0; i < cfg.NumHiddenLayers; i++)
            {
                string p = $"model.layers.{i}.self_attn.";
                using var w = torch.cat([state[p + "q_proj.weight"], state[p + "k_proj.weight"], state[p + "v_proj.weight"]], 0);
                result.Add(p + "qkv_proj.weight", w, transpose: true, int8);
                if (cfg.QkvBias)
                {
                    using var bias = torch.cat([state[p + "q_proj.bias"], state[p + "k_proj.bias"], state[p + "v_proj.bias"]], 0);
                    result.Add(p + "qkv_proj.bias", bias, transpose: false, int8: false);
                }
            }
        }
        return result;
    }

    static bool IsProjection(string name) => name.EndsWith("_proj.weight", StringComparison.Ordinal) || name == "lm_head.weight";

    void Add(string name, Tensor source, bool transpose, bool int8)
    {
        if (!int8 || !IsProjection(name))
        {
            Add(name, source, transpose);
            return;
        }
        using var stored = transpose ? source.detach().t() : source.detach().alias();
        var (q, scale) = Int8MatMul.Quantize(stored);
        Keep(Int8MatMul.QuantizedName(name), q, WeightElement.Int8);
        Keep(Int8MatMul.ScaleName(name), scale, WeightElement.Float32);
    }

    void Add(string name, Tensor source, bool transpose)
    {
        Tensor t;
        using (torch.NewDisposeScope())
        {
            var x = source.detach().to(ScalarType.Float32, torch.CPU);
            // One copy either way: the transpose materialised by contiguous(), or a clone of the already contiguous tensor.
            t = (transpose ? x.t().contiguous() : x.clone()).MoveToOuterDisposeScope();
        }
        Keep(name, t, WeightElement.Float32);
    }

    /// <summary>Takes ownership of the contiguous CPU tensor <paramref name="t"/> and exposes its memory as <paramref name="name"/>.</summary>
    unsafe void Keep(string name, Tensor t, WeightElement element)
    {
        _tensors.Add(t);
        nint ptr;
        fixed (byte* p = t.bytes) ptr = (nint)p;
        _buffers[name] = new WeightBuffer(name, t.shape, Pointer: ptr, Element: element);
    }

    /// <summary>Frees the copies (only after the engine no longer uses them).</summary>
    public void Dispose()
    {
        foreach (var t in _tensors) t.Dispose();
        _tensors.Clear();
        _buffers.Clear();
    }
}
