using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>
/// Root-mean-square layer norm (Zhang &amp; Sennrich 2019), as HF <c>LlamaRMSNorm</c>:
/// <c>y = weight * (x / sqrt(mean(x², -1) + eps))</c>, the normalisation computed in float32 and cast back
/// before the weight is applied. State dict: <c>weight</c> [H].
/// </summary>
public sealed class RmsNorm : nn.Module<Tensor, Tensor>
{
    readonly Parameter weight;
    readonly double _eps;

    /// <summary>A norm over the last dimension of size <paramref name="size"/>; weight starts at ones.</summary>
    public RmsNorm(long size, double eps, Device? device = null, ScalarType dtype = ScalarType.Float32) : base(nameof(RmsNorm))
    {
        weight = new Parameter(torch.ones(size, dtype, device));
        _eps = eps;
        RegisterComponents();
    }

    /// <summary>x [..., H] -> [..., H].</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var h = x.to(ScalarType.Float32);
        var variance = h.pow(2).mean([-1L], keepdim: true);
        h = h * torch.rsqrt(variance + _eps);
        return scope.MoveToOuter(weight * h.to(x.dtype));
    }
}
