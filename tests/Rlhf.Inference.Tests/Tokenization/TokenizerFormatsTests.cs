using System.Text;
using System.Text.Json;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Inference.Tests.Tokenization;

/// <summary>The tokenizer formats the docs name that had no test: a WordPiece <c>tokenizer.json</c> and a SentencePiece unigram <c>tokenizer.model</c>.</summary>
public sealed class TokenizerFormatsTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("rlhf-tokfmt-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Folder(string name) => Directory.CreateDirectory(Path.Combine(_dir, name)).FullName;

    private static readonly string[] BertVocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s", ".", "play", "##ing"];

    /// <summary>A WordPiece tokenizer.json laid out as tokenizers writes bert-base-uncased's.</summary>
    private static string WordPieceJson(bool lowercase)
    {
        var json = new
        {
            version = "1.0",
            truncation = (object?)null,
            padding = (object?)null,
            added_tokens = new[] { 0, 1, 2, 3, 4 }.Select(id => new { id, content = BertVocab[id], single_word = false, lstrip = false, rstrip = false, normalized = false, special = true }),
            normalizer = new { type = "BertNormalizer", clean_text = true, handle_chinese_chars = true, strip_accents = (object?)null, lowercase },
            pre_tokenizer = new { type = "BertPreTokenizer" },
            post_processor = new
            {
                type = "TemplateProcessing",
                single = new object[] { new { SpecialToken = new { id = "[CLS]", type_id = 0 } }, new { Sequence = new { id = "A", type_id = 0 } }, new { SpecialToken = new { id = "[SEP]", type_id = 0 } } },
            },
            decoder = new { type = "WordPiece", prefix = "##", cleanup = true },
            model = new
            {
                type = "WordPiece", unk_token = "[UNK]", continuing_subword_prefix = "##", max_input_chars_per_word = 100,
                vocab = BertVocab.Select((t, i) => (t, i)).ToDictionary(x => x.t, x => x.i),
            },
        };
        return JsonSerializer.Serialize(json);
    }

    [Fact]
    public void WordPieceTokenizerJsonEncodesToHandComputedIds()
    {
        string dir = Folder("wp-json");
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), WordPieceJson(lowercase: true));
        TextTokenizer tok = TextTokenizer.Load(dir);

        Assert.Equal(TokenizerKind.TokenizerJsonWordPiece, tok.Kind);
        Assert.Equal(14, tok.VocabSize);
        // lower-cased: the cat ##s sat on the mat . ; "playing" -> play ##ing; an unknown word -> [UNK]
        Assert.Equal([5, 6, 10, 7, 8, 5, 9, 11], tok.Encode("The cats sat on the mat."));
        Assert.Equal([12, 13, 1], tok.Encode("playing xyz"));
        Assert.Equal((2, 3, 0, 1), (tok.BosId, tok.EosId, tok.PadId, tok.UnkId));   // [CLS], [SEP], [PAD], [UNK]
        Assert.Equal(new HashSet<int> { 0, 1, 2, 3, 4 }, tok.SpecialIds);
        Assert.Equal("the cats sat", tok.Decode([2, 5, 6, 10, 7, 3]));
        Assert.Equal(10, tok.TokenId("##s"));

        // the normalizer's lowercase flag is honoured: a cased tokenizer does not know "The"
        string cased = Folder("wp-json-cased");
        File.WriteAllText(Path.Combine(cased, "tokenizer.json"), WordPieceJson(lowercase: false));
        Assert.Equal([1, 6, 10], TextTokenizer.Load(cased).Encode("The cats"));
    }

    /// <summary>
    /// A SentencePiece unigram ModelProto written by hand (sentencepiece_model.proto: pieces = 1 {piece = 1, score = 2,
    /// type = 3}, trainer_spec = 2 {model_type = 3 (1 = UNIGRAM), unk_id = 40, bos_id = 41, eos_id = 42},
    /// normalizer_spec = 3 {name = 1, add_dummy_prefix = 3, remove_extra_whitespaces = 4, escape_whitespaces = 5}).
    /// </summary>
    private static byte[] TinyUnigram()
    {
        (string Piece, float Score, int Type)[] pieces =
        [
            ("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3),
            ("▁hello", -5f, 1), ("▁he", -1f, 1), ("llo", -2f, 1), ("▁world", -2.5f, 1), ("▁wor", -1.5f, 1), ("ld", -1.5f, 1),
            ("▁", -10f, 1), ("h", -10f, 1), ("e", -10f, 1), ("l", -10f, 1), ("o", -10f, 1), ("w", -10f, 1), ("r", -10f, 1), ("d", -10f, 1),
        ];
        var model = new List<byte>();
        foreach ((string piece, float score, int type) in pieces)
        {
            var p = new List<byte>();
            Bytes(p, 1, Encoding.UTF8.GetBytes(piece));
            Tag(p, 2, 5);
            p.AddRange(BitConverter.GetBytes(score));
            Varint(p, 3, (ulong)type);
            Bytes(model, 1, [.. p]);
        }
        var trainer = new List<byte>();
        Varint(trainer, 3, 1);    // UNIGRAM
        Varint(trainer, 40, 0);
        Varint(trainer, 41, 1);
        Varint(trainer, 42, 2);
        Bytes(model, 2, [.. trainer]);
        var normalizer = new List<byte>();
        Bytes(normalizer, 1, Encoding.UTF8.GetBytes("identity"));
        Varint(normalizer, 3, 1);
        Varint(normalizer, 4, 1);
        Varint(normalizer, 5, 1);
        Bytes(model, 3, [.. normalizer]);
        return [.. model];

        static void Raw(List<byte> s, ulong v)
        {
            for (; v >= 0x80; v >>= 7) s.Add((byte)(v | 0x80));
            s.Add((byte)v);
        }
        static void Tag(List<byte> s, int field, int wire) => Raw(s, ((ulong)field << 3) | (uint)wire);
        static void Varint(List<byte> s, int field, ulong v) { Tag(s, field, 0); Raw(s, v); }
        static void Bytes(List<byte> s, int field, byte[] b) { Tag(s, field, 2); Raw(s, (ulong)b.Length); s.AddRange(b); }
    }

    [Fact]
    public void SentencePieceUnigramPicksTheBestScoringSegmentation()
    {
        string dir = Folder("spm-unigram");
        File.WriteAllBytes(Path.Combine(dir, "tokenizer.model"), TinyUnigram());
        TextTokenizer tok = TextTokenizer.Load(dir);

        Assert.Equal(TokenizerKind.SentencePiece, tok.Kind);
        Assert.Equal(17, tok.VocabSize);
        Assert.Equal((1, 2, 0), (tok.BosId, tok.EosId, tok.UnkId));
        // Viterbi over piece scores, not longest match: "▁he" + "llo" = −3 beats "▁hello" = −5; "▁world" = −2.5 beats "▁wor" + "ld" = −3
        Assert.Equal([4, 5, 6], tok.Encode("hello world"));
        Assert.Equal("hello world", tok.Decode([1, 4, 5, 6, 2]));
        Assert.Equal("▁he", tok.TokenText(4));
        Assert.Equal(6, tok.TokenId("▁world"));
    }
}
