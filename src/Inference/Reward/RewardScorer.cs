using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Rlhf.Inference.Onnx;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Inference.Reward;

/// <summary>How (prompt, response) becomes the reward model's tokens.</summary>
public enum RewardTemplate
{
    /// <summary>Chosen from the model: <see cref="Joined"/> for our own reward graphs and BPE/SentencePiece tokenizers, <see cref="Pair"/> for WordPiece.</summary>
    Auto,
    /// <summary><c>[BOS] prompt continuation [EOS]</c> as <see cref="PromptFormat"/> joins them (BOS/EOS when the tokenizer has them and special tokens are added).</summary>
    Joined,
    /// <summary>
    /// BERT text pair: <c>[CLS] prompt [SEP] response [SEP]</c>, token types 0 for the first segment and 1 for the second;
    /// an empty prompt gives the single sequence <c>[CLS] response [SEP]</c> (types 0), as Hugging Face tokenizers do.
    /// </summary>
    Pair,
    /// <summary>
    /// One text: <c>[CLS] prompt + " " + response [SEP]</c>, token types 0 (what TRL's sentiment example feeds a
    /// DistilBERT classifier); the text is <see cref="PromptFormat.Join"/>(prompt, response).
    /// </summary>
    Text,
}

/// <summary>
/// <c>reward_spec.json</c> next to a reward model (snake_case keys, all optional): maps the graph's input/output names,
/// picks the logit, sets the maximum length, the template and a normalisation. Example:
/// <code>{ "input_ids": "input_ids", "attention_mask": "attention_mask", "token_type_ids": "token_type_ids",
///   "output": "logits", "label_index": 0, "max_length": 512, "template": "pair", "add_special_tokens": true,
///   "cls_token": "[CLS]", "sep_token": "[SEP]", "mean": 0.0, "std": 1.0 }</code>
/// </summary>
public sealed record RewardSpec
{
    /// <summary>File name looked for next to the model.</summary>
    public const string FileName = "reward_spec.json";

    /// <summary>Token ids input [B, S].</summary>
    public string InputIds { get; init; } = "input_ids";
    /// <summary>Attention mask input [B, S].</summary>
    public string AttentionMask { get; init; } = "attention_mask";
    /// <summary>Token type ids input [B, S]; null = used when the graph has an input of that name.</summary>
    public string? TokenTypeIds { get; init; }
    /// <summary>Score output; null = <c>rewards</c>, else <c>logits</c>, else the only output.</summary>
    public string? Output { get; init; }
    /// <summary>Column of a [B, C] output with C &gt; 1 (e.g. the "positive" label); null = the output must have one column.</summary>
    public int? LabelIndex { get; init; }
    /// <summary>Longest tokenized input; null = the graph's fixed length, config.json's max_position_embeddings, or 512.</summary>
    public int? MaxLength { get; init; }
    /// <summary>How the pair is laid out.</summary>
    [JsonConverter(typeof(JsonStringEnumConverter<RewardTemplate>))]
    public RewardTemplate Template { get; init; } = RewardTemplate.Auto;
    /// <summary>Add BOS/EOS (joined) or CLS/SEP (pair).</summary>
    public bool AddSpecialTokens { get; init; } = true;
    /// <summary>CLS token of the pair template.</summary>
    public string ClsToken { get; init; } = "[CLS]";
    /// <summary>SEP token of the pair template.</summary>
    public string SepToken { get; init; } = "[SEP]";
    /// <summary>Score normalisation: (raw − mean) / std; null = 0. A spec that sets mean or std declares its scores normalised.</summary>
    public double? Mean { get; init; }
    /// <summary>Score normalisation: (raw − mean) / std; must be &gt; 0; null = 1.</summary>
    public double? Std { get; init; }

    /// <summary>True when the spec sets <see cref="Mean"/> or <see cref="Std"/>: the scores it yields are already normalised.</summary>
    [JsonIgnore]
    public bool Normalises => Mean is not null || Std is not null;

    static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
    };

    /// <summary>The spec as <c>reward_spec.json</c> text (snake_case keys).</summary>
    public string ToJson() => JsonSerializer.Serialize(this, Json);

    /// <summary>Reads a spec file; unknown keys are an error naming the file.</summary>
    public static RewardSpec Load(string path)
    {
        try
        {
            return (JsonSerializer.Deserialize<RewardSpec>(File.ReadAllText(path), Json) ?? new RewardSpec()).Validate();
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: {e.Message} Keys: input_ids, attention_mask, token_type_ids, output, label_index, " +
                                           "max_length, template (auto|joined|pair|text), add_special_tokens, cls_token, sep_token, mean, std.", e);
        }
    }

    /// <summary>Throws naming the key to change when a value is out of range.</summary>
    public RewardSpec Validate()
    {
        if (Std is double sd && (!(sd > 0) || !double.IsFinite(sd))) throw new ArgumentException($"reward spec: std must be > 0; got {Std}.");
        if (Mean is double m && !double.IsFinite(m)) throw new ArgumentException($"reward spec: mean must be finite; got {Mean}.");
        if (MaxLength is < 2) throw new ArgumentException($"reward spec: max_length must be >= 2; got {MaxLength}.");
        if (LabelIndex is < 0) throw new ArgumentException($"reward spec: label_index must be >= 0; got {LabelIndex}.");
        return this;
    }
}

/// <summary>One (prompt, response) pair to score; the response is text as stored in the data (no leading space).</summary>
public sealed record RewardRequest(string Prompt, string Response);

/// <summary>Scorer settings.</summary>
public sealed record RewardScorerOptions
{
    /// <summary>ONNX Runtime intra-op threads; 0 = all cores.</summary>
    public int Threads { get; init; }
    /// <summary>Rows per forward pass (rows are sorted by length first so batches pad little).</summary>
    public int BatchSize { get; init; } = 32;
    /// <summary>Overrides <c>reward_spec.json</c>.</summary>
    public RewardSpec? Spec { get; init; }
    /// <summary>Overrides the spec's template (null = the spec's, Auto = chosen from the model).</summary>
    public RewardTemplate? Template { get; init; }
}

/// <summary>
/// Scores (prompt, response) pairs with a reward model on ONNX Runtime: our exported reward folder (input_ids,
/// attention_mask -> <c>rewards</c> [B]) or any external sequence-classification ONNX (input_ids, attention_mask,
/// optional token_type_ids -> <c>logits</c> [B, 1] / [B] / [B, C] with a label index) with its own tokenizer and
/// maximum length. The response text is re-tokenized with the RM's tokenizer; batches are right-padded. Scores are
/// normalised as (raw − mean) / std. Thread-safe (ORT sessions are; no mutable state).
/// </summary>
public sealed class RewardScorer : Services.IRewardService
{
    readonly InferenceSession _session;
    readonly RewardScorerOptions _options;
    readonly string? _tokenTypes;
    readonly string _output;
    readonly int _column;
    readonly TensorElementType _idType;
    readonly int _pad;
    readonly int? _cls, _sep;

    RewardScorer(InferenceSession session, TextTokenizer tokenizer, RewardSpec spec, RewardScorerOptions options, string folder, string file)
    {
        _session = session;
        _options = options;
        Tokenizer = tokenizer;
        Spec = spec;
        var inputs = session.InputMetadata;
        var outputs = session.OutputMetadata;
        bool ours = session.ModelMetadata.CustomMetadataMap.TryGetValue("rlhf.graph", out string? kind) && kind == "reward";
        string Expected() =>
            $"Expected inputs {spec.InputIds} [B,S] int64, {spec.AttentionMask} [B,S] int64, optional {spec.TokenTypeIds ?? "token_type_ids"} [B,S] int64; " +
            $"output {spec.Output ?? "rewards or logits"} [B], [B,1] or [B,C] with label_index. Found inputs: {DecoderSignature.Describe(inputs)}; " +
            $"outputs: {DecoderSignature.Describe(outputs)}. Map the names in {Path.Combine(folder, RewardSpec.FileName)}.";

        var problems = new List<string>();
        if (!inputs.ContainsKey(spec.InputIds)) problems.Add($"no input '{spec.InputIds}'");
        if (!inputs.ContainsKey(spec.AttentionMask)) problems.Add($"no input '{spec.AttentionMask}'");
        _tokenTypes = spec.TokenTypeIds ?? (inputs.ContainsKey("token_type_ids") ? "token_type_ids" : null);
        if (spec.TokenTypeIds is { } tt && !inputs.ContainsKey(tt)) problems.Add($"no input '{tt}'");
        foreach (string name in inputs.Keys)
            if (name != spec.InputIds && name != spec.AttentionMask && name != _tokenTypes) problems.Add($"unexpected input '{name}'");
        string? output = spec.Output ?? (outputs.ContainsKey("rewards") ? "rewards" : outputs.ContainsKey("logits") ? "logits" : outputs.Count == 1 ? outputs.Keys.First() : null);
        if (output is null || !outputs.ContainsKey(output)) problems.Add(output is null ? "no output named rewards or logits" : $"no output '{output}'");
        if (problems.Count > 0) throw new InvalidDataException($"Reward model {file} does not fit: {string.Join("; ", problems)}. {Expected()}");
        _output = output!;
        var dims = outputs[_output].Dimensions;
        int columns = dims.Length == 1 ? 1 : dims.Length == 2 ? dims[1] : -2;
        if (columns == -2 || (columns != 1 && spec.LabelIndex is null) || (spec.LabelIndex is int li && columns > 0 && li >= columns))
            throw new InvalidDataException($"Reward model {file}: output '{_output}' has shape [{string.Join(",", dims)}]; a score needs [B] or [B,1], " +
                                           $"or [B,C] with label_index < C in {RewardSpec.FileName}. {Expected()}");
        _column = spec.LabelIndex ?? 0;
        _idType = inputs[spec.InputIds].ElementDataType;
        if (_idType is not (TensorElementType.Int64 or TensorElementType.Int32))
            throw new InvalidDataException($"Reward model {file}: input '{spec.InputIds}' is {_idType}; int64 or int32 expected. {Expected()}");
        var idDims = inputs[spec.InputIds].Dimensions;
        MaxLength = spec.MaxLength ?? (idDims.Length == 2 && idDims[1] > 0 ? idDims[1] : ConfigMaxLength(folder) ?? 512);
        var asked = options.Template ?? spec.Template;
        Template = asked != RewardTemplate.Auto ? asked
            : !ours && tokenizer.Kind is TokenizerKind.WordPiece or TokenizerKind.TokenizerJsonWordPiece ? RewardTemplate.Pair : RewardTemplate.Joined;
        _pad = tokenizer.PaddingId;
        if (Template is RewardTemplate.Pair or RewardTemplate.Text && spec.AddSpecialTokens)
        {
            _cls = tokenizer.TokenId(spec.ClsToken) ?? throw new InvalidDataException($"The tokenizer of {folder} has no '{spec.ClsToken}' token; set cls_token in {RewardSpec.FileName}.");
            _sep = tokenizer.TokenId(spec.SepToken) ?? throw new InvalidDataException($"The tokenizer of {folder} has no '{spec.SepToken}' token; set sep_token in {RewardSpec.FileName}.");
        }
    }

    /// <summary>The reward model's tokenizer.</summary>
    public TextTokenizer Tokenizer { get; }
    /// <summary>The spec in force.</summary>
    public RewardSpec Spec { get; }
    /// <summary>Longest input; longer pairs are truncated (prompt from its start, then response from its end).</summary>
    public int MaxLength { get; }
    /// <summary>The template in force (never Auto).</summary>
    public RewardTemplate Template { get; }

    /// <summary>
    /// Opens a reward model: a folder (model.onnx, tokenizer files, optional reward_spec.json) or an .onnx file whose
    /// folder holds them. <paramref name="tokenizer"/> overrides the folder's tokenizer.
    /// </summary>
    public static RewardScorer Load(string path, RewardScorerOptions? options = null, TextTokenizer? tokenizer = null)
    {
        options ??= new RewardScorerOptions();
        if (options.BatchSize < 1) throw new ArgumentException($"BatchSize must be >= 1; got {options.BatchSize}.");
        var (file, folder) = OnnxModelPath.Resolve(path);
        string specFile = Path.Combine(folder, RewardSpec.FileName);
        var spec = (options.Spec ?? (File.Exists(specFile) ? RewardSpec.Load(specFile) : new RewardSpec())).Validate();
        tokenizer ??= TextTokenizer.Load(folder);
        using var so = OnnxModelPath.Options(options.Threads);
        var session = new InferenceSession(file, so);
        try { return new RewardScorer(session, tokenizer, spec, options, folder, file); }
        catch { session.Dispose(); throw; }
    }

    static int? ConfigMaxLength(string folder)
    {
        string f = Path.Combine(folder, "config.json");
        if (!File.Exists(f)) return null;
        using var doc = JsonDocument.Parse(File.ReadAllText(f));
        return doc.RootElement.TryGetProperty("max_position_embeddings", out var m) && m.TryGetInt32(out int v) && v > 1 ? v : null;
    }

    /// <summary>Token ids and token types of one pair as the model reads them (truncated to <see cref="MaxLength"/>).</summary>
    public (int[] Ids, int[] TokenTypes) Encode(string prompt, string response)
    {
        var tk = Tokenizer;
        switch (Template)
        {
            case RewardTemplate.Pair when prompt.Trim().Length > 0:
            {
                int[] p = tk.Encode(prompt.Trim()), r = tk.Encode(response.Trim());
                int special = Spec.AddSpecialTokens ? 3 : 0;
                int over = p.Length + r.Length + special - MaxLength;
                if (over > 0) { int cut = Math.Min(over, p.Length); p = p[cut..]; over -= cut; }
                if (over > 0) r = r[..Math.Max(0, r.Length - over)];
                int[] ids = Spec.AddSpecialTokens ? [_cls!.Value, .. p, _sep!.Value, .. r, _sep!.Value] : [.. p, .. r];
                int first = Spec.AddSpecialTokens ? p.Length + 2 : p.Length;
                return (ids, [.. Enumerable.Range(0, ids.Length).Select(i => i < first ? 0 : 1)]);
            }
            case RewardTemplate.Pair:   // empty prompt: one sequence
                return Single(response.Trim());
            case RewardTemplate.Text:
                return Single(PromptFormat.Join(prompt.Trim(), response));
            default:
            {
                int[] ids = PromptFormat.JoinedIds(tk, prompt, response, MaxLength, Spec.AddSpecialTokens);
                return (ids, new int[ids.Length]);
            }
        }
    }

    /// <summary><c>[CLS] text [SEP]</c> (without them when special tokens are off), truncated from the end; token types 0.</summary>
    (int[] Ids, int[] TokenTypes) Single(string text)
    {
        int[] t = Tokenizer.Encode(text);
        int special = Spec.AddSpecialTokens ? 2 : 0;
        if (t.Length + special > MaxLength) t = t[..Math.Max(0, MaxLength - special)];
        int[] ids = Spec.AddSpecialTokens ? [_cls!.Value, .. t, _sep!.Value] : t;
        return (ids, new int[ids.Length]);
    }

    /// <summary>Normalised scores, one per request, in order.</summary>
    public float[] Score(IReadOnlyList<RewardRequest> requests)
    {
        ArgumentNullException.ThrowIfNull(requests);
        var encoded = requests.Select(r => Encode(r.Prompt, r.Response)).ToArray();
        return ScoreEncoded([.. encoded.Select(e => e.Ids)], [.. encoded.Select(e => e.TokenTypes)]);
    }

    /// <summary>Normalised scores of already tokenized rows (the RM's own vocabulary; e.g. policy ids when the RM shares the policy tokenizer).</summary>
    public float[] ScoreIds(IReadOnlyList<int[]> ids) => ScoreEncoded(ids, null);

    /// <summary>Raw model outputs (before normalisation) of tokenized rows.</summary>
    public float[] RawScores(IReadOnlyList<int[]> ids, IReadOnlyList<int[]>? tokenTypes = null)
    {
        var raw = new float[ids.Count];
        var order = Enumerable.Range(0, ids.Count).OrderBy(i => ids[i].Length).ToArray();
        for (int start = 0; start < order.Length; start += _options.BatchSize)
        {
            var chunk = order.AsSpan(start, Math.Min(_options.BatchSize, order.Length - start)).ToArray();
            int B = chunk.Length, S = Math.Max(1, chunk.Max(i => ids[i].Length));
            var idBuf = new long[B * S];
            var mask = new long[B * S];
            var types = new long[B * S];
            for (int b = 0; b < B; b++)
            {
                int[] row = ids[chunk[b]];
                if (row.Length == 0) throw new ArgumentException($"Row {chunk[b]} has no tokens.");
                if (row.Length > MaxLength) throw new ArgumentException($"Row {chunk[b]} has {row.Length} tokens; the reward model takes at most {MaxLength}.");
                for (int s = 0; s < S; s++)
                {
                    bool real = s < row.Length;
                    idBuf[b * S + s] = real ? row[s] : _pad;
                    mask[b * S + s] = real ? 1 : 0;
                    types[b * S + s] = real && tokenTypes is not null ? tokenTypes[chunk[b]][s] : 0;
                }
            }
            var names = new List<string> { Spec.InputIds, Spec.AttentionMask };
            var values = new List<OrtValue> { Tensor(idBuf, B, S), Tensor(mask, B, S) };
            if (_tokenTypes is not null) { names.Add(_tokenTypes); values.Add(Tensor(types, B, S)); }
            try
            {
                using var outputs = _session.Run(new RunOptions(), names, values, [_output]);
                var data = outputs[0].GetTensorDataAsSpan<float>();
                int cols = data.Length / B;
                for (int b = 0; b < B; b++) raw[chunk[b]] = data[b * cols + _column];
            }
            finally
            {
                foreach (var v in values) v.Dispose();
            }
        }
        return raw;
    }

    float[] ScoreEncoded(IReadOnlyList<int[]> ids, IReadOnlyList<int[]>? tokenTypes)
    {
        var raw = RawScores(ids, tokenTypes);
        for (int i = 0; i < raw.Length; i++) raw[i] = (float)((raw[i] - (Spec.Mean ?? 0)) / (Spec.Std ?? 1));
        return raw;
    }

    OrtValue Tensor(long[] data, int b, int s) => _idType == TensorElementType.Int64
        ? OrtValue.CreateTensorValueFromMemory(data, [b, s])
        : OrtValue.CreateTensorValueFromMemory(data.Select(x => (int)x).ToArray(), [b, s]);

    /// <summary>Frees the session.</summary>
    public void Dispose() => _session.Dispose();
}
