using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace Rlhf.Training.Data.Tokenizer;

/// <summary>
/// Writes a <see cref="ByteLevelBpe"/> in the Hugging Face formats so that <c>tokenizers</c>,
/// <c>transformers.AutoTokenizer</c> and <c>TextTokenizer.Load</c> all read it unchanged:
/// <c>tokenizer.json</c> (tokenizers schema "1.0"), GPT-2 <c>vocab.json</c> + <c>merges.txt</c>,
/// <c>tokenizer_config.json</c> and <c>special_tokens_map.json</c>. Every file is written to a
/// temporary name and renamed into place.
/// </summary>
internal static class HfTokenizerFiles
{
    private static readonly JsonWriterOptions Indented = new()
    {
        Indented = true,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    public static void Write(ByteLevelBpe bpe, string folder)
    {
        Directory.CreateDirectory(folder);
        WriteAtomic(Path.Combine(folder, "tokenizer.json"), w => WriteTokenizerJson(bpe, w));
        WriteAtomic(Path.Combine(folder, "vocab.json"), w => WriteVocab(bpe, w));
        Rlhf.Export.AtomicFile.WriteAllText(Path.Combine(folder, "merges.txt"), MergesText(bpe));
        WriteAtomic(Path.Combine(folder, "tokenizer_config.json"), w => WriteTokenizerConfig(bpe, w));
        WriteAtomic(Path.Combine(folder, "special_tokens_map.json"), w => WriteSpecialTokensMap(bpe, w));
    }

    private static void WriteTokenizerJson(ByteLevelBpe bpe, Utf8JsonWriter w)
    {
        w.WriteStartObject();
        w.WriteString("version", "1.0");
        w.WriteNull("truncation");
        w.WriteNull("padding");
        w.WriteStartArray("added_tokens");
        foreach ((int id, string content) in Specials(bpe))
        {
            WriteAddedToken(w, id, content, includeId: true);
        }
        w.WriteEndArray();
        w.WriteNull("normalizer");
        w.WriteStartObject("pre_tokenizer");
        WriteByteLevelFields(w, addPrefixSpace: false, trimOffsets: true);
        w.WriteEndObject();
        w.WriteNull("post_processor");
        w.WriteStartObject("decoder");
        WriteByteLevelFields(w, addPrefixSpace: true, trimOffsets: true);
        w.WriteEndObject();
        w.WriteStartObject("model");
        w.WriteString("type", "BPE");
        w.WriteNull("dropout");
        w.WriteNull("unk_token");
        w.WriteNull("continuing_subword_prefix");
        w.WriteNull("end_of_word_suffix");
        w.WriteBoolean("fuse_unk", false);
        w.WriteBoolean("byte_fallback", false);
        w.WriteBoolean("ignore_merges", false);
        w.WritePropertyName("vocab");
        WriteVocab(bpe, w);
        w.WriteStartArray("merges");
        foreach ((int left, int right) in bpe.Merges)
        {
            w.WriteStringValue(bpe.Tokens[left] + " " + bpe.Tokens[right]);
        }
        w.WriteEndArray();
        w.WriteEndObject();
        w.WriteEndObject();
    }

    private static void WriteByteLevelFields(Utf8JsonWriter w, bool addPrefixSpace, bool trimOffsets)
    {
        w.WriteString("type", "ByteLevel");
        w.WriteBoolean("add_prefix_space", addPrefixSpace);
        w.WriteBoolean("trim_offsets", trimOffsets);
        w.WriteBoolean("use_regex", true);
    }

    private static void WriteAddedToken(Utf8JsonWriter w, int id, string content, bool includeId)
    {
        w.WriteStartObject();
        if (includeId)
        {
            w.WriteNumber("id", id);
        }
        w.WriteString("content", content);
        w.WriteBoolean("single_word", false);
        w.WriteBoolean("lstrip", false);
        w.WriteBoolean("rstrip", false);
        w.WriteBoolean("normalized", false);
        w.WriteBoolean("special", true);
        w.WriteEndObject();
    }

    private static void WriteVocab(ByteLevelBpe bpe, Utf8JsonWriter w)
    {
        w.WriteStartObject();
        for (int id = 0; id < bpe.VocabSize; id++)
        {
            w.WriteNumber(bpe.Tokens[id], id);
        }
        w.WriteEndObject();
    }

    private static string MergesText(ByteLevelBpe bpe)
    {
        var sb = new StringBuilder("#version: 0.2\n");
        foreach ((int left, int right) in bpe.Merges)
        {
            sb.Append(bpe.Tokens[left]).Append(' ').Append(bpe.Tokens[right]).Append('\n');
        }
        return sb.ToString();
    }

    private static void WriteTokenizerConfig(ByteLevelBpe bpe, Utf8JsonWriter w)
    {
        w.WriteStartObject();
        w.WriteStartObject("added_tokens_decoder");
        foreach ((int id, string content) in Specials(bpe))
        {
            w.WritePropertyName(id.ToString(System.Globalization.CultureInfo.InvariantCulture));
            WriteAddedToken(w, id, content, includeId: false);
        }
        w.WriteEndObject();
        w.WriteString("bos_token", bpe.Options.BosToken);
        w.WriteString("eos_token", bpe.Options.EosToken);
        w.WriteString("pad_token", bpe.Options.PadToken);
        w.WriteNull("unk_token");
        w.WriteBoolean("clean_up_tokenization_spaces", false);
        w.WriteNumber("model_max_length", bpe.Options.ModelMaxLength);
        w.WriteString("tokenizer_class", "PreTrainedTokenizerFast");
        w.WriteEndObject();
    }

    private static void WriteSpecialTokensMap(ByteLevelBpe bpe, Utf8JsonWriter w)
    {
        w.WriteStartObject();
        w.WriteString("bos_token", bpe.Options.BosToken);
        w.WriteString("eos_token", bpe.Options.EosToken);
        w.WriteString("pad_token", bpe.Options.PadToken);
        w.WriteEndObject();
    }

    private static IEnumerable<(int Id, string Content)> Specials(ByteLevelBpe bpe) =>
    [
        (bpe.PadId, bpe.Options.PadToken),
        (bpe.BosId, bpe.Options.BosToken),
        (bpe.EosId, bpe.Options.EosToken),
    ];

    private static void WriteAtomic(string path, Action<Utf8JsonWriter> write)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, Indented))
        {
            write(w);
        }
        buffer.WriteByte((byte)'\n');
        Rlhf.Export.AtomicFile.WriteAllBytes(path, buffer.ToArray());
    }

}
