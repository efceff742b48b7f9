using Rlhf.Export.Hf;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>
/// Pre-norm decoder block: <c>h = x + drop(attn(norm1(x)))</c>, <c>y = h + drop(mlp(norm2(h)))</c>, where drop is the
/// residual dropout (training mode only). State dict: <c>self_attn.*</c>, <c>mlp.*</c>, <c>input_layernorm.weight</c>,
/// <c>post_attention_layernorm.weight</c>.
/// </summary>
public sealed class LlamaDecoderLayer : nn.Module
{
    readonly LlamaAttention self_attn;
    readonly LlamaMlp mlp;
    readonly RmsNorm input_layernorm;
    readonly RmsNorm post_attention_layernorm;
    readonly double _residualDropout;

    /// <summary>Creates one block.</summary>
    public LlamaDecoderLayer(ModelConfig c, Device? device, ScalarType dtype) : base(nameof(LlamaDecoderLayer))
    {
        self_attn = new LlamaAttention(c, device, dtype);
        mlp = new LlamaMlp(c, device, dtype);
        input_layernorm = new RmsNorm(c.HiddenSize, c.RmsNormEps, device, dtype);
        post_attention_layernorm = new RmsNorm(c.HiddenSize, c.RmsNormEps, device, dtype);
        _residualDropout = c.ResidualDropout;
        RegisterComponents();
    }

    /// <summary>Adds the adapters of this block's projections (<paramref name="prefix"/> = <c>model.layers.{i}.</c>).</summary>
    internal void AttachLora(LoraAdapters adapters, string prefix, torch.Generator gen)
    {
        self_attn.AttachLora(adapters, prefix + "self_attn.", gen);
        mlp.AttachLora(adapters, prefix + "mlp.", gen);
    }

    /// <summary>
    /// x [B, S, H]; cos/sin [B, S, D] (in x's dtype); mask [B, 1, S, T] bool -> [B, S, H]. The residual stream, norms,
    /// RoPE and attention stay in x's dtype; the projections and the MLP run in <paramref name="compute"/> (null = x's dtype).
    /// </summary>
    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor mask, KvCache? cache, int layer, ScalarType? compute = null)
    {
        using var scope = torch.NewDisposeScope();
        var r = self_attn.Forward(input_layernorm.forward(x), cos, sin, mask, cache, layer, compute);
        var h = x + nn.functional.dropout(r, _residualDropout, training);
        r = mlp.Forward(post_attention_layernorm.forward(h), compute);
        return scope.MoveToOuter(h + nn.functional.dropout(r, _residualDropout, training));
    }
}
