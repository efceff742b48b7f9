using System.Text;
using System.Text.Json;
using Rlhf.Inference.Tokenization;

namespace Rlhf.Inference.Tests.Tokenization;

public sealed class TextTokenizerTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("rlhf-tok-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Folder(string name)
    {
        string path = Path.Combine(_dir, name);
        Directory.CreateDirectory(path);
        return path;
    }

    // ---- byte-level BPE tokenizer.json ----------------------------------------------------------------

    /// <summary>
    /// Ids 0..255: the bytes in order; 256 "Ġt", 257 "he", 258 "Ġthe"; added 259 &lt;|endoftext|&gt;, 260 &lt;|pad|&gt;.
    /// </summary>
    private static string TinyTokenizerJson(bool pairMerges)
    {
        var vocab = new Dictionary<string, int>();
        for (int b = 0; b < 256; b++)
        {
            vocab[ByteLevel.ByteToChar((byte)b).ToString()] = b;
        }
        vocab["Ġt"] = 256;
        vocab["he"] = 257;
        vocab["Ġthe"] = 258;
        object[] merges = pairMerges
            ? [new[] { "Ġ", "t" }, new[] { "h", "e" }, new[] { "Ġt", "he" }]
            : ["Ġ t", "h e", "Ġt he"];
        var json = new
        {
            version = "1.0",
            truncation = (object?)null,
            padding = (object?)null,
            added_tokens = new object[]
            {
                new { id = 259, content = "<|endoftext|>", single_word = false, lstrip = false, rstrip = false, normalized = false, special = true },
                new { id = 260, content = "<|pad|>", single_word = false, lstrip = false, rstrip = false, normalized = false, special = true },
            },
            normalizer = (object?)null,
            pre_tokenizer = new { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = true },
            post_processor = (object?)null,
            decoder = new { type = "ByteLevel", add_prefix_space = true, trim_offsets = true, use_regex = true },
            model = new { type = "BPE", dropout = (object?)null, unk_token = (object?)null, continuing_subword_prefix = (object?)null, end_of_word_suffix = (object?)null, fuse_unk = false, byte_fallback = false, ignore_merges = false, vocab, merges },
        };
        return JsonSerializer.Serialize(json);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void TokenizerJsonBpeEncodesWithMergesInEitherForm(bool pairMerges)
    {
        string dir = Folder("bpe");
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), TinyTokenizerJson(pairMerges));
        TextTokenizer tok = TextTokenizer.Load(dir);

        Assert.Equal(TokenizerKind.TokenizerJsonBpe, tok.Kind);
        Assert.Equal(261, tok.VocabSize);
        Assert.Equal([258, 258], tok.Encode(" the the"));
        Assert.Equal(['t', 257, 259, 'a'], tok.Encode("the<|endoftext|>a"));
        Assert.Equal("Ġthe", tok.TokenText(258));
        Assert.Null(tok.TokenText(999));
        Assert.Equal(new HashSet<int> { 259, 260 }, tok.SpecialIds);
        Assert.Equal("the a", tok.Decode([.. tok.Encode("the"), 259, .. tok.Encode(" a")]));
        Assert.Equal("the<|endoftext|> a", tok.Decode([.. tok.Encode("the"), 259, .. tok.Encode(" a")], skipSpecial: false));
        foreach (string s in new[] { "héllo wörld", "emoji 😀👍🏽 and 中文", "  two  spaces\n\ttab", "a'll b's" })
        {
            Assert.Equal(s, tok.Decode(tok.Encode(s)));
        }
    }

    [Fact]
    public void SplitPreTokenizerRegexIsUsed()
    {
        // Llama 3 / Qwen2 layout: Sequence[Split(regex), ByteLevel(use_regex=false)]; digits go in groups of at most 3.
        var json = System.Text.Json.Nodes.JsonNode.Parse(TinyTokenizerJson(pairMerges: false))!;
        json["model"]!["vocab"]!["34"] = 261;
        json["model"]!["merges"]!.AsArray().Add("3 4");
        string llama3 = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        json["pre_tokenizer"] = System.Text.Json.Nodes.JsonNode.Parse(
            $$"""{"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": {{JsonSerializer.Serialize(llama3)}}}, "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}""");
        string dir = Folder("llama3");
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json.ToJsonString());
        TextTokenizer tok = TextTokenizer.Load(dir);
        Assert.Equal(['1', '2', '3', '4', '5'], tok.Encode("12345")); // "123" | "45": the 3 and 4 never meet
        Assert.Equal([261], tok.Encode("34"));

        json["pre_tokenizer"] = System.Text.Json.Nodes.JsonNode.Parse("""{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}""");
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json.ToJsonString());
        Assert.Equal(['1', '2', 261, '5'], TextTokenizer.Load(dir).Encode("12345")); // GPT-2 regex keeps the digits together
        Assert.Equal(261, TextTokenizer.Load(dir).TokenId("34"));
    }

    [Fact]
    public void SpecialTokensComeFromTheConfigsWithAPadDistinctFromEos()
    {
        string dir = Folder("specials");
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), TinyTokenizerJson(pairMerges: false));
        // eos as an object, pad == eos (as many HF checkpoints do), bos only as an id in config.json.
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"),
            """{"eos_token": {"content": "<|endoftext|>", "special": true}, "pad_token": "<|endoftext|>", "bos_token": null}""");
        File.WriteAllText(Path.Combine(dir, "config.json"), """{"bos_token_id": 259, "eos_token_id": [7, 8]}""");
        TextTokenizer tok = TextTokenizer.Load(dir);
        Assert.Equal(259, tok.EosId);
        Assert.Equal(259, tok.BosId);
        Assert.Equal(260, tok.PadId); // the dedicated <|pad|> wins over EOS-as-pad

        // special_tokens_map.json fills what tokenizer_config.json leaves out; config.json ids come last.
        string dir2 = Folder("specials2");
        File.WriteAllText(Path.Combine(dir2, "tokenizer.json"), TinyTokenizerJson(pairMerges: false));
        File.WriteAllText(Path.Combine(dir2, "special_tokens_map.json"), """{"pad_token": {"content": "<|pad|>"}, "eos_token": "<|endoftext|>"}""");
        File.WriteAllText(Path.Combine(dir2, "config.json"), """{"eos_token_id": [7, 8], "bos_token_id": 1}""");
        TextTokenizer tok2 = TextTokenizer.Load(dir2);
        Assert.Equal((259, 260, 1), (tok2.EosId, tok2.PadId, tok2.BosId));
        Assert.Contains(1, tok2.SpecialIds);
    }

    [Fact]
    public void VocabJsonAndMergesTxtLoadLikeTokenizerJson()
    {
        string jsonDir = Folder("json");
        File.WriteAllText(Path.Combine(jsonDir, "tokenizer.json"), TinyTokenizerJson(pairMerges: true));
        string gptDir = Folder("gpt2");
        using (JsonDocument doc = JsonDocument.Parse(TinyTokenizerJson(pairMerges: false)))
        {
            var vocab = doc.RootElement.GetProperty("model").GetProperty("vocab").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetInt32());
            vocab["<|endoftext|>"] = 259;
            vocab["<|pad|>"] = 260;
            File.WriteAllText(Path.Combine(gptDir, "vocab.json"), JsonSerializer.Serialize(vocab));
            File.WriteAllText(Path.Combine(gptDir, "merges.txt"),
                "#version: 0.2\n" + string.Join('\n', doc.RootElement.GetProperty("model").GetProperty("merges").EnumerateArray().Select(m => m.GetString())) + "\n");
        }
        File.WriteAllText(Path.Combine(gptDir, "special_tokens_map.json"), """{"eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}""");
        File.WriteAllText(Path.Combine(jsonDir, "special_tokens_map.json"), """{"eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}""");

        TextTokenizer a = TextTokenizer.Load(jsonDir), b = TextTokenizer.Load(gptDir);
        Assert.Equal(TokenizerKind.VocabMerges, b.Kind);
        Assert.Equal((a.VocabSize, a.EosId, a.PadId), (b.VocabSize, b.EosId, b.PadId));
        Assert.Equal(a.SpecialIds.Order(), b.SpecialIds.Order());
        foreach (string s in new[] { " the the", "the<|endoftext|>a<|pad|>", "unicode ünïcödé 😀", "" })
        {
            Assert.Equal(a.Encode(s), b.Encode(s));
            Assert.Equal(a.Decode(a.Encode(s)), b.Decode(b.Encode(s)));
        }
    }

    // ---- WordPiece ----------------------------------------------------------------------------------

    [Fact]
    public void WordPieceVocabTxtEncodesToHandComputedIds()
    {
        string dir = Folder("bert");
        string[] vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s", ".", "play", "##ing"];
        File.WriteAllLines(Path.Combine(dir, "vocab.txt"), vocab);
        TextTokenizer tok = TextTokenizer.Load(dir);

        Assert.Equal(TokenizerKind.WordPiece, tok.Kind);
        Assert.Equal(14, tok.VocabSize);
        // lower-cased (BERT uncased default): the cat ##s sat on the mat .
        Assert.Equal([5, 6, 10, 7, 8, 5, 9, 11], tok.Encode("The cats sat on the mat."));
        Assert.Equal([12, 13, 1], tok.Encode("playing xyz"));
        Assert.Equal((2, 3, 0, 1), (tok.BosId, tok.EosId, tok.PadId, tok.UnkId)); // [CLS], [SEP], [PAD], [UNK]
        Assert.Equal(new HashSet<int> { 0, 1, 2, 3, 4 }, tok.SpecialIds);
        Assert.Equal("the cats sat", tok.Decode([2, 5, 6, 10, 7, 3]));
        Assert.Equal("##s", tok.TokenText(10));
    }

    // ---- SentencePiece ------------------------------------------------------------------------------

    [Fact]
    public void SentencePieceModelEncodesToHandComputedIds()
    {
        string dir = Folder("spm");
        File.WriteAllBytes(Path.Combine(dir, "tokenizer.model"), TinySentencePieceBpe());
        TextTokenizer tok = TextTokenizer.Load(dir);

        Assert.Equal(TokenizerKind.SentencePiece, tok.Kind);
        Assert.Equal(16, tok.VocabSize);
        Assert.Equal((1, 2, 0), (tok.BosId, tok.EosId, tok.UnkId));
        // "▁hello▁world": ll, he, hell, hello, ▁hello by score; "▁world" has no merges.
        Assert.Equal([7, 8, 13, 12, 14, 11, 15], tok.Encode("hello world"));
        Assert.Equal("hello world", tok.Decode(tok.Encode("hello world")));
        Assert.Equal("hello world", tok.Decode([1, 7, 8, 13, 12, 14, 11, 15, 2]));
        Assert.Equal("▁hello", tok.TokenText(7));
    }

    [Fact]
    public void BrokenSentencePieceModelGivesAClearError()
    {
        string dir = Folder("spm-broken");
        File.WriteAllBytes(Path.Combine(dir, "tokenizer.model"), [0xFF, 0xFF, 0xFF, 0x01, 0x02]);
        var e = Assert.Throws<InvalidDataException>(() => TextTokenizer.Load(dir));
        Assert.Contains("tokenizer.model", e.Message);
    }

    /// <summary>
    /// A SentencePiece BPE ModelProto written by hand (sentencepiece_model.proto: pieces = 1 {piece = 1, score = 2,
    /// type = 3}, trainer_spec = 2 {model_type = 3}, normalizer_spec = 3 {name = 1, add_dummy_prefix = 3,
    /// remove_extra_whitespaces = 4, escape_whitespaces = 5}).
    /// </summary>
    private static byte[] TinySentencePieceBpe()
    {
        (string Piece, float Score, int Type)[] pieces =
        [
            ("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3),
            ("ll", -1, 1), ("he", -2, 1), ("hell", -3, 1), ("hello", -4, 1), ("▁hello", -5, 1),
            ("▁", -6, 1), ("h", -7, 1), ("e", -8, 1), ("l", -9, 1), ("o", -10, 1), ("w", -11, 1), ("r", -12, 1), ("d", -13, 1),
        ];
        var model = new ProtoWriter();
        foreach ((string piece, float score, int type) in pieces)
        {
            var p = new ProtoWriter();
            p.String(1, piece);
            p.Float(2, score);
            p.Varint(3, (ulong)type);
            model.Message(1, p);
        }
        var trainer = new ProtoWriter();
        trainer.Varint(3, 2); // BPE
        trainer.Varint(40, 0); // unk_id
        trainer.Varint(41, 1); // bos_id
        trainer.Varint(42, 2); // eos_id
        model.Message(2, trainer);
        var normalizer = new ProtoWriter();
        normalizer.String(1, "identity");
        normalizer.Varint(3, 1);
        normalizer.Varint(4, 1);
        normalizer.Varint(5, 1);
        model.Message(3, normalizer);
        return model.ToArray();
    }

    private sealed class ProtoWriter
    {
        private readonly MemoryStream _s = new();

        public void Varint(int field, ulong value)
        {
            Raw(((ulong)field << 3) | 0);
            Raw(value);
        }

        public void Float(int field, float value)
        {
            Raw(((ulong)field << 3) | 5);
            _s.Write(BitConverter.GetBytes(value));
        }

        public void String(int field, string value) => Bytes(field, Encoding.UTF8.GetBytes(value));

        public void Message(int field, ProtoWriter inner) => Bytes(field, inner.ToArray());

        public byte[] ToArray() => _s.ToArray();

        private void Bytes(int field, byte[] bytes)
        {
            Raw(((ulong)field << 3) | 2);
            Raw((ulong)bytes.Length);
            _s.Write(bytes);
        }

        private void Raw(ulong v)
        {
            while (v >= 0x80)
            {
                _s.WriteByte((byte)(v | 0x80));
                v >>= 7;
            }
            _s.WriteByte((byte)v);
        }
    }

    // ---- errors ---------------------------------------------------------------------------------------

    [Fact]
    public void FolderWithoutTokenizerFilesListsWhatWasLookedFor()
    {
        string dir = Folder("empty");
        File.WriteAllText(Path.Combine(dir, "config.json"), "{}");
        var e = Assert.Throws<FileNotFoundException>(() => TextTokenizer.Load(dir));
        foreach (string name in new[] { "tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "vocab.txt" })
        {
            Assert.Contains(name, e.Message);
        }
        Assert.Throws<DirectoryNotFoundException>(() => TextTokenizer.Load(Path.Combine(_dir, "nope")));
    }

    [Fact]
    public void UnsupportedTokenizerJsonModelIsNamedInTheError()
    {
        string dir = Folder("unigram");
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), """{"version": "1.0", "model": {"type": "Unigram", "vocab": [["a", 0.0]]}}""");
        var e = Assert.Throws<FileNotFoundException>(() => TextTokenizer.Load(dir));
        Assert.Contains("Unigram", e.Message);
    }
}
