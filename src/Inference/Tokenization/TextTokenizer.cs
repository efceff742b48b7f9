using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace Rlhf.Inference.Tokenization;

/// <summary>Which file format a <see cref="TextTokenizer"/> came from.</summary>
public enum TokenizerKind
{
    /// <summary>Hugging Face <c>tokenizer.json</c> with a byte-level BPE model.</summary>
    TokenizerJsonBpe,
    /// <summary>Hugging Face <c>tokenizer.json</c> with a WordPiece model.</summary>
    TokenizerJsonWordPiece,
    /// <summary>GPT-2 <c>vocab.json</c> + <c>merges.txt</c> (byte-level BPE).</summary>
    VocabMerges,
    /// <summary>SentencePiece <c>tokenizer.model</c> (BPE or Unigram).</summary>
    SentencePiece,
    /// <summary>BERT WordPiece <c>vocab.txt</c>.</summary>
    WordPiece,
}

/// <summary>
/// A model folder's tokenizer, loaded through Microsoft.ML.Tokenizers. <see cref="Load"/> tries, in order:
/// <c>tokenizer.json</c> (BPE, byte-level; WordPiece), <c>vocab.json</c> + <c>merges.txt</c>, SentencePiece
/// <c>tokenizer.model</c>, WordPiece <c>vocab.txt</c>. Special tokens come from <c>tokenizer_config.json</c>,
/// then <c>special_tokens_map.json</c>, then the ids in <c>config.json</c>.
/// <see cref="Encode"/> never adds BOS/EOS; special-token strings inside the text map to their ids (as in Hugging Face).
/// </summary>
public sealed class TextTokenizer
{
    private static readonly string[] PadCandidates = ["<|pad|>", "<pad>", "[PAD]", "<|padding|>", "<|finetune_right_pad_id|>"];

    private readonly Func<string, IReadOnlyList<int>> _encode;
    private readonly Dictionary<string, int> _tokenToId;
    private readonly Dictionary<int, string> _idToToken;
    private readonly HashSet<int> _specialIds;

    private TextTokenizer(Tokenizer inner, TokenizerKind kind, string sourceFile, Func<string, IReadOnlyList<int>> encode,
        Dictionary<string, int> tokenToId, IEnumerable<int> specialIds, TokenizerFolder folder)
    {
        Inner = inner;
        Kind = kind;
        SourceFile = sourceFile;
        _encode = encode;
        _tokenToId = tokenToId;
        _idToToken = [];
        foreach ((string token, int id) in tokenToId)
        {
            _idToToken.TryAdd(id, token);
        }
        VocabSize = _idToToken.Count == 0 ? 0 : _idToToken.Keys.Max() + 1;

        BosId = Resolve(folder.BosToken, folder.BosTokenId);
        AddedBosId = folder.AddsBos switch
        {
            false => null,
            true when folder.AddedBos is { } first => Resolve(first, null),
            _ => BosId,   // true, or no file decides (see TokenizerFolder.AddsBos)
        };
        EosId = Resolve(folder.EosToken, folder.EosTokenId);
        PadId = Resolve(folder.PadToken, folder.PadTokenId);
        UnkId = Resolve(folder.UnkToken, null);
        if (PadId is null || PadId == EosId)
        {
            // Prefer a dedicated padding token over EOS-as-pad: masking pads must never hide a real EOS.
            foreach (string candidate in PadCandidates)
            {
                if (tokenToId.TryGetValue(candidate, out int id) && id != EosId)
                {
                    PadId = id;
                    break;
                }
            }
        }

        _specialIds = [.. specialIds];
        foreach (int? id in new[] { BosId, EosId, PadId, UnkId })
        {
            if (id is { } v)
            {
                _specialIds.Add(v);
            }
        }
    }

    /// <summary>The Microsoft.ML.Tokenizers tokenizer doing the work.</summary>
    public Tokenizer Inner { get; }
    /// <summary>The format it was loaded from.</summary>
    public TokenizerKind Kind { get; }
    /// <summary>The file it was loaded from.</summary>
    public string SourceFile { get; }
    /// <summary>One more than the largest token id (embedding rows needed).</summary>
    public int VocabSize { get; }
    /// <summary>Beginning-of-sequence id, if the folder names one (a chat template's <c>bos_token</c>); whether it is put first is <see cref="AddedBosId"/>.</summary>
    public int? BosId { get; }
    /// <summary>
    /// The id that encoding with special tokens puts first, exactly as the folder's own tokenizer does (null: none; Qwen2 adds
    /// none, Llama 3 adds <c>&lt;|begin_of_text|&gt;</c>); the folder's files decide it (see <c>TokenizerFolder.AddsBos</c>).
    /// A rendered chat prompt that already begins with it gets no second one (<see cref="PromptFormat.PromptIds"/>).
    /// </summary>
    public int? AddedBosId { get; }
    /// <summary>End-of-sequence id, if the folder names one.</summary>
    public int? EosId { get; }
    /// <summary>Padding id: the configured one, or a dedicated pad token when the configured pad is missing or equals EOS.</summary>
    public int? PadId { get; }
    /// <summary>
    /// The id every batch pads with (training batches, TorchSharp generation, our ONNX engine, the reward scorer): <see cref="PadId"/>,
    /// else <see cref="EosId"/>, else 0. Padding is masked wherever it is fed, so the choice never changes a number; it only
    /// has to be a valid id. (GenAI alone pads with genai_config.json's pad_token_id, which its runtime reads itself.)
    /// </summary>
    public int PaddingId => PadId ?? EosId ?? 0;
    /// <summary>Unknown-token id, if any.</summary>
    public int? UnkId { get; }
    /// <summary>Ids of special tokens (added special tokens, BOS, EOS, PAD, UNK); <see cref="Decode"/> skips them by default.</summary>
    public IReadOnlySet<int> SpecialIds => _specialIds;

    /// <summary>Token ids of <paramref name="text"/>; no BOS/EOS is added.</summary>
    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        return text.Length == 0 ? [] : [.. _encode(text)];
    }

    /// <summary>Text of <paramref name="ids"/>; special tokens are left out when <paramref name="skipSpecial"/>.</summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecial = true)
    {
        ArgumentNullException.ThrowIfNull(ids);
        IEnumerable<int> kept = skipSpecial ? ids.Where(id => !_specialIds.Contains(id)) : ids;
        return Inner switch
        {
            BpeTokenizer bpe => bpe.Decode(kept, considerSpecialTokens: true),
            SentencePieceTokenizer sp => sp.Decode(kept, considerSpecialTokens: true),
            WordPieceTokenizer wp => wp.Decode(kept, false),
            _ => Inner.Decode(kept),
        };
    }

    /// <summary>The vocabulary string of <paramref name="id"/> (e.g. "Ġthe" for byte-level BPE, "▁the" for SentencePiece), or null.</summary>
    public string? TokenText(int id) => _idToToken.GetValueOrDefault(id);

    /// <summary>The id of the vocabulary string <paramref name="token"/>, or null.</summary>
    public int? TokenId(string token) => _tokenToId.TryGetValue(token, out int id) ? id : null;

    /// <summary>Loads the tokenizer of a model folder (see the class summary for the order of preference).</summary>
    public static TextTokenizer Load(string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        if (!Directory.Exists(folder))
        {
            throw new DirectoryNotFoundException($"Tokenizer folder '{folder}' does not exist.");
        }
        TokenizerFolder f = TokenizerFolder.Read(folder);
        string? skipped = null;

        if (f.Has(TokenizerFolder.TokenizerJson))
        {
            TextTokenizer? fromJson = FromTokenizerJson(f, out skipped);
            if (fromJson is not null)
            {
                return fromJson;
            }
        }
        if (f.Has(TokenizerFolder.VocabJson) && f.Has(TokenizerFolder.MergesTxt))
        {
            return FromVocabMerges(f);
        }
        if (f.Has(TokenizerFolder.SentencePieceModel))
        {
            return FromSentencePiece(f);
        }
        if (f.Has(TokenizerFolder.WordPieceVocab))
        {
            return FromWordPiece(f);
        }
        throw new FileNotFoundException(
            $"No usable tokenizer in '{folder}'. Looked for: {TokenizerFolder.TokenizerJson} (BPE or WordPiece model), " +
            $"{TokenizerFolder.VocabJson} + {TokenizerFolder.MergesTxt} (GPT-2 byte-level BPE), " +
            $"{TokenizerFolder.SentencePieceModel} (SentencePiece), {TokenizerFolder.WordPieceVocab} (WordPiece)." +
            (skipped is null ? "" : $" {skipped}") +
            " Copy the tokenizer files of the base model into the folder, or train one with the project's BPE trainer.");
    }

    private int? Resolve(string? token, int? configId) =>
        token is not null && _tokenToId.TryGetValue(token, out int id) ? id : configId;

    // ---- tokenizer.json ------------------------------------------------------------------------------

    private static TextTokenizer? FromTokenizerJson(TokenizerFolder f, out string? skipped)
    {
        skipped = null;
        string file = f.File(TokenizerFolder.TokenizerJson);
        using JsonDocument doc = TokenizerFolder.ReadJson(file)!;
        JsonElement root = doc.RootElement;
        if (!root.TryGetProperty("model", out JsonElement model) || model.ValueKind != JsonValueKind.Object)
        {
            throw new InvalidDataException($"{file} has no \"model\" object; is it a Hugging Face tokenizers file?");
        }
        string type = model.TryGetProperty("type", out JsonElement t) && t.ValueKind == JsonValueKind.String
            ? t.GetString()!
            : model.TryGetProperty("merges", out _) ? "BPE" : "?";

        var added = new Dictionary<string, int>(StringComparer.Ordinal);
        var specialIds = new List<int>();
        if (root.TryGetProperty("added_tokens", out JsonElement addedTokens) && addedTokens.ValueKind == JsonValueKind.Array)
        {
            foreach (JsonElement a in addedTokens.EnumerateArray())
            {
                if (TokenizerFolder.TokenContent(a) is { } content && a.TryGetProperty("id", out JsonElement idEl) && idEl.TryGetInt32(out int id))
                {
                    added[content] = id;
                    if (a.TryGetProperty("special", out JsonElement sp) && sp.ValueKind == JsonValueKind.True)
                    {
                        specialIds.Add(id);
                    }
                }
            }
        }

        switch (type)
        {
            case "BPE":
                if (!IsByteLevel(root))
                {
                    if (f.Has(TokenizerFolder.SentencePieceModel))
                    {
                        return null; // Llama-2 style (Metaspace + byte fallback): the SentencePiece model is exact
                    }
                    throw new NotSupportedException(
                        $"{file} holds a BPE model that is not byte-level (no ByteLevel pre-tokenizer or decoder) and the folder has no " +
                        $"{TokenizerFolder.SentencePieceModel}; only byte-level BPE is supported from tokenizer.json. Add the SentencePiece model file.");
                }
                var vocab = ReadVocabObject(model, file);
                List<string> merges = ReadMerges(model, file);
                Regex? split = PreTokenizerRegex(root);
                return BuildByteLevelBpe(f, TokenizerKind.TokenizerJsonBpe, file, vocab, merges, added, specialIds, split);
            case "WordPiece":
                return FromWordPieceJson(f, file, root, model, added, specialIds);
            default:
                skipped = $"{TokenizerFolder.TokenizerJson} was skipped: model type '{type}' is not supported (BPE and WordPiece are).";
                return null;
        }
    }

    private static bool IsByteLevel(JsonElement root)
    {
        static bool Has(JsonElement e) => e.ValueKind switch
        {
            JsonValueKind.Object => (e.TryGetProperty("type", out JsonElement t) && t.ValueKind == JsonValueKind.String && t.GetString() == "ByteLevel")
                || (e.TryGetProperty("pretokenizers", out JsonElement p) && p.EnumerateArray().Any(Has))
                || (e.TryGetProperty("decoders", out JsonElement d) && d.EnumerateArray().Any(Has)),
            _ => false,
        };
        return (root.TryGetProperty("pre_tokenizer", out JsonElement pre) && Has(pre))
            || (root.TryGetProperty("decoder", out JsonElement dec) && Has(dec));
    }

    /// <summary>
    /// The split regex of the pre-tokenizer: a <c>Split</c> pre-tokenizer's pattern (Llama 3, Qwen2) or GPT-2's for a
    /// <c>ByteLevel</c> one with <c>use_regex</c>; null when the text is not split.
    /// </summary>
    private static Regex? PreTokenizerRegex(JsonElement root)
    {
        if (!root.TryGetProperty("pre_tokenizer", out JsonElement pre) || pre.ValueKind != JsonValueKind.Object)
        {
            return null;
        }
        IEnumerable<JsonElement> parts = pre.TryGetProperty("pretokenizers", out JsonElement list) && list.ValueKind == JsonValueKind.Array
            ? list.EnumerateArray().ToList()
            : [pre];
        foreach (JsonElement p in parts)
        {
            string? type = p.TryGetProperty("type", out JsonElement t) ? t.GetString() : null;
            if (type == "Split" && p.TryGetProperty("pattern", out JsonElement pattern))
            {
                if (pattern.TryGetProperty("Regex", out JsonElement rx))
                {
                    return new Regex(rx.GetString()!, RegexOptions.Compiled | RegexOptions.CultureInvariant);
                }
                if (pattern.TryGetProperty("String", out JsonElement s))
                {
                    return new Regex(Regex.Escape(s.GetString()!), RegexOptions.Compiled | RegexOptions.CultureInvariant);
                }
            }
            if (type == "ByteLevel" && (!p.TryGetProperty("use_regex", out JsonElement useRegex) || useRegex.ValueKind != JsonValueKind.False))
            {
                return ByteLevel.Gpt2Regex;
            }
        }
        return null;
    }

    private static Dictionary<string, int> ReadVocabObject(JsonElement model, string file)
    {
        if (!model.TryGetProperty("vocab", out JsonElement vocab) || vocab.ValueKind != JsonValueKind.Object)
        {
            throw new InvalidDataException($"{file}: model.vocab must be an object of token -> id.");
        }
        var result = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (JsonProperty p in vocab.EnumerateObject())
        {
            result[p.Name] = p.Value.GetInt32();
        }
        return result;
    }

    /// <summary>model.merges as "a b" strings; accepts both the "a b" and the ["a", "b"] forms.</summary>
    private static List<string> ReadMerges(JsonElement model, string file)
    {
        var merges = new List<string>();
        if (!model.TryGetProperty("merges", out JsonElement m) || m.ValueKind != JsonValueKind.Array)
        {
            return merges;
        }
        foreach (JsonElement e in m.EnumerateArray())
        {
            if (e.ValueKind == JsonValueKind.String)
            {
                merges.Add(e.GetString()!);
            }
            else if (e.ValueKind == JsonValueKind.Array && e.GetArrayLength() == 2)
            {
                string a = e[0].GetString()!, b = e[1].GetString()!;
                if (a.Contains(' ') || b.Contains(' '))
                {
                    throw new NotSupportedException($"{file}: merge [\"{a}\", \"{b}\"] has a space inside a token, which Microsoft.ML.Tokenizers' \"a b\" merge format cannot express.");
                }
                merges.Add(a + " " + b);
            }
            else
            {
                throw new InvalidDataException($"{file}: model.merges entries must be \"a b\" strings or [\"a\", \"b\"] pairs.");
            }
        }
        return merges;
    }

    private static TextTokenizer BuildByteLevelBpe(TokenizerFolder f, TokenizerKind kind, string file, Dictionary<string, int> vocab,
        List<string> merges, Dictionary<string, int> added, List<int> specialIds, Regex? split)
    {
        foreach ((string token, int id) in f.AddedTokens)
        {
            added.TryAdd(token, id);
        }
        // Added tokens outside model.vocab (e.g. Qwen2's <|im_start|>) still need an id the library knows.
        var allTokens = new Dictionary<string, int>(vocab, StringComparer.Ordinal);
        foreach ((string token, int id) in added)
        {
            allTokens.TryAdd(token, id);
        }
        var options = new BpeOptions(vocab)
        {
            Merges = merges,
            ByteLevel = true,
            SpecialTokens = added.Count == 0 ? null : added,
            PreTokenizer = split is null ? null : new RegexPreTokenizer(split, added.Count == 0 ? null : added),
        };
        BpeTokenizer bpe = BpeTokenizer.Create(options);
        // Special ids: the flagged added tokens plus every added token named by the configs.
        foreach (string? name in new[] { f.BosToken, f.EosToken, f.PadToken, f.UnkToken })
        {
            if (name is not null && added.TryGetValue(name, out int id))
            {
                specialIds.Add(id);
            }
        }
        if (kind == TokenizerKind.VocabMerges)
        {
            specialIds.AddRange(added.Values);
        }
        return new TextTokenizer(bpe, kind, file, text => bpe.EncodeToIds(text), allTokens, specialIds, f);
    }

    // ---- vocab.json + merges.txt ---------------------------------------------------------------------

    private static TextTokenizer FromVocabMerges(TokenizerFolder f)
    {
        string vocabFile = f.File(TokenizerFolder.VocabJson);
        using JsonDocument vocabDoc = TokenizerFolder.ReadJson(vocabFile)!;
        if (vocabDoc.RootElement.ValueKind != JsonValueKind.Object)
        {
            throw new InvalidDataException($"{vocabFile} must be a JSON object of token -> id.");
        }
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (JsonProperty p in vocabDoc.RootElement.EnumerateObject())
        {
            vocab[p.Name] = p.Value.GetInt32();
        }
        var merges = new List<string>();
        foreach (string line in File.ReadLines(f.File(TokenizerFolder.MergesTxt), Encoding.UTF8))
        {
            if (line.Length == 0 || line.StartsWith("#version", StringComparison.Ordinal))
            {
                continue;
            }
            merges.Add(line);
        }
        // Without tokenizer.json the special tokens are the ones the configs name (when in the vocabulary).
        var added = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (string? name in new[] { f.BosToken, f.EosToken, f.PadToken, f.UnkToken })
        {
            if (name is not null && vocab.TryGetValue(name, out int id))
            {
                added[name] = id;
            }
        }
        return BuildByteLevelBpe(f, TokenizerKind.VocabMerges, vocabFile, vocab, merges, added, [], ByteLevel.Gpt2Regex);
    }

    // ---- SentencePiece -------------------------------------------------------------------------------

    private static TextTokenizer FromSentencePiece(TokenizerFolder f)
    {
        string file = f.File(TokenizerFolder.SentencePieceModel);
        SentencePieceTokenizer sp;
        using FileStream stream = File.OpenRead(file);
        try
        {
            sp = SentencePieceTokenizer.Create(stream, false, false,
                f.AddedTokens.Count == 0 ? null : f.AddedTokens);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new InvalidDataException($"{file} is not a SentencePiece model Microsoft.ML.Tokenizers can read (BPE or Unigram): {e.Message}", e);
        }
        var tokens = new Dictionary<string, int>(sp.Vocabulary, StringComparer.Ordinal);
        foreach ((string token, int id) in f.AddedTokens)
        {
            tokens.TryAdd(token, id);
        }
        var specials = new List<int> { sp.BeginningOfSentenceId, sp.EndOfSentenceId, sp.UnknownId };
        specials.AddRange(f.AddedTokens.Values);
        TokenizerFolder withDefaults = f with
        {
            BosToken = f.BosToken ?? sp.BeginningOfSentenceToken,
            EosToken = f.EosToken ?? sp.EndOfSentenceToken,
            UnkToken = f.UnkToken ?? sp.UnknownToken,
        };
        return new TextTokenizer(sp, TokenizerKind.SentencePiece, file,
            text => sp.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false), tokens, specials, withDefaults);
    }

    // ---- WordPiece -----------------------------------------------------------------------------------

    private static TextTokenizer FromWordPiece(TokenizerFolder f)
    {
        string file = f.File(TokenizerFolder.WordPieceVocab);
        var tokens = new Dictionary<string, int>(StringComparer.Ordinal);
        int line = 0;
        foreach (string token in File.ReadLines(file, Encoding.UTF8))
        {
            tokens.TryAdd(token.TrimEnd('\r'), line++);
        }
        using FileStream stream = File.OpenRead(file);
        return BuildWordPiece(f, TokenizerKind.WordPiece, file, stream, tokens, f.DoLowerCase ?? true, [.. f.AddedTokens.Values]);
    }

    private static TextTokenizer FromWordPieceJson(TokenizerFolder f, string file, JsonElement root, JsonElement model,
        Dictionary<string, int> added, List<int> specialIds)
    {
        Dictionary<string, int> vocab = ReadVocabObject(model, file);
        foreach ((string token, int id) in added)
        {
            vocab.TryAdd(token, id);
        }
        int size = vocab.Values.Max() + 1;
        var byId = new string[size];
        foreach ((string token, int id) in vocab)
        {
            byId[id] = token;
        }
        for (int i = 0; i < size; i++)
        {
            byId[i] ??= $"[unused_{i}]";
        }
        bool lower = f.DoLowerCase
            ?? (root.TryGetProperty("normalizer", out JsonElement n) && n.ValueKind == JsonValueKind.Object
                && n.TryGetProperty("lowercase", out JsonElement lc) && lc.ValueKind == JsonValueKind.True);
        using var stream = new MemoryStream(Encoding.UTF8.GetBytes(string.Join('\n', byId) + "\n"));
        return BuildWordPiece(f, TokenizerKind.TokenizerJsonWordPiece, file, stream, vocab, lower, specialIds);
    }

    private static TextTokenizer BuildWordPiece(TokenizerFolder f, TokenizerKind kind, string file, Stream vocabStream,
        Dictionary<string, int> tokens, bool lowerCase, List<int> specialIds)
    {
        BertTokenizer bert = BertTokenizer.Create(vocabStream, new BertOptions { LowerCaseBeforeTokenization = lowerCase });
        specialIds.AddRange(new[] { bert.ClassificationTokenId, bert.SeparatorTokenId, bert.PaddingTokenId, bert.MaskingTokenId, bert.UnknownTokenId });
        // BERT has no BOS/EOS: [CLS] and [SEP] play those parts unless the configs say otherwise.
        TokenizerFolder withDefaults = f with
        {
            BosToken = f.BosToken ?? bert.ClassificationToken,
            EosToken = f.EosToken ?? bert.SeparatorToken,
            PadToken = f.PadToken ?? bert.PaddingToken,
            UnkToken = f.UnkToken ?? bert.UnknownToken,
        };
        return new TextTokenizer(bert, kind, file, text => bert.EncodeToIds(text, addSpecialTokens: false), tokens, specialIds, withDefaults);
    }
}
