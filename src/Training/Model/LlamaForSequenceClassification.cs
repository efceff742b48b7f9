using System.Text.Json.Nodes;
using Rlhf.Export.Hf;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>
/// The decoder trunk with a scalar head, named as HF <c>LlamaForSequenceClassification</c> with num_labels = 1:
/// weights <c>model.*</c> and <c>score.weight</c> [1, H] (no bias). Used for reward models and critics.
/// </summary>
public sealed class LlamaForSequenceClassification : nn.Module
{
    readonly LlamaModel model;
    readonly Linear score;

    /// <summary>The configuration.</summary>
    public ModelConfig Config { get; }

    LlamaForSequenceClassification(ModelConfig c, Device? device, ScalarType dtype) : base(nameof(LlamaForSequenceClassification))
    {
        Config = c;
        model = new LlamaModel(c, device, dtype);
        score = nn.Linear(c.HiddenSize, 1, false, device, dtype);
        RegisterComponents();
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
    /// </summary>
    public static LlamaForSequenceClassification FromPretrained(string folder, Device device, ScalarType dtype, long? newHeadSeed = null)
    {
        var cfg = ModelConfig.Load(Path.Combine(folder, HfFolder.ConfigFile));
        var m = new LlamaForSequenceClassification(cfg, device, dtype);
        var weights = HfFolder.ReadWeights(folder);
        try
        {
            var missing = HfCheckpoint.Load(m, weights, folder,
                ignore: newHeadSeed is null ? null : new HashSet<string> { "lm_head.weight" },
                allowMissing: newHeadSeed is null ? null : new HashSet<string> { "score.weight" });
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

    /// <summary>Writes config.json (architectures *ForSequenceClassification, one label) and the weights atomically.</summary>
    public void SavePretrained(string folder, ScalarType dtype = ScalarType.Float32, long maxShardBytes = long.MaxValue)
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
        HfCheckpoint.Save(folder, json, state_dict(), dtype, maxShardBytes);
    }

    /// <summary>
    /// Per-token values [B, S] (float32): <c>score(hidden)</c> at every position. Arguments as
    /// <see cref="LlamaForCausalLM.Forward"/>; positionIds default to <see cref="PositionIds.FromAttentionMask"/>.
    /// </summary>
    public Tensor Values(Tensor inputIds, Tensor attentionMask, Tensor? positionIds = null)
    {
        using var scope = torch.NewDisposeScope();
        var pos = positionIds ?? PositionIds.FromAttentionMask(attentionMask);
        var h = model.Forward(inputIds, attentionMask, pos);
        return scope.MoveToOuter(score.forward(h).squeeze(-1).to(ScalarType.Float32));
    }

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
