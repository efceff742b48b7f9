using System.Text.Json;
using System.Text.Json.Nodes;
using Rlhf.Export.Hf;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>
/// LoRA adapters in Hugging Face PEFT's folder layout, so <c>PeftModel.from_pretrained(base, folder)</c> loads them:
/// <c>adapter_config.json</c> (peft_type "LORA", r, lora_alpha, lora_dropout, target_modules, task_type CAUSAL_LM or
/// SEQ_CLS, bias "none", fan_in_fan_out false, modules_to_save ["score"] for a sequence classifier,
/// base_model_name_or_path) and <c>adapter_model.safetensors</c> with PEFT's saved names: the module path under
/// <c>base_model.model.</c>, the adapter name removed — <c>base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight</c>
/// [r, in], <c>….lora_B.weight</c> [out, r], and a fully trained head as <c>base_model.model.score.weight</c>.
/// </summary>
public static class PeftAdapter
{
    /// <summary>The sub-folder of a model folder (stage output or checkpoint) that holds its adapter.</summary>
    public const string FolderName = "adapter";
    /// <summary>PEFT's config file.</summary>
    public const string ConfigFile = "adapter_config.json";
    /// <summary>PEFT's weights file.</summary>
    public const string WeightsFile = "adapter_model.safetensors";
    /// <summary>The prefix PEFT's <c>PeftModel</c> puts before the wrapped model's module paths.</summary>
    public const string Prefix = "base_model.model.";

    /// <summary>PEFT task types of our two heads.</summary>
    public static string TaskType(bool sequenceClassification) => sequenceClassification ? "SEQ_CLS" : "CAUSAL_LM";

    /// <summary>The adapter_config.json of <paramref name="s"/>.</summary>
    public static JsonObject Config(LoraSettings s, string taskType, string? baseModel, IReadOnlyList<string> modulesToSave) => new()
    {
        ["peft_type"] = "LORA",
        ["task_type"] = taskType,
        ["r"] = s.Rank,
        ["lora_alpha"] = s.Alpha,
        ["lora_dropout"] = s.Dropout,
        ["target_modules"] = new JsonArray([.. s.TargetModules.Select(t => (JsonNode?)JsonValue.Create(t))]),
        ["bias"] = "none",
        ["fan_in_fan_out"] = false,
        ["modules_to_save"] = modulesToSave.Count == 0 ? null : new JsonArray([.. modulesToSave.Select(t => (JsonNode?)JsonValue.Create(t))]),
        ["base_model_name_or_path"] = baseModel,
        ["inference_mode"] = true,
        ["init_lora_weights"] = true,
        ["use_rslora"] = false,
        ["use_dora"] = false,
        ["layers_to_transform"] = null,
        ["rank_pattern"] = new JsonObject(),
        ["alpha_pattern"] = new JsonObject(),
        ["revision"] = null,
    };

    /// <summary>
    /// Writes <paramref name="folder"/> (created if needed): the config and the adapter tensors (A, B and the
    /// <paramref name="modulesToSave"/> tensors, by their HF names) under PEFT's names, float32.
    /// </summary>
    public static void Save(string folder, LoraAdapters lora, string taskType, IReadOnlyDictionary<string, Tensor> modulesToSave)
    {
        Directory.CreateDirectory(folder);
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, p) in lora.NamedParameters()) tensors[Prefix + name] = p;
        foreach (var (name, t) in modulesToSave) tensors[Prefix + name] = t;
        SafeTensors.Write(Path.Combine(folder, WeightsFile), tensors, ScalarType.Float32, new Dictionary<string, string> { ["format"] = "pt" });
        var modules = modulesToSave.Keys.Select(k => k[..k.IndexOf('.')]).Distinct().Order(StringComparer.Ordinal).ToList();
        File.WriteAllText(Path.Combine(folder, ConfigFile),
            Config(lora.Settings, taskType, lora.BaseModel, modules).ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    /// <summary>Reads a PEFT LoRA config back as settings (only what this project writes: plain LoRA, no rank or alpha patterns).</summary>
    public static LoraSettings ReadSettings(string folder)
    {
        string path = Path.Combine(folder, ConfigFile);
        if (!File.Exists(path)) throw new FileNotFoundException($"{folder}: no {ConfigFile} (a PEFT LoRA adapter folder is expected).", path);
        var o = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        if ((string?)o["peft_type"] != "LORA") throw new InvalidDataException($"{path}: peft_type must be LORA.");
        var targets = o["target_modules"] switch
        {
            JsonArray a => a.Select(t => (string)t!).ToList(),
            JsonValue v => [(string)v!],
            _ => throw new InvalidDataException($"{path}: target_modules must be a list of module names."),
        };
        var s = new LoraSettings((int)o["r"]!, (double)o["lora_alpha"]!, (double?)o["lora_dropout"] ?? 0, targets);
        var problems = LoraSettings.Problems(s.Rank, s.Alpha, s.Dropout, s.TargetModules).ToList();
        if (problems.Count > 0) throw new InvalidDataException($"{path}: {string.Join("; ", problems)}.");
        return s;
    }

    /// <summary>
    /// Copies a saved adapter into <paramref name="lora"/> (and the <paramref name="modulesToSave"/> tensors, by HF name):
    /// every expected name must be present with its shape.
    /// </summary>
    public static void Load(string folder, LoraAdapters lora, IReadOnlyDictionary<string, Tensor> modulesToSave)
    {
        var weights = SafeTensors.Read(Path.Combine(folder, WeightsFile));
        try
        {
            using var noGrad = torch.no_grad();
            foreach (var (name, p) in lora.NamedParameters().Select(np => (np.Name, (Tensor)np.Parameter)).Concat(modulesToSave.Select(kv => (kv.Key, kv.Value))))
            {
                if (!weights.TryGetValue(Prefix + name, out var w))
                    throw new InvalidDataException($"{folder}/{WeightsFile}: no '{Prefix + name}'; the adapter does not match the model and the LoRA settings.");
                if (!w.shape.SequenceEqual(p.shape))
                    throw new InvalidDataException($"{folder}/{WeightsFile}: '{Prefix + name}' is [{string.Join(", ", w.shape)}], the model's is [{string.Join(", ", p.shape)}].");
                p.copy_(w);
            }
        }
        finally
        {
            foreach (var w in weights.Values) w.Dispose();
        }
    }
}
