using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Rlhf.Export.Hf;

/// <summary>
/// A Llama-family decoder configuration, read from and written to a Hugging Face <c>config.json</c>
/// (<c>model_type</c> llama, qwen2 or mistral). Property names follow the HF keys; fields we do not
/// support (rope scaling other than linear/llama3, Qwen2 layer_types that interleave full and sliding layers, other
/// activations, MLP bias) are rejected when it is read, each named on one line.
/// </summary>
public sealed record ModelConfig
{
    /// <summary>HF <c>model_type</c>: llama, qwen2 or mistral.</summary>
    public string ModelType { get; init; } = "llama";
    /// <summary>Vocabulary size V (rows of <c>model.embed_tokens.weight</c>).</summary>
    public int VocabSize { get; init; } = 32000;
    /// <summary>Hidden size H.</summary>
    public int HiddenSize { get; init; } = 4096;
    /// <summary>SwiGLU inner size (rows of <c>gate_proj</c>/<c>up_proj</c>).</summary>
    public int IntermediateSize { get; init; } = 11008;
    /// <summary>Number of decoder layers.</summary>
    public int NumHiddenLayers { get; init; } = 32;
    /// <summary>Query heads.</summary>
    public int NumAttentionHeads { get; init; } = 32;
    /// <summary>Key/value heads (grouped-query attention when smaller than the query heads).</summary>
    public int NumKeyValueHeads { get; init; } = 32;
    /// <summary>Per-head size D; HF's default is H / heads when absent.</summary>
    public int? HeadDimOverride { get; init; }
    /// <summary>Longest sequence the model is meant for.</summary>
    public int MaxPositionEmbeddings { get; init; } = 2048;
    /// <summary>RoPE base θ.</summary>
    public double RopeTheta { get; init; } = 10000.0;
    /// <summary>HF <c>rope_scaling</c> (linear or llama3); null = plain RoPE. See <see cref="RopeFrequencies.Inverse"/>.</summary>
    public RopeScaling? RopeScaling { get; init; }
    /// <summary>
    /// Sliding-window size W of the layers from <see cref="FirstSlidingLayer"/> on: query i sees key j only when
    /// 0 ≤ i − j &lt; W (HF's <c>sliding_window</c>). Null = full causal attention in every layer; set only where it bites
    /// (W &lt; max_position_embeddings and some layer slides).
    /// </summary>
    public int? SlidingWindow { get; init; }
    /// <summary>First layer that uses <see cref="SlidingWindow"/> (Qwen2's <c>max_window_layers</c>; 0 for Mistral).</summary>
    public int FirstSlidingLayer { get; init; }
    /// <summary>RMSNorm ε.</summary>
    public double RmsNormEps { get; init; } = 1e-6;
    /// <summary>True when <c>lm_head.weight</c> is <c>model.embed_tokens.weight</c>.</summary>
    public bool TieWordEmbeddings { get; init; }
    /// <summary>HF <c>attention_bias</c> (llama: bias on q, k, v and o). Qwen2 always has q/k/v bias and no o bias.</summary>
    public bool AttentionBias { get; init; }
    /// <summary>Dropout on attention probabilities (HF <c>attention_dropout</c>).</summary>
    public double AttentionDropout { get; init; }
    /// <summary>Dropout on each residual branch output (our key <c>residual_dropout</c>; HF tools ignore it).</summary>
    public double ResidualDropout { get; init; }
    /// <summary>Beginning-of-sequence token id, if any.</summary>
    public int? BosTokenId { get; init; }
    /// <summary>End-of-sequence token ids (HF allows one id or a list).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];
    /// <summary>Padding token id, if any.</summary>
    public int? PadTokenId { get; init; }
    /// <summary>Weight dtype recorded by HF (<c>torch_dtype</c>): float32, bfloat16 or float16.</summary>
    public string TorchDtype { get; init; } = "float32";

    /// <summary>Per-head size D.</summary>
    public int HeadDim => HeadDimOverride ?? HiddenSize / NumAttentionHeads;
    /// <summary>Whether q/k/v projections carry a bias (Qwen2 always; llama when <c>attention_bias</c>).</summary>
    public bool QkvBias => ModelType == "qwen2" || (ModelType == "llama" && AttentionBias);
    /// <summary>Whether the output projection carries a bias (llama with <c>attention_bias</c> only).</summary>
    public bool OutputBias => ModelType == "llama" && AttentionBias;
    /// <summary>The sliding window of layer <paramref name="layer"/>, or null where it attends to the whole causal prefix.</summary>
    public int? WindowOf(int layer) => SlidingWindow is int w && layer >= FirstSlidingLayer ? w : null;
    /// <summary>The first EOS id, or null.</summary>
    public int? EosTokenId => EosTokenIds.Count > 0 ? EosTokenIds[0] : null;

    static readonly string[] SupportedTypes = ["llama", "qwen2", "mistral"];

    /// <summary>Throws <see cref="InvalidDataException"/> naming the field to change when the config is unusable.</summary>
    public void Validate()
    {
        var errors = new List<string>();
        if (!SupportedTypes.Contains(ModelType))
            errors.Add($"model_type '{ModelType}' is not supported (supported: {string.Join(", ", SupportedTypes)})");
        if (VocabSize <= 0) errors.Add("vocab_size must be positive");
        if (HiddenSize <= 0) errors.Add("hidden_size must be positive");
        if (IntermediateSize <= 0) errors.Add("intermediate_size must be positive");
        if (NumHiddenLayers <= 0) errors.Add("num_hidden_layers must be positive");
        if (NumAttentionHeads <= 0) errors.Add("num_attention_heads must be positive");
        if (NumKeyValueHeads <= 0 || NumAttentionHeads % Math.Max(1, NumKeyValueHeads) != 0)
            errors.Add($"num_key_value_heads ({NumKeyValueHeads}) must divide num_attention_heads ({NumAttentionHeads})");
        if (HeadDimOverride is null && NumAttentionHeads > 0 && HiddenSize % NumAttentionHeads != 0)
            errors.Add($"hidden_size ({HiddenSize}) must be a multiple of num_attention_heads ({NumAttentionHeads}) or head_dim must be set");
        if (HeadDim % 2 != 0) errors.Add($"head_dim ({HeadDim}) must be even for rotary embeddings");
        if (SlidingWindow is < 1) errors.Add($"sliding_window ({SlidingWindow}) must be at least 1");
        if (FirstSlidingLayer < 0) errors.Add($"max_window_layers ({FirstSlidingLayer}) must not be negative");
        if (RopeScaling is { Factor: <= 0 }) errors.Add($"rope_scaling factor ({RopeScaling.Factor}) must be positive");
        if (RopeScaling is { Type: RopeScalingType.Llama3 } r3 && !(r3.HighFreqFactor > r3.LowFreqFactor && r3.LowFreqFactor > 0 && r3.OriginalMaxPositionEmbeddings > 0))
            errors.Add($"rope_scaling llama3 needs high_freq_factor ({r3.HighFreqFactor}) > low_freq_factor ({r3.LowFreqFactor}) > 0 and original_max_position_embeddings > 0");
        if (AttentionDropout is < 0 or >= 1) errors.Add("attention_dropout must be in [0, 1)");
        if (ResidualDropout is < 0 or >= 1) errors.Add("residual_dropout must be in [0, 1)");
        if (errors.Count > 0) throw new InvalidDataException("Invalid model config: " + string.Join("; ", errors) + ".");
    }

    /// <summary>Reads a HF <c>config.json</c>, rejecting features this implementation does not have.</summary>
    public static ModelConfig Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"No config.json at {path}.", path);
        JsonObject o;
        try { o = JsonNode.Parse(File.ReadAllText(path))?.AsObject() ?? throw new InvalidDataException("empty"); }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        { throw new InvalidDataException($"{path}: not a JSON object ({e.Message})."); }
        return FromJson(o, path);
    }

    /// <summary>Name of the generation defaults file transformers writes next to <c>config.json</c>.</summary>
    public const string GenerationConfigFile = "generation_config.json";

    /// <summary>
    /// Reads a model folder's <c>config.json</c> and, when present, its <c>generation_config.json</c>, whose
    /// <c>bos_token_id</c>, <c>eos_token_id</c> (one id or a list) and <c>pad_token_id</c> replace config.json's, as
    /// transformers' <c>generate</c> uses them (Llama 3 Instruct lists its end-of-turn ids only there).
    /// </summary>
    public static ModelConfig LoadFolder(string folder)
    {
        var c = Load(Path.Combine(folder, "config.json"));
        string gen = Path.Combine(folder, GenerationConfigFile);
        if (!File.Exists(gen)) return c;
        JsonObject o;
        try { o = JsonNode.Parse(File.ReadAllText(gen))?.AsObject() ?? throw new InvalidDataException("empty"); }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        { throw new InvalidDataException($"{gen}: not a JSON object ({e.Message})."); }
        var eos = EosIds(o);
        return c with
        {
            BosTokenId = Int(o, "bos_token_id") ?? c.BosTokenId,
            EosTokenIds = eos.Count > 0 ? eos : c.EosTokenIds,
            PadTokenId = Int(o, "pad_token_id") ?? c.PadTokenId,
        };
    }

    /// <summary><c>eos_token_id</c> as one number or a list of numbers; empty when absent or null.</summary>
    static List<int> EosIds(JsonObject o)
    {
        var eos = new List<int>();
        switch (o["eos_token_id"])
        {
            case JsonArray arr: eos.AddRange(arr.Select(x => x!.GetValue<int>())); break;
            case JsonValue v when v.GetValueKind() == JsonValueKind.Number: eos.Add(v.GetValue<int>()); break;
        }
        return eos;
    }

    /// <summary>Parses a config object; <paramref name="source"/> names it in error messages.</summary>
    public static ModelConfig FromJson(JsonObject o, string source)
    {
        string type = o["model_type"]?.GetValue<string>() ?? throw new InvalidDataException($"{source}: missing 'model_type'.");
        var unsupported = new List<string>();
        var ropeScaling = RopeScaling.FromJson(o["rope_scaling"], unsupported);
        string act = o["hidden_act"]?.GetValue<string>() ?? "silu";
        if (act != "silu") unsupported.Add($"hidden_act '{act}' (only silu/SwiGLU)");
        if (o["mlp_bias"]?.GetValue<bool>() == true) unsupported.Add("mlp_bias true");
        int maxPos = Int(o, "max_position_embeddings") ?? 2048;
        int layers = Int(o, "num_hidden_layers") ?? throw new InvalidDataException($"{source}: missing 'num_hidden_layers'.");
        var (window, firstSliding) = SlidingWindowOf(o, type, maxPos, layers, unsupported);
        if (unsupported.Count > 0)
            throw new InvalidDataException($"{source}: unsupported config field(s): {string.Join("; ", unsupported)}.");

        var eos = EosIds(o);
        int hidden = Int(o, "hidden_size") ?? throw new InvalidDataException($"{source}: missing 'hidden_size'.");
        int heads = Int(o, "num_attention_heads") ?? throw new InvalidDataException($"{source}: missing 'num_attention_heads'.");
        var c = new ModelConfig
        {
            ModelType = type,
            VocabSize = Int(o, "vocab_size") ?? throw new InvalidDataException($"{source}: missing 'vocab_size'."),
            HiddenSize = hidden,
            IntermediateSize = Int(o, "intermediate_size") ?? throw new InvalidDataException($"{source}: missing 'intermediate_size'."),
            NumHiddenLayers = layers,
            NumAttentionHeads = heads,
            NumKeyValueHeads = Int(o, "num_key_value_heads") ?? heads,
            HeadDimOverride = Int(o, "head_dim"),
            MaxPositionEmbeddings = maxPos,
            RopeTheta = Dbl(o, "rope_theta") ?? 10000.0,
            RopeScaling = ropeScaling,
            SlidingWindow = window,
            FirstSlidingLayer = window is null ? 0 : firstSliding,
            RmsNormEps = Dbl(o, "rms_norm_eps") ?? 1e-6,
            TieWordEmbeddings = o["tie_word_embeddings"]?.GetValue<bool>() ?? false,
            AttentionBias = o["attention_bias"]?.GetValue<bool>() ?? false,
            AttentionDropout = Dbl(o, "attention_dropout") ?? 0.0,
            ResidualDropout = Dbl(o, "residual_dropout") ?? 0.0,
            BosTokenId = Int(o, "bos_token_id"),
            EosTokenIds = eos,
            PadTokenId = Int(o, "pad_token_id"),
            TorchDtype = o["torch_dtype"]?.GetValue<string>() ?? o["dtype"]?.GetValue<string>() ?? "float32",
        };
        try { c.Validate(); }
        catch (InvalidDataException e) { throw new InvalidDataException($"{source}: {e.Message}"); }
        return c;
    }

    /// <summary>The HF <c>config.json</c> object for this config (loads in transformers unchanged).</summary>
    public JsonObject ToJson()
    {
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray(ModelType switch
            {
                "qwen2" => "Qwen2ForCausalLM",
                "mistral" => "MistralForCausalLM",
                _ => "LlamaForCausalLM",
            }),
            ["model_type"] = ModelType,
            ["vocab_size"] = VocabSize,
            ["hidden_size"] = HiddenSize,
            ["intermediate_size"] = IntermediateSize,
            ["num_hidden_layers"] = NumHiddenLayers,
            ["num_attention_heads"] = NumAttentionHeads,
            ["num_key_value_heads"] = NumKeyValueHeads,
            ["head_dim"] = HeadDim,
            ["max_position_embeddings"] = MaxPositionEmbeddings,
            ["rope_theta"] = RopeTheta,
            ["rms_norm_eps"] = RmsNormEps,
            ["hidden_act"] = "silu",
            ["tie_word_embeddings"] = TieWordEmbeddings,
            ["attention_dropout"] = AttentionDropout,
            ["residual_dropout"] = ResidualDropout,
            ["initializer_range"] = 0.02,
            ["use_cache"] = true,
            ["torch_dtype"] = TorchDtype,
        };
        if (ModelType == "llama") { o["attention_bias"] = AttentionBias; o["mlp_bias"] = false; }
        if (RopeScaling is not null) o["rope_scaling"] = RopeScaling.ToJson();
        if (ModelType is "qwen2" or "mistral") { o["use_sliding_window"] = SlidingWindow is not null; o["sliding_window"] = SlidingWindow; }
        if (ModelType == "qwen2" && SlidingWindow is not null) o["max_window_layers"] = FirstSlidingLayer;
        if (BosTokenId is int b) o["bos_token_id"] = b;
        if (EosTokenIds.Count == 1) o["eos_token_id"] = EosTokenIds[0];
        else if (EosTokenIds.Count > 1) o["eos_token_id"] = new JsonArray(EosTokenIds.Select(x => (JsonNode)x).ToArray());
        if (PadTokenId is int p) o["pad_token_id"] = p;
        return o;
    }

    /// <summary>Writes <c>config.json</c> atomically.</summary>
    public void Save(string path) =>
        AtomicFile.WriteAllText(path, ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");

    /// <summary>
    /// The sliding window that bites and the first layer using it, from HF's rules: mistral slides every layer when
    /// <c>sliding_window</c> is a number (4096 when the key is absent, null = off); qwen2 only with <c>use_sliding_window</c> true, and then only layers
    /// i ≥ <c>max_window_layers</c> (default 28; transformers' <c>Qwen2Config.layer_types</c>), or as <c>layer_types</c> lists
    /// them when present (full layers first, then sliding ones). (null, 0) when no layer's window is shorter than the context.
    /// </summary>
    static (int? Window, int FirstSliding) SlidingWindowOf(JsonObject o, string type, int maxPos, int layers, List<string> unsupported)
    {
        // transformers' MistralConfig defaults sliding_window to 4096 when the key is absent (null turns it off).
        int? w = type == "mistral" && !o.ContainsKey("sliding_window") ? 4096 : Int(o, "sliding_window");
        bool on = type switch
        {
            "mistral" => w is not null,
            "qwen2" => o["use_sliding_window"] is JsonValue u && u.GetValueKind() == JsonValueKind.True,
            _ => false,
        };
        if (!on || w is not int window) return (null, 0);
        int first = type == "qwen2" ? Int(o, "max_window_layers") ?? 28 : 0;
        if (type == "qwen2" && o["layer_types"] is JsonArray lt)
        {
            var kinds = lt.Select(x => x?.GetValue<string>() ?? "").ToArray();
            int full = kinds.TakeWhile(k => k == "full_attention").Count();
            if (kinds.Length != layers || kinds.Skip(full).Any(k => k != "sliding_attention"))
            {
                unsupported.Add("layer_types (only full_attention layers followed by sliding_attention layers are implemented)");
                return (null, 0);
            }
            first = full;
        }
        return window < maxPos && first < layers ? (window, first) : (null, 0);
    }

    static int? Int(JsonObject o, string key) =>
        o[key] is JsonValue v && v.GetValueKind() == JsonValueKind.Number ? v.GetValue<int>() : null;

    static double? Dbl(JsonObject o, string key) =>
        o[key] is JsonValue v && v.GetValueKind() == JsonValueKind.Number
            ? double.Parse(v.ToJsonString(), CultureInfo.InvariantCulture) : null;
}
