using Rlhf.Export.Hf;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>
/// Grouped-query self-attention with RoPE (HF <c>LlamaAttention</c>/<c>Qwen2Attention</c>). State dict:
/// <c>q_proj</c> [heads·D, H], <c>k_proj</c>/<c>v_proj</c> [Hkv·D, H] (bias when <see cref="ModelConfig.QkvBias"/>),
/// <c>o_proj</c> [H, heads·D] (bias when <see cref="ModelConfig.OutputBias"/>).
/// </summary>
public sealed class LlamaAttention : nn.Module
{
    readonly Linear q_proj;
    readonly Linear k_proj;
    readonly Linear v_proj;
    readonly Linear o_proj;
    readonly int _heads;
    readonly int _kvHeads;
    readonly int _headDim;
    readonly double _dropout;
    readonly Dictionary<string, LoraLinear> _lora = new(StringComparer.Ordinal);   // not registered: the state dict keeps the base's HF names

    /// <summary>Creates the projections (TorchSharp default init; the model re-initialises them).</summary>
    public LlamaAttention(ModelConfig c, Device? device, ScalarType dtype) : base(nameof(LlamaAttention))
    {
        _heads = c.NumAttentionHeads;
        _kvHeads = c.NumKeyValueHeads;
        _headDim = c.HeadDim;
        _dropout = c.AttentionDropout;
        q_proj = nn.Linear(c.HiddenSize, _heads * _headDim, c.QkvBias, device, dtype);
        k_proj = nn.Linear(c.HiddenSize, _kvHeads * _headDim, c.QkvBias, device, dtype);
        v_proj = nn.Linear(c.HiddenSize, _kvHeads * _headDim, c.QkvBias, device, dtype);
        o_proj = nn.Linear(_heads * _headDim, c.HiddenSize, c.OutputBias, device, dtype);
        RegisterComponents();
    }

    /// <summary>Adds an adapter to each of q/k/v/o_proj named in the settings (<paramref name="prefix"/> = this module's HF path + ".").</summary>
    internal void AttachLora(LoraAdapters adapters, string prefix, torch.Generator gen)
    {
        foreach (var (name, layer) in new[] { ("q_proj", q_proj), ("k_proj", k_proj), ("v_proj", v_proj), ("o_proj", o_proj) })
            if (adapters.Settings.TargetModules.Contains(name)) _lora[name] = adapters.Add(prefix + name, layer, gen);
    }

    Tensor Proj(string name, Linear layer, Tensor x, ScalarType? compute) =>
        _lora.TryGetValue(name, out var a) ? a.Forward(layer, x, compute, training) : MixedPrecision.Linear(layer, x, compute);

    /// <summary>
    /// x [B, S, H]; cos/sin [B, S, D]; mask [B, 1, S, T] bool (true = may attend; T = cached + S);
    /// cache: when given, this layer's keys/values are appended and attention covers all T positions.
    /// compute: the dtype of the four projections (null = x's; see <see cref="Precision.Bf16"/>); q, k and v return to
    /// x's dtype, in which RoPE (cos/sin must be in it) and attention run. Returns [B, S, H] in x's dtype. Attention
    /// dropout applies in training mode only.
    /// </summary>
    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor mask, KvCache? cache, int layer, ScalarType? compute = null)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], s = x.shape[1];
        var xc = MixedPrecision.Cast(x, compute);
        // Under mixed precision q, k and v return to x's dtype (float32) for RoPE and attention: libtorch's CPU attention
        // backward runs about twice slower in bfloat16 than in float32 (measured at the tiny and small configs' shapes).
        Tensor Heads(Tensor y, long heads) => MixedPrecision.Cast(y, x.dtype).view(b, s, heads, _headDim).transpose(1, 2);
        Tensor q, k, v;
        if (_lora.Count == 0)
        {
            // one product x·[Wq; Wk; Wv]ᵀ [B, S, (heads + 2·Hkv)·D], cut into q, k and v
            var qkv = MixedPrecision.FusedLinear([q_proj, k_proj, v_proj], xc, compute)
                .split([_heads * _headDim, _kvHeads * _headDim, _kvHeads * _headDim], -1);
            (q, k, v) = (Heads(qkv[0], _heads), Heads(qkv[1], _kvHeads), Heads(qkv[2], _kvHeads));
        }
        else
            (q, k, v) = (Heads(Proj("q_proj", q_proj, xc, compute), _heads), Heads(Proj("k_proj", k_proj, xc, compute), _kvHeads),
                Heads(Proj("v_proj", v_proj, xc, compute), _kvHeads));
        // q [B, heads, S, D]; k, v [B, Hkv, S, D]
        q = Rope.Apply(q, cos, sin);
        k = Rope.Apply(k, cos, sin);
        if (cache is not null) (k, v) = cache.Append(layer, k, v);                   // [B, Hkv, T, D]
        if (_kvHeads != _heads)
        {
            k = k.repeat_interleave(_heads / _kvHeads, dim: 1);                       // [B, heads, T, D]
            v = v.repeat_interleave(_heads / _kvHeads, dim: 1);
        }
        var o = nn.functional.scaled_dot_product_attention(q, k, v, mask, training ? _dropout : 0.0);   // [B, heads, S, D]
        o = o.transpose(1, 2).reshape(b, s, _heads * _headDim);
        var y = Proj("o_proj", o_proj, o, compute);
        return scope.MoveToOuter(y.dtype == x.dtype ? y : y.to(x.dtype));
    }
}
