using System.Text.Json;

namespace Rlhf.Inference.Tokenization;

/// <summary>
/// Reads the special-token settings of a Hugging Face model folder: token strings from
/// <c>tokenizer_config.json</c> then <c>special_tokens_map.json</c> (plain strings or
/// <c>{"content": ...}</c> objects), ids from <c>config.json</c> as the fallback; and whether encoding with special tokens
/// puts a BOS first (<see cref="AddsBos"/>, <see cref="AddedBos"/>), decided here for every stage.
/// </summary>
/// <param name="AddsBos">
/// Whether the folder's own tokenizer (transformers, <c>add_special_tokens=True</c>) puts a BOS first: <c>tokenizer_config.json</c>
/// <c>add_bos_token</c> when it is a boolean (LlamaTokenizer(Fast) applies it over tokenizer.json); else tokenizer.json's
/// <c>post_processor</c> when it has one (a TemplateProcessing whose single sequence starts with a special token, as Llama 3's
/// <c>&lt;|begin_of_text|&gt;</c>; Bert/RobertaProcessing's <c>cls</c>; ByteLevel, as GPT-2 and Qwen2, adds none); else — no
/// post_processor (this project's own files), SentencePiece or vocab files — null: no file decides, and BOS goes first
/// whenever the tokenizer knows one (the configs', the SentencePiece model's, WordPiece's <c>[CLS]</c>), as before.
/// </param>
/// <param name="AddedBos">The token put first when it is not <see cref="BosToken"/> (a post_processor's own); null: BOS itself.</param>
internal sealed record TokenizerFolder(
    string Path,
    string? BosToken,
    string? EosToken,
    string? PadToken,
    string? UnkToken,
    int? BosTokenId,
    int? EosTokenId,
    int? PadTokenId,
    bool? DoLowerCase,
    IReadOnlyDictionary<string, int> AddedTokens,
    bool? AddsBos,
    string? AddedBos)
{
    public const string TokenizerJson = "tokenizer.json";
    public const string VocabJson = "vocab.json";
    public const string MergesTxt = "merges.txt";
    public const string SentencePieceModel = "tokenizer.model";
    public const string WordPieceVocab = "vocab.txt";
    public const string TokenizerConfig = "tokenizer_config.json";
    public const string SpecialTokensMap = "special_tokens_map.json";
    public const string ModelConfig = "config.json";

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public bool Has(string name) => System.IO.File.Exists(File(name));

    public static TokenizerFolder Read(string path)
    {
        using JsonDocument? tokConfig = ReadJson(System.IO.Path.Combine(path, TokenizerConfig));
        using JsonDocument? specialMap = ReadJson(System.IO.Path.Combine(path, SpecialTokensMap));
        using JsonDocument? modelConfig = ReadJson(System.IO.Path.Combine(path, ModelConfig));

        string? Token(string key) => TokenString(tokConfig, key) ?? TokenString(specialMap, key);

        var added = new Dictionary<string, int>(StringComparer.Ordinal);
        if (tokConfig is not null
            && tokConfig.RootElement.TryGetProperty("added_tokens_decoder", out JsonElement decoder)
            && decoder.ValueKind == JsonValueKind.Object)
        {
            foreach (JsonProperty p in decoder.EnumerateObject())
            {
                if (int.TryParse(p.Name, out int id) && TokenContent(p.Value) is { } content)
                {
                    added[content] = id;
                }
            }
        }

        bool? lower = tokConfig is not null && tokConfig.RootElement.TryGetProperty("do_lower_case", out JsonElement lc)
            && lc.ValueKind is JsonValueKind.True or JsonValueKind.False ? lc.GetBoolean() : null;

        string? bos = Token("bos_token");
        int? bosId = ConfigId(modelConfig, "bos_token_id");
        (bool? addsBos, string? addedBos) = LeadingToken(path, tokConfig);
        return new TokenizerFolder(path,
            bos, Token("eos_token"), Token("pad_token"), Token("unk_token"),
            bosId, ConfigId(modelConfig, "eos_token_id"), ConfigId(modelConfig, "pad_token_id"),
            lower, added, addsBos, addedBos == bos ? null : addedBos);
    }

    /// <summary>The BOS decision (see <see cref="AddsBos"/>): whether a token goes first and, from a post_processor, which.</summary>
    private static (bool? Adds, string? Token) LeadingToken(string path, JsonDocument? tokConfig)
    {
        if (tokConfig is not null && tokConfig.RootElement.ValueKind == JsonValueKind.Object
            && tokConfig.RootElement.TryGetProperty("add_bos_token", out JsonElement flag) && flag.ValueKind is JsonValueKind.True or JsonValueKind.False)
        {
            return (flag.GetBoolean(), null);
        }
        using JsonDocument? tokenizerJson = ReadJson(System.IO.Path.Combine(path, TokenizerJson));
        if (tokenizerJson is not null && tokenizerJson.RootElement.ValueKind == JsonValueKind.Object
            && tokenizerJson.RootElement.TryGetProperty("post_processor", out JsonElement pp) && pp.ValueKind == JsonValueKind.Object)
        {
            string? first = PostProcessorFirst(pp);
            return (first is not null, first);
        }
        return (null, null);
    }

    /// <summary>The special token a tokenizers post_processor puts before a single sequence; null when none.</summary>
    private static string? PostProcessorFirst(JsonElement pp)
    {
        string? type = pp.TryGetProperty("type", out JsonElement t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
        switch (type)
        {
            case "Sequence" when pp.TryGetProperty("processors", out JsonElement list) && list.ValueKind == JsonValueKind.Array:
                return list.EnumerateArray().Where(p => p.ValueKind == JsonValueKind.Object).Select(PostProcessorFirst).FirstOrDefault(x => x is not null);
            case "TemplateProcessing" when pp.TryGetProperty("single", out JsonElement single) && single.ValueKind == JsonValueKind.Array && single.GetArrayLength() > 0:
                return single[0].ValueKind == JsonValueKind.Object && single[0].TryGetProperty("SpecialToken", out JsonElement st)
                    && st.TryGetProperty("id", out JsonElement id) && id.ValueKind == JsonValueKind.String ? id.GetString() : null;
            case "BertProcessing" or "RobertaProcessing" when pp.TryGetProperty("cls", out JsonElement cls) && cls.ValueKind == JsonValueKind.Array && cls.GetArrayLength() > 0:
                return cls[0].ValueKind == JsonValueKind.String ? cls[0].GetString() : null;
            default:
                return null;
        }
    }

    internal static JsonDocument? ReadJson(string file)
    {
        if (!System.IO.File.Exists(file))
        {
            return null;
        }
        try
        {
            return JsonDocument.Parse(System.IO.File.ReadAllBytes(file), new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{file} is not valid JSON: {e.Message}", e);
        }
    }

    /// <summary>A token given as "text" or {"content": "text", ...}; null when absent or null.</summary>
    internal static string? TokenContent(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.String => e.GetString(),
        JsonValueKind.Object when e.TryGetProperty("content", out JsonElement c) && c.ValueKind == JsonValueKind.String => c.GetString(),
        _ => null,
    };

    private static string? TokenString(JsonDocument? doc, string key) =>
        doc is not null && doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty(key, out JsonElement e)
            ? TokenContent(e)
            : null;

    /// <summary>An id given as a number or a list of numbers (the first one counts, as for Llama 3's eos list).</summary>
    private static int? ConfigId(JsonDocument? doc, string key)
    {
        if (doc is null || doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty(key, out JsonElement e))
        {
            return null;
        }
        if (e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int id))
        {
            return id;
        }
        if (e.ValueKind == JsonValueKind.Array && e.GetArrayLength() > 0 && e[0].ValueKind == JsonValueKind.Number)
        {
            return e[0].GetInt32();
        }
        return null;
    }
}
