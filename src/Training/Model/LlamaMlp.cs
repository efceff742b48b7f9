using Rlhf.Export.Hf;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>
/// SwiGLU feed-forward (Shazeer 2020): <c>down_proj(silu(gate_proj(x)) · up_proj(x))</c>, no biases.
/// State dict: <c>gate_proj</c>/<c>up_proj</c> [I, H], <c>down_proj</c> [H, I].
/// </summary>
public sealed class LlamaMlp : nn.Module
{
    readonly Linear gate_proj;
    readonly Linear up_proj;
    readonly Linear down_proj;
    readonly Dictionary<string, LoraLinear> _lora = new(StringComparer.Ordinal);   // not registered: the state dict keeps the base's HF names

    /// <summary>Creates the three projections.</summary>
    public LlamaMlp(ModelConfig c, Device? device, ScalarType dtype) : base(nameof(LlamaMlp))
    {
        gate_proj = nn.Linear(c.HiddenSize, c.IntermediateSize, false, device, dtype);
        up_proj = nn.Linear(c.HiddenSize, c.IntermediateSize, false, device, dtype);
        down_proj = nn.Linear(c.IntermediateSize, c.HiddenSize, false, device, dtype);
        RegisterComponents();
    }

    /// <summary>Adds an adapter to each of gate/up/down_proj named in the settings (<paramref name="prefix"/> = this module's HF path + ".").</summary>
    internal void AttachLora(LoraAdapters adapters, string prefix, torch.Generator gen)
    {
        foreach (var (name, layer) in new[] { ("gate_proj", gate_proj), ("up_proj", up_proj), ("down_proj", down_proj) })
            if (adapters.Settings.TargetModules.Contains(name)) _lora[name] = adapters.Add(prefix + name, layer, gen);
    }

    Tensor Proj(string name, Linear layer, Tensor x, ScalarType? compute) =>
        _lora.TryGetValue(name, out var a) ? a.Forward(layer, x, compute, training) : MixedPrecision.Linear(layer, x, compute);

    /// <summary>x [B, S, H] -> [B, S, H] in x's dtype; the projections run in <paramref name="compute"/> (null = x's dtype).</summary>
    public Tensor Forward(Tensor x, ScalarType? compute = null)
    {
        using var scope = torch.NewDisposeScope();
        var xc = MixedPrecision.Cast(x, compute);
        Tensor gate, up;
        if (_lora.Count == 0)
        {
            var gu = MixedPrecision.FusedLinear([gate_proj, up_proj], xc, compute).chunk(2, -1);   // one product x·[Wg; Wu]ᵀ [B, S, 2I]
            (gate, up) = (gu[0], gu[1]);
        }
        else
            (gate, up) = (Proj("gate_proj", gate_proj, xc, compute), Proj("up_proj", up_proj, xc, compute));
        var h = nn.functional.silu(gate) * up;
        var y = Proj("down_proj", down_proj, h, compute);
        return scope.MoveToOuter(y.dtype == x.dtype ? y : y.to(x.dtype));
    }
}
