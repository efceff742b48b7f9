using Rlhf.Export.Hf;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>
/// SwiGLU feed-forward (Shazeer 2020): <c>down_proj(silu(gate_proj(x)) · up_proj(x))</c>, no biases.
/// State dict: <c>gate_proj</c>/<c>up_proj</c> [I, H], <c>down_proj</c> [H, I].
/// </summary>
public sealed class LlamaMlp : nn.Module<Tensor, Tensor>
{
    readonly Linear gate_proj;
    readonly Linear up_proj;
    readonly Linear down_proj;

    /// <summary>Creates the three projections.</summary>
    public LlamaMlp(ModelConfig c, Device? device, ScalarType dtype) : base(nameof(LlamaMlp))
    {
        gate_proj = nn.Linear(c.HiddenSize, c.IntermediateSize, false, device, dtype);
        up_proj = nn.Linear(c.HiddenSize, c.IntermediateSize, false, device, dtype);
        down_proj = nn.Linear(c.IntermediateSize, c.HiddenSize, false, device, dtype);
        RegisterComponents();
    }

    /// <summary>x [B, S, H] -> [B, S, H].</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var h = nn.functional.silu(gate_proj.forward(x)) * up_proj.forward(x);
        return scope.MoveToOuter(down_proj.forward(h));
    }
}
