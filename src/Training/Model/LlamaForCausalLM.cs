using Rlhf.Export.Hf;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>
/// Llama-family causal LM (llama, qwen2, mistral configs) with Hugging Face state-dict names:
/// <c>model.embed_tokens.weight</c>, <c>model.layers.{i}.self_attn.{q,k,v,o}_proj.weight|bias</c>,
/// <c>model.layers.{i}.mlp.{gate,up,down}_proj.weight</c>, <c>model.layers.{i}.{input,post_attention}_layernorm.weight</c>,
/// <c>model.norm.weight</c>, and <c>lm_head.weight</c> [V, H] unless embeddings are tied (then absent, as in HF files).
/// </summary>
public sealed class LlamaForCausalLM : nn.Module, IMixedPrecision, ILoraModel
{
    readonly LlamaModel model;
    readonly Linear? lm_head;

    /// <summary>The configuration.</summary>
    public ModelConfig Config { get; }

    LlamaForCausalLM(ModelConfig c, Device? device, ScalarType dtype) : base(nameof(LlamaForCausalLM))
    {
        Config = c;
        model = new LlamaModel(c, device, dtype);
        lm_head = c.TieWordEmbeddings ? null : nn.Linear(c.HiddenSize, c.VocabSize, false, device, dtype);
        RegisterComponents();
    }

    /// <summary>Arithmetic precision of forward/backward (the trunk's; see <see cref="Model.Precision"/>).</summary>
    public Precision Precision { get => model.Precision; set => model.Precision = value; }

    /// <summary>The LoRA adapters (null = full fine-tuning).</summary>
    public LoraAdapters? Lora => model.Lora;

    /// <summary>Per-layer activation checkpointing in training forwards (<see cref="LlamaModel.GradientCheckpointing"/>).</summary>
    public bool GradientCheckpointing { get => model.GradientCheckpointing; set => model.GradientCheckpointing = value; }

    /// <summary>
    /// Adds LoRA adapters (<see cref="LlamaModel.AttachLora"/>) and freezes every base weight: only the adapters train.
    /// With <paramref name="from"/> (a model folder holding <c>adapter/</c>, as a checkpoint does) the adapter weights are read from it.
    /// <paramref name="baseModel"/> is recorded as PEFT's base_model_name_or_path.
    /// </summary>
    public LoraAdapters AttachLora(LoraSettings settings, long seed, string? baseModel, string? from = null)
    {
        var lora = model.AttachLora(settings, seed);
        lora.BaseModel = baseModel;
        HfCheckpoint.Freeze(this);
        if (from is not null) PeftAdapter.Load(Path.Combine(from, PeftAdapter.FolderName), lora, new Dictionary<string, Tensor>());
        return lora;
    }

    /// <summary>
    /// A second model over the same weight storage as <paramref name="source"/>'s base (no copy; frozen; no adapters):
    /// the reference policy of a LoRA run is the base with the adapters off.
    /// </summary>
    public static LlamaForCausalLM SharingBase(LlamaForCausalLM source)
    {
        var state = source.state_dict();
        // Built on the source's device (libtorch refuses to point a meta tensor at CPU storage); set_ then drops the fresh storage.
        var m = new LlamaForCausalLM(source.Config, state.Values.First().device, state.Values.First().dtype);
        using (torch.no_grad())
            foreach (var (name, p) in m.named_parameters())
            {
                p.requires_grad = false;
                p.set_(state[name]);
            }
        m.Precision = source.Precision;
        m.eval();
        return m;
    }

    /// <summary>The decoder trunk (for heads that read hidden states).</summary>
    public LlamaModel Model => model;

    /// <summary>
    /// A freshly initialised model (HF init: N(0, 0.02) weights, zero biases, unit norms), reproducible from
    /// <paramref name="seed"/> on any device.
    /// </summary>
    public static LlamaForCausalLM Create(ModelConfig cfg, Device device, ScalarType dtype, long seed)
    {
        var m = new LlamaForCausalLM(cfg, torch.CPU, ScalarType.Float32);
        HfCheckpoint.Init(m, seed, 0.02);
        m.to(dtype);
        m.to(device);
        return m;
    }

    /// <summary>
    /// inputIds [B, S] int64; attentionMask [B, T] int64 (T = cached + S, 1 = real token); positionIds [B, S] int64
    /// (see <see cref="PositionIds.FromAttentionMask"/>); cache: optional KV cache, appended to.
    /// Returns logits [B, S, V].
    /// </summary>
    public Tensor Forward(Tensor inputIds, Tensor attentionMask, Tensor positionIds, KvCache? cache = null)
    {
        using var scope = torch.NewDisposeScope();
        var h = model.Forward(inputIds, attentionMask, positionIds, cache);
        return scope.MoveToOuter(Logits(h));
    }

    /// <summary>Final hidden states [R, L, H] of packed sequences (after <c>model.norm</c>).</summary>
    public Tensor HiddenStates(PackedBatch packed) => model.Forward(packed);

    /// <summary>Final hidden states [B, S, H] (after <c>model.norm</c>); same arguments as <see cref="Forward"/>.</summary>
    public Tensor HiddenStates(Tensor inputIds, Tensor attentionMask, Tensor positionIds, KvCache? cache = null) =>
        model.Forward(inputIds, attentionMask, positionIds, cache);

    /// <summary>
    /// hidden [B, S, H] -> logits [B, S, V] through <c>lm_head</c> (or the tied embedding), in hidden's dtype; under
    /// <see cref="Precision.Bf16"/> the projection runs in bfloat16 and its result is cast back to float32.
    /// </summary>
    public Tensor Logits(Tensor hidden)
    {
        var compute = Precision.ComputeDtype();
        if (compute is null)
            return lm_head is not null ? lm_head.forward(hidden) : nn.functional.linear(hidden, model.EmbedWeight);
        using var scope = torch.NewDisposeScope();
        var y = lm_head is not null
            ? MixedPrecision.Linear(lm_head, hidden, compute)
            : nn.functional.linear(MixedPrecision.Cast(hidden, compute), MixedPrecision.Cast(model.EmbedWeight, compute));
        return scope.MoveToOuter(y.to(hidden.dtype));
    }

    /// <summary>
    /// Loads <c>config.json</c> (with <c>generation_config.json</c>'s special token ids when present) and safetensors weights (single or sharded) from a HF folder onto
    /// <paramref name="device"/> as <paramref name="dtype"/>. A stored <c>lm_head.weight</c> is ignored when embeddings are tied.
    /// </summary>
    /// <param name="adjust">Changes to settings that do not touch the weights (dropout), applied after loading the config.</param>
    public static LlamaForCausalLM FromPretrained(string folder, Device device, ScalarType dtype, Func<ModelConfig, ModelConfig>? adjust = null)
    {
        var cfg = ModelConfig.LoadFolder(folder);
        if (adjust is not null) { cfg = adjust(cfg); cfg.Validate(); }
        var m = new LlamaForCausalLM(cfg, device, dtype);
        var weights = HfFolder.ReadWeights(folder);
        try
        {
            HfCheckpoint.Load(m, weights, folder, ignore: cfg.TieWordEmbeddings ? new HashSet<string> { "lm_head.weight" } : null);
        }
        finally
        {
            foreach (var w in weights.Values) w.Dispose();
        }
        m.eval();   // as Hugging Face's from_pretrained: inference mode until a trainer calls train()
        return m;
    }

    /// <summary>
    /// Writes <c>config.json</c> (torch_dtype set to <paramref name="dtype"/>) and <c>model.safetensors</c>
    /// (sharded with an index when larger than <paramref name="maxShardBytes"/>), through a temporary folder renamed into place;
    /// with LoRA adapters also <c>adapter/</c> (<see cref="PeftAdapter"/>).
    /// </summary>
    /// <param name="merged">With LoRA: true writes W + (α/r)·B A (the trained policy, for export and downstream stages),
    /// false the base alone (a checkpoint: base + adapter resume exactly). Either way the adapter goes to <c>adapter/</c> in PEFT's layout.</param>
    public void SavePretrained(string folder, ScalarType dtype = ScalarType.Float32, long maxShardBytes = long.MaxValue, bool merged = true)
    {
        var cfg = Config with { TorchDtype = HfCheckpoint.DtypeString(dtype) };
        using var weights = ModelWeights.Of(this, merged);
        HfCheckpoint.Save(folder, cfg.ToJson(), weights.State, dtype, maxShardBytes, Lora is not { } lora ? null
            : tmp => PeftAdapter.Save(Path.Combine(tmp, PeftAdapter.FolderName), lora, PeftAdapter.TaskType(false), new Dictionary<string, Tensor>()));
    }
}
