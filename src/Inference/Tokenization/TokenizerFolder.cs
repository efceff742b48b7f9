using System.Text.Json;

namespace Rlhf.Inference.Tokenization;

/// <summary>
/// Reads the special-token settings of a Hugging Face model folder: token strings from
/// <c>tokenizer_config.json</c> then <c>special_tokens_map.json</c> (plain strings or
/// <c>{"content": ...}</c> objects), ids from <c>config.json</c> as the fallback.
/// </summary>
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
    IReadOnlyDictionary<string, int> AddedTokens)
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

        return new TokenizerFolder(path,
            Token("bos_token"), Token("eos_token"), Token("pad_token"), Token("unk_token"),
            ConfigId(modelConfig, "bos_token_id"), ConfigId(modelConfig, "eos_token_id"), ConfigId(modelConfig, "pad_token_id"),
            lower, added);
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
