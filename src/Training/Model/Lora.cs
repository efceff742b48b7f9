using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>
/// LoRA settings of a stage (config keys <c>lora_rank</c>, <c>lora_alpha</c>, <c>lora_dropout</c>,
/// <c>lora_target_modules</c> in each stage; TRL's <c>peft_config</c>, OpenRLHF's <c>--lora_rank</c>/<c>--lora_alpha</c>/
/// <c>--target_modules</c>). Rank 0 = off (full fine-tuning).
/// </summary>
/// <param name="Rank">r, the adapter's inner size.</param>
/// <param name="Alpha">α; the update is scaled by α/r.</param>
/// <param name="Dropout">Dropout on the adapter's input (training mode only).</param>
/// <param name="TargetModules">PEFT names of the adapted projections (<see cref="Lora.ModuleNames"/>).</param>
public sealed record LoraSettings(int Rank, double Alpha, double Dropout, IReadOnlyList<string> TargetModules)
{
    /// <summary>The default targets: every linear layer of the decoder (OpenRLHF's <c>all-linear</c>, QLoRA's choice).</summary>
    public static readonly IReadOnlyList<string> AllLinear = Lora.ModuleNames;

    /// <summary>True when adapters are in use (rank ≥ 1).</summary>
    public bool Enabled => Rank > 0;

    /// <summary>The update's scale α/r.</summary>
    public double Scale => Alpha / Rank;

    /// <summary>What is wrong with the LoRA keys of a stage config (empty when nothing).</summary>
    public static IEnumerable<string> Problems(int rank, double alpha, double dropout, IReadOnlyList<string> targets)
    {
        if (rank < 0) yield return "lora_rank must be ≥ 0 (0 = full fine-tuning)";
        if (rank == 0) yield break;
        if (!(alpha > 0)) yield return "lora_alpha must be > 0";
        if (dropout is < 0 or >= 1) yield return "lora_dropout must be in [0, 1)";
        if (targets.Count == 0) yield return $"lora_target_modules must name at least one of {string.Join(", ", Lora.ModuleNames)}";
        foreach (var t in targets.Where(t => !Lora.ModuleNames.Contains(t)))
            yield return $"lora_target_modules: '{t}' is not one of {string.Join(", ", Lora.ModuleNames)}";
    }
}

/// <summary>
/// The keys every training stage (sft, rm, ppo, dpo) shares for how the model is fine-tuned: LoRA adapters and
/// activation checkpointing. Which models get adapters is the stage's: the SFT model; the RM's and critic's trunk (the
/// score/value head trains fully, as PEFT's modules_to_save); the PPO actor and DPO policy, whose reference is then the
/// base with the adapters off.
/// </summary>
public abstract record FineTuningKeys
{
    /// <summary>LoRA rank r of the stage's adapters (Hu et al. 2021; 0 = full fine-tuning). Base weights frozen; only adapters (and heads) train.</summary>
    public int LoraRank { get; init; }
    /// <summary>LoRA α: the adapter's update is scaled by lora_alpha / lora_rank.</summary>
    public double LoraAlpha { get; init; } = 16;
    /// <summary>Dropout on the adapters' input (training mode only).</summary>
    public double LoraDropout { get; init; }
    /// <summary>Projections that get adapters (PEFT names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj); default all of them.</summary>
    public string[] LoraTargetModules { get; init; } = [.. LoraSettings.AllLinear];
    /// <summary>Recompute each decoder layer's activations in the backward pass instead of keeping them (less memory, about one more forward).</summary>
    public bool GradientCheckpointing { get; init; }

    /// <summary>The LoRA keys as settings (<see cref="LoraSettings.Enabled"/> false at rank 0).</summary>
    public LoraSettings Lora() => new(LoraRank, LoraAlpha, LoraDropout, LoraTargetModules);

    /// <summary>What is wrong with these keys (empty when nothing), for the stage's Validate.</summary>
    protected IEnumerable<string> FineTuningProblems() => LoraSettings.Problems(LoraRank, LoraAlpha, LoraDropout, LoraTargetModules);
}

/// <summary>
/// Low-rank adaptation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3):
/// <c>y = W x + b + (α/r)·B A x</c> with the base W [out, in] frozen and A [r, in], B [out, r] trained. Initialised as
/// PEFT does: A ~ Kaiming-uniform(a = √5), i.e. U(−1/√in, 1/√in), and B = 0, so the adapted model starts equal to the base.
/// </summary>
public static class Lora
{
    /// <summary>The projections that can carry an adapter, by their HF/PEFT names.</summary>
    public static readonly IReadOnlyList<string> ModuleNames = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    /// <summary>
    /// y = x Wᵀ + b + s·(x Aᵀ) Bᵀ: x [..., in], w [out, in], b [out] or null, a [r, in], bm [out, r] -> [..., out].
    /// </summary>
    public static Tensor Forward(Tensor x, Tensor w, Tensor? b, Tensor a, Tensor bm, double scale)
    {
        using var scope = torch.NewDisposeScope();
        return scope.MoveToOuter(nn.functional.linear(x, w, b) + Delta(x, a, bm, scale));
    }

    /// <summary>The adapter's term s·B A x = s·(x Aᵀ) Bᵀ: x [..., in], a [r, in], bm [out, r] -> [..., out] (never forms B A).</summary>
    public static Tensor Delta(Tensor x, Tensor a, Tensor bm, double scale)
    {
        using var scope = torch.NewDisposeScope();
        return scope.MoveToOuter(nn.functional.linear(nn.functional.linear(x, a), bm) * scale);
    }

    /// <summary>The merged weight W' = W + s·B A: w [out, in], a [r, in], bm [out, r] -> [out, in] (a new tensor, no grad).</summary>
    public static Tensor Merge(Tensor w, Tensor a, Tensor bm, double scale)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var delta = torch.matmul(bm.to(ScalarType.Float32), a.to(ScalarType.Float32)) * scale;   // [out, in]
        return scope.MoveToOuter((w.to(ScalarType.Float32) + delta).to(w.dtype));
    }

    /// <summary>The bound 1/√in of PEFT's A init (kaiming_uniform_ with a = √5: gain √(2/(1+5)), bound gain·√(3/in)).</summary>
    public static double InitBound(long inFeatures) => 1.0 / Math.Sqrt(inFeatures);
}

/// <summary>
/// The adapter of one projection: <c>lora_A</c> [r, in] and <c>lora_B</c> [out, r] (PEFT's names). Its parameters are not
/// registered in the model, so the model's state dict keeps the HF names of the base; <see cref="LoraAdapters"/> holds them.
/// </summary>
public sealed class LoraLinear : IDisposable
{
    /// <summary>A [r, in].</summary>
    public Parameter A { get; }
    /// <summary>B [out, r].</summary>
    public Parameter B { get; }
    /// <summary>α/r.</summary>
    public double Scale { get; }
    readonly double _dropout;
    readonly LoraAdapters _owner;

    internal LoraLinear(Linear layer, LoraSettings s, torch.Generator gen, LoraAdapters owner)
    {
        var w = layer.weight!;
        long outF = w.shape[0], inF = w.shape[1];
        using (torch.no_grad())
        {
            // Drawn in float32 on the CPU from the model's generator, so the init does not depend on device or dtype.
            var a = torch.empty([s.Rank, inF], ScalarType.Float32, torch.CPU).uniform_(-Lora.InitBound(inF), Lora.InitBound(inF), gen);
            if (a.dtype != w.dtype || a.device.type != w.device.type)
            {
                var moved = a.to(w.dtype, w.device);
                a.Dispose();
                a = moved;
            }
            A = (Parameter)new Parameter(a, requires_grad: true).DetachFromDisposeScope();
        }
        B = (Parameter)new Parameter(torch.zeros([outF, s.Rank], w.dtype, w.device), requires_grad: true).DetachFromDisposeScope();
        Scale = s.Scale;
        _dropout = s.Dropout;
        _owner = owner;
    }

    /// <summary>
    /// The projection with its adapter: x [..., in] -> [..., out] in the compute dtype (see <see cref="MixedPrecision.Linear"/>);
    /// the base alone while the adapters are switched off (<see cref="LoraAdapters.Enabled"/>). Dropout on the adapter's
    /// input in training mode only, as PEFT.
    /// </summary>
    public Tensor Forward(Linear layer, Tensor x, ScalarType? compute, bool training)
    {
        if (!_owner.Enabled) return MixedPrecision.Linear(layer, x, compute);
        using var scope = torch.NewDisposeScope();
        var xc = MixedPrecision.Cast(x, compute);
        var xd = training && _dropout > 0 ? nn.functional.dropout(xc, _dropout, true) : xc;
        var y = MixedPrecision.Linear(layer, xc, compute) + Lora.Delta(xd, MixedPrecision.Cast(A, compute), MixedPrecision.Cast(B, compute), Scale);
        return scope.MoveToOuter(y);
    }

    /// <summary>Disposes A and B.</summary>
    public void Dispose()
    {
        A.Dispose();
        B.Dispose();
    }
}

/// <summary>
/// The adapters of one model, keyed by the HF module path of their projection (<c>model.layers.0.self_attn.q_proj</c>), in
/// layer order. Trainers take <see cref="Parameters"/> for the optimizer; <see cref="Enabled"/> switches them off to read
/// the base (the reference policy without a second copy of the weights).
/// </summary>
public sealed class LoraAdapters : IDisposable
{
    readonly List<(string Path, LoraLinear Adapter)> _items = [];

    /// <summary>The settings the adapters were made with.</summary>
    public LoraSettings Settings { get; }

    /// <summary>The base model's folder or hub name (PEFT's <c>base_model_name_or_path</c>), when known.</summary>
    public string? BaseModel { get; set; }

    /// <summary>The base's fingerprint once computed (<c>LoraAdapterExport.BaseFingerprint</c>; the base is frozen, so it stays valid).</summary>
    public string? BaseFingerprint { get; set; }

    /// <summary>False: every adapted projection computes its base alone.</summary>
    public bool Enabled { get; set; } = true;

    internal LoraAdapters(LoraSettings settings) => Settings = settings;

    /// <summary>(HF module path, adapter) in registration order.</summary>
    public IReadOnlyList<(string Path, LoraLinear Adapter)> Items => _items;

    internal LoraLinear Add(string path, Linear layer, torch.Generator gen)
    {
        var a = new LoraLinear(layer, Settings, gen, this);
        _items.Add((path, a));
        return a;
    }

    /// <summary>(name, parameter) with names <c>{path}.lora_A.weight</c> / <c>{path}.lora_B.weight</c>, A before B, in layer order.</summary>
    public IEnumerable<(string Name, Parameter Parameter)> NamedParameters() =>
        _items.SelectMany(i => new[] { (i.Path + ".lora_A.weight", i.Adapter.A), (i.Path + ".lora_B.weight", i.Adapter.B) });

    /// <summary>The trainable adapter parameters.</summary>
    public IEnumerable<Parameter> Parameters() => NamedParameters().Select(p => p.Parameter);

    /// <summary>Merged weights: each adapted <c>{path}.weight</c> of <paramref name="state"/> replaced by W + (α/r)·B A (new tensors, caller disposes).</summary>
    internal Dictionary<string, Tensor> MergedWeights(IReadOnlyDictionary<string, Tensor> state) =>
        _items.ToDictionary(i => i.Path + ".weight", i => Lora.Merge(state[i.Path + ".weight"], i.Adapter.A, i.Adapter.B, i.Adapter.Scale), StringComparer.Ordinal);

    /// <summary>Disposes every adapter.</summary>
    public void Dispose()
    {
        foreach (var (_, a) in _items) a.Dispose();
        _items.Clear();
    }
}

/// <summary>A model that can carry LoRA adapters (<see cref="LlamaForCausalLM"/>, <see cref="LlamaForSequenceClassification"/>).</summary>
public interface ILoraModel
{
    /// <summary>The adapters, null for full fine-tuning.</summary>
    LoraAdapters? Lora { get; }
}

/// <summary>
/// Weights to export or save: the model's state dict, with adapted projections replaced by merged tensors that this
/// object owns (dispose it after use). Without adapters it is the state dict itself and owns nothing.
/// </summary>
public sealed class ModelWeights : IDisposable
{
    readonly List<Tensor> _owned = [];

    /// <summary>HF name -> tensor.</summary>
    public IReadOnlyDictionary<string, Tensor> State { get; }

    ModelWeights(IReadOnlyDictionary<string, Tensor> state) => State = state;

    /// <summary>
    /// The weights of <paramref name="module"/>: merged (W + (α/r)·B A where it carries adapters) or, with
    /// <paramref name="merged"/> false, the base alone (its state dict).
    /// </summary>
    public static ModelWeights Of(nn.Module module, bool merged = true)
    {
        var state = module.state_dict();
        if (!merged || module is not ILoraModel { Lora: { } lora }) return new ModelWeights(state);
        var replaced = lora.MergedWeights(state);
        var result = new ModelWeights(state.ToDictionary(kv => kv.Key, kv => replaced.TryGetValue(kv.Key, out var m) ? m : kv.Value, StringComparer.Ordinal));
        result._owned.AddRange(replaced.Values);
        return result;
    }

    /// <summary>Disposes the merged tensors.</summary>
    public void Dispose()
    {
        foreach (var t in _owned) t.Dispose();
        _owned.Clear();
    }
}
