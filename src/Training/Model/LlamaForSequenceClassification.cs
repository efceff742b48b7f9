using System.Text.Json.Nodes;
using Rlhf.Export.Hf;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>
/// The decoder trunk with a scalar head, named as HF <c>LlamaForSequenceClassification</c> with num_labels = 1:
/// weights <c>model.*</c> and <c>score.weight</c> [1, H]; reward models have no bias, PPO critics an optional
/// <c>score.bias</c> [1] (it holds the RM normalisation folded in by <see cref="FoldAffine"/>). Used for reward models and critics.
/// </summary>
public sealed class LlamaForSequenceClassification : nn.Module, IMixedPrecision, ILoraModel
{
    readonly LlamaModel model;
    readonly Linear score;

    /// <summary>The configuration.</summary>
    public ModelConfig Config { get; }

    LlamaForSequenceClassification(ModelConfig c, Device? device, ScalarType dtype, bool scoreBias = false) : base(nameof(LlamaForSequenceClassification))
    {
        Config = c;
        model = new LlamaModel(c, device, dtype);
        score = nn.Linear(c.HiddenSize, 1, scoreBias, device, dtype);
        if (scoreBias) using (torch.no_grad()) score.bias!.zero_();
        RegisterComponents();
    }

    /// <summary>Arithmetic precision of the trunk's forward/backward (see <see cref="Model.Precision"/>); the head stays float32.</summary>
    public Precision Precision { get => model.Precision; set => model.Precision = value; }

    /// <summary>The LoRA adapters of the trunk (null = full fine-tuning).</summary>
    public LoraAdapters? Lora => model.Lora;

    /// <summary>Per-layer activation checkpointing in training forwards (<see cref="LlamaModel.GradientCheckpointing"/>).</summary>
    public bool GradientCheckpointing { get => model.GradientCheckpointing; set => model.GradientCheckpointing = value; }

    /// <summary>The head's tensors by HF name (PEFT's modules_to_save: trained fully next to the adapters).</summary>
    Dictionary<string, Tensor> HeadTensors()
    {
        var d = new Dictionary<string, Tensor>(StringComparer.Ordinal) { ["score.weight"] = score.weight! };
        if (score.bias is not null) d["score.bias"] = score.bias;
        return d;
    }

    /// <summary>
    /// Adds LoRA adapters to the trunk and freezes it; the score head stays trainable (PEFT's <c>modules_to_save</c>).
    /// With <paramref name="from"/> (a folder holding <c>adapter/</c>) the adapter and head weights are read from it.
    /// </summary>
    public LoraAdapters AttachLora(LoraSettings settings, long seed, string? baseModel, string? from = null)
    {
        var lora = model.AttachLora(settings, seed);
        lora.BaseModel = baseModel;
        HfCheckpoint.Freeze(this, "score.");
        if (from is not null) PeftAdapter.Load(Path.Combine(from, PeftAdapter.FolderName), lora, HeadTensors());
        return lora;
    }

    /// <summary>Default std of the fresh head: 1/sqrt(H + 1) (InstructGPT/OpenAI lm-human-preferences).</summary>
    public static double DefaultHeadStd(ModelConfig c) => 1.0 / Math.Sqrt(c.HiddenSize + 1);

    /// <summary>A fresh model: trunk with HF init (N(0, 0.02)), head ~ N(0, headStd ?? 1/sqrt(H+1)).</summary>
    public static LlamaForSequenceClassification Create(ModelConfig cfg, Device device, ScalarType dtype, long seed, double? headStd = null)
    {
        var m = new LlamaForSequenceClassification(cfg, torch.CPU, ScalarType.Float32);
        double hs = headStd ?? DefaultHeadStd(cfg);
        HfCheckpoint.Init(m, seed, 0.02, name => name == "score.weight" ? hs : null);
        m.to(dtype);
        m.to(device);
        return m;
    }

    /// <summary>
    /// Loads a HF folder. With <paramref name="newHeadSeed"/> set, a folder without <c>score.weight</c> (e.g. an SFT
    /// causal LM; its <c>lm_head.weight</c> is ignored) gets a fresh head ~ N(0, 1/sqrt(H+1)); otherwise the head must be present.
    /// A folder with <c>score.bias</c> loads it; with <paramref name="scoreBias"/> a folder without one gets a bias of 0.
    /// With <paramref name="keepLayers"/> = n below the folder's layer count, the model is its first n decoder layers
    /// (then the final norm and the head), the later layers' weights left unread.
    /// </summary>
    public static LlamaForSequenceClassification FromPretrained(string folder, Device device, ScalarType dtype, long? newHeadSeed = null, bool scoreBias = false, int? keepLayers = null)
    {
        var cfg = ModelConfig.LoadFolder(folder);
        var weights = HfFolder.ReadWeights(folder);
        if (keepLayers is int n && n != cfg.NumHiddenLayers)
        {
            if (n < 1 || n > cfg.NumHiddenLayers)
            {
                foreach (var w in weights.Values) w.Dispose();
                throw new InvalidDataException($"{folder} has {cfg.NumHiddenLayers} decoder layers; an RM of its first {n} needs 1 ≤ num_layers ≤ {cfg.NumHiddenLayers}.");
            }
            cfg = cfg with { NumHiddenLayers = n };
            foreach (string k in weights.Keys.Where(k => LayerIndex(k) >= n).ToList())
            {
                weights[k].Dispose();
                weights.Remove(k);
            }
        }
        var m = new LlamaForSequenceClassification(cfg, device, dtype, scoreBias || weights.ContainsKey("score.bias"));
        try
        {
            var allow = new HashSet<string> { "score.bias" };
            if (newHeadSeed is not null) allow.Add("score.weight");
            var missing = HfCheckpoint.Load(m, weights, folder,
                ignore: newHeadSeed is null ? null : new HashSet<string> { "lm_head.weight" },
                allowMissing: allow);
            if (missing.Contains("score.weight"))
            {
                using var noGrad = torch.no_grad();
                using var gen = new torch.Generator((ulong)newHeadSeed!.Value, torch.CPU);
                using var r = torch.empty([1, cfg.HiddenSize], ScalarType.Float32, torch.CPU).normal_(0, DefaultHeadStd(cfg), gen);
                m.score.weight!.copy_(r);
            }
        }
        finally
        {
            foreach (var w in weights.Values) w.Dispose();
        }
        m.eval();   // as Hugging Face's from_pretrained: inference mode until a trainer calls train()
        return m;
    }

    /// <summary>i of a weight named <c>model.layers.{i}.…</c>, else −1.</summary>
    static int LayerIndex(string name)
    {
        const string prefix = "model.layers.";
        if (!name.StartsWith(prefix, StringComparison.Ordinal)) return -1;
        int end = name.IndexOf('.', prefix.Length);
        return end > 0 && int.TryParse(name.AsSpan(prefix.Length, end - prefix.Length), out int i) ? i : -1;
    }

    /// <summary>True when the head has <c>score.bias</c>.</summary>
    public bool HasScoreBias => score.bias is not null;

    /// <summary>
    /// Folds an affine map of the output into the head, so every value becomes gain·v + bias:
    /// w' = gain·w, b' = gain·b + bias (the head must have a bias; see <see cref="FromPretrained"/>).
    /// </summary>
    public void FoldAffine(double gain, double bias)
    {
        if (score.bias is null) throw new InvalidOperationException("FoldAffine needs a head with score.bias; load with scoreBias: true.");
        using var noGrad = torch.no_grad();
        score.weight!.mul_(gain);
        score.bias.mul_(gain).add_(bias);
    }

    /// <summary>Writes config.json (architectures *ForSequenceClassification, one label) and the weights atomically.</summary>
    /// <param name="merged">With LoRA: the trunk's projections merged (true) or the base alone (false, a checkpoint); the
    /// adapter and head go to <c>adapter/</c> in PEFT's layout either way.</param>
    public void SavePretrained(string folder, ScalarType dtype = ScalarType.Float32, long maxShardBytes = long.MaxValue, bool merged = true)
    {
        var json = (Config with { TorchDtype = HfCheckpoint.DtypeString(dtype) }).ToJson();
        json["architectures"] = new JsonArray(Config.ModelType switch
        {
            "qwen2" => "Qwen2ForSequenceClassification",
            "mistral" => "MistralForSequenceClassification",
            _ => "LlamaForSequenceClassification",
        });
        json["id2label"] = new JsonObject { ["0"] = "LABEL_0" };
        json["label2id"] = new JsonObject { ["LABEL_0"] = 0 };
        using var weights = ModelWeights.Of(this, merged);
        HfCheckpoint.Save(folder, json, weights.State, dtype, maxShardBytes, Lora is not { } lora ? null
            : tmp => PeftAdapter.Save(Path.Combine(tmp, PeftAdapter.FolderName), lora, PeftAdapter.TaskType(true), HeadTensors()));
    }

    /// <summary>
    /// Per-token values [B, S] (float32): <c>score(hidden)</c> at every position. Arguments as
    /// <see cref="LlamaForCausalLM.Forward"/>; positionIds default to <see cref="PositionIds.FromAttentionMask"/>.
    /// </summary>
    public Tensor Values(Tensor inputIds, Tensor attentionMask, Tensor? positionIds = null)
    {
        using var scope = torch.NewDisposeScope();
        var pos = positionIds ?? PositionIds.FromAttentionMask(attentionMask);
        return scope.MoveToOuter(ValueHead(model.Forward(inputIds, attentionMask, pos)));
    }

    /// <summary>Per-token values [R, L] (float32) of packed sequences (<see cref="PackedBatch"/>).</summary>
    public Tensor Values(PackedBatch packed)
    {
        using var scope = torch.NewDisposeScope();
        return scope.MoveToOuter(ValueHead(model.Forward(packed)));
    }

    /// <summary>hidden [..., H] -> values [...] in float32: <c>score(hidden)</c> without its last axis.</summary>
    Tensor ValueHead(Tensor hidden) => score.forward(hidden).squeeze(-1).to(ScalarType.Float32);

    /// <summary>Scores [B] (float32): the value at each row's last real token (works for left and right padding).</summary>
    public Tensor Scores(Tensor inputIds, Tensor attentionMask, Tensor? positionIds = null)
    {
        using var scope = torch.NewDisposeScope();
        var v = Values(inputIds, attentionMask, positionIds);
        var idx = LastRealIndex(attentionMask);
        return scope.MoveToOuter(v.gather(1, idx.unsqueeze(1)).squeeze(1));
    }

    /// <summary>attentionMask [B, T] -> [B] int64 index of the last position with mask 1 (0 for an all-padding row).</summary>
    public static Tensor LastRealIndex(Tensor attentionMask)
    {
        using var scope = torch.NewDisposeScope();
        long t = attentionMask.shape[1];
        var ar = torch.arange(1, t + 1, ScalarType.Int64, attentionMask.device).unsqueeze(0);   // [1, T]
        var idx = (attentionMask.ne(0).to(ScalarType.Int64) * ar).argmax(-1);
        return scope.MoveToOuter(idx);
    }
}
