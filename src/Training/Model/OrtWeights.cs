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
    public long Bytes => _buffers.Values.Sum(b => b.Count * sizeof(float));

    /// <summary>Copies the weights of <paramref name="model"/> (any device/dtype) the decoder graph reads.</summary>
    public static OrtWeights From(LlamaForCausalLM model, bool packedQkv = false)
    {
        var cfg = model.Config;
        var result = new OrtWeights();
        using var noGrad = torch.no_grad();
        var state = model.state_dict();
        foreach (var (name, shape) in LlamaGraph.ExpectedShapes(cfg))
        {
            if (packedQkv && name.Contains(".self_attn.", StringComparison.Ordinal) &&
                (name.Contains("q_proj", StringComparison.Ordinal) || name.Contains("k_proj", StringComparison.Ordinal) || name.Contains("v_proj", StringComparison.Ordinal)))
                continue;
            if (!state.TryGetValue(name, out var t)) throw new InvalidOperationException($"The model has no weight '{name}'.");
            result.Add(name, t, LlamaGraph.IsStoredTransposed(name));
        }
        if (packedQkv)
        {
            for (int i = 0; i < cfg.NumHiddenLayers; i++)
            {
                string p = $"model.layers.{i}.self_attn.";
                using var w = torch.cat([state[p + "q_proj.weight"], state[p + "k_proj.weight"], state[p + "v_proj.weight"]], 0);
                result.Add(p + "qkv_proj.weight", w, transpose: true);
                if (cfg.QkvBias)
                {
                    using var bias = torch.cat([state[p + "q_proj.bias"], state[p + "k_proj.bias"], state[p + "v_proj.bias"]], 0);
                    result.Add(p + "qkv_proj.bias", bias, transpose: false);
                }
            }
        }
        return result;
    }

    unsafe void Add(string name, Tensor source, bool transpose)
    {
        Tensor t;
        using (torch.NewDisposeScope())
        {
            var x = source.detach().to(ScalarType.Float32, torch.CPU);
            // One copy either way: the transpose materialised by contiguous(), or a clone of the already contiguous tensor.
            t = (transpose ? x.t().contiguous() : x.clone()).MoveToOuterDisposeScope();
        }
        _tensors.Add(t);
        nint ptr;
        fixed (byte* p = t.bytes) ptr = (nint)p;
        _buffers[name] = new WeightBuffer(name, t.shape, Pointer: ptr);
    }

    /// <summary>Frees the copies (only after the engine no longer uses them).</summary>
    public void Dispose()
    {
        foreach (var t in _tensors) t.Dispose();
        _tensors.Clear();
        _buffers.Clear();
    }
}
