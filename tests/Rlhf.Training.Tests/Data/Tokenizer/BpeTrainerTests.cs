using System.Diagnostics;
using System.Text.Json;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Data.Tokenizer;
using Xunit.Abstractions;

namespace Rlhf.Training.Tests.Data.Tokenizer;

public sealed class BpeTrainerTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("rlhf-bpe-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    internal static readonly string[] Probes =
    [
        "Hello, world! The quick brown fox jumps over the lazy dog.",
        "  leading and trailing spaces  ",
        "tabs\tand\nnew\r\nlines\n\n",
        "numbers 12345 and 3.14159, it's we'll they've I'm",
        "unicode: café naïve Ærøskøbing — ελληνικά русский 中文字符 日本語",
        "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇯🇵 and math 𝔘𝔫𝔦",
        "special <|eos|> inside <|bos|>text<|pad|>",
        "",
        "x",
        "\u00a0non-breaking\u2003em space",
    ];

    [Fact]
    public void FirstMergesMatchHandCount()
    {
        // Pieces: "low" x2, " lower", " lowest", " low". Pair counts: (l,o)=5, (o,w)=5 (tie -> smaller ids: l < o),
        // then (lo,w)=5, then (Ġ,low)=3, then (Ġlow,e)=2; everything else occurs once (< MinFrequency 2).
        ByteLevelBpe bpe = BpeTrainer.Train(["low lower lowest", "low low"], new BpeTrainerOptions { VocabSize = 400 });
        string[] merges = [.. bpe.Merges.Select(m => bpe.Tokens[m.Left] + " " + bpe.Tokens[m.Right])];
        Assert.Equal(["l o", "lo w", "Ġ low", "Ġlow e"], merges);
        Assert.Equal(ByteLevelBpe.FirstMergeId + 4, bpe.VocabSize);

        int Byte(char c) => ByteLevelBpe.ByteId((byte)c);
        // "lowest" -> [low, e, s, t] (the "Ġlow e" merge needs the space); " low" -> [Ġlow].
        Assert.Equal([260, Byte('e'), Byte('s'), Byte('t'), 261], bpe.Encode("lowest low"));
        Assert.Equal([bpe.BosId, 262, Byte('r'), bpe.EosId], bpe.Encode("<|bos|> lower<|eos|>"));
    }

    [Fact]
    public void StopsAtVocabSize()
    {
        ByteLevelBpe bpe = BpeTrainer.Train(Corpus(500), new BpeTrainerOptions { VocabSize = 300 });
        Assert.Equal(300, bpe.VocabSize);
        Assert.Equal(300 - ByteLevelBpe.FirstMergeId, bpe.Merges.Count);
        Assert.Equal("<|pad|>", bpe.Tokens[0]);
        Assert.Equal("<|bos|>", bpe.Tokens[1]);
        Assert.Equal("<|eos|>", bpe.Tokens[2]);
        Assert.Equal("Ġ", bpe.Tokens[ByteLevelBpe.ByteId((byte)' ')]);
    }

    [Fact]
    public void IncrementalCountsGiveTheSameMergesAsAFullRecount()
    {
        string[] corpus = [.. Corpus(300)];
        ByteLevelBpe bpe = BpeTrainer.Train(corpus, new BpeTrainerOptions { VocabSize = 420 });
        Assert.Equal(NaiveMerges(corpus, 420 - ByteLevelBpe.FirstMergeId), bpe.Merges);
    }

    [Fact]
    public void ReferenceEncoderRoundTrips()
    {
        ByteLevelBpe bpe = BpeTrainer.Train(Corpus(2000), new BpeTrainerOptions { VocabSize = 600 });
        foreach (string s in Probes)
        {
            Assert.Equal(s, bpe.Decode(bpe.Encode(s), skipSpecial: false));
        }
        Assert.Equal("special  inside text", bpe.Decode(bpe.Encode("special <|eos|> inside <|bos|>text<|pad|>")));
    }

    [Fact]
    public void SavedFolderLoadsThroughTextTokenizerWithTheSameIds()
    {
        var options = new BpeTrainerOptions { VocabSize = 700, ModelMaxLength = 512 };
        ByteLevelBpe bpe = BpeTrainer.Train(Corpus(3000), options);
        bpe.Save(_dir);
        Assert.Empty(Directory.GetFiles(_dir, "*.tmp-*"));

        TextTokenizer tok = TextTokenizer.Load(_dir);
        Assert.Equal(TokenizerKind.TokenizerJsonBpe, tok.Kind);
        Assert.Equal(700, tok.VocabSize);
        Assert.Equal((0, 1, 2), (tok.PadId, tok.BosId, tok.EosId));
        Assert.Equal(new HashSet<int> { 0, 1, 2 }, tok.SpecialIds);
        Assert.Equal(bpe.Tokens[500], tok.TokenText(500));
        foreach (string s in Probes.Concat(Corpus(50).Skip(40)))
        {
            Assert.Equal(bpe.Encode(s), tok.Encode(s));
            Assert.Equal(s, tok.Decode(tok.Encode(s), skipSpecial: false));
        }
        Assert.Equal("a b", tok.Decode([.. tok.Encode("a"), 2, .. tok.Encode(" b"), 0]));

        // vocab.json + merges.txt alone give the same tokenizer.
        string gpt2 = Path.Combine(_dir, "gpt2");
        Directory.CreateDirectory(gpt2);
        foreach (string name in new[] { "vocab.json", "merges.txt", "tokenizer_config.json" })
        {
            File.Copy(Path.Combine(_dir, name), Path.Combine(gpt2, name));
        }
        TextTokenizer fromMerges = TextTokenizer.Load(gpt2);
        Assert.Equal(TokenizerKind.VocabMerges, fromMerges.Kind);
        Assert.Equal((tok.VocabSize, tok.PadId, tok.BosId, tok.EosId), (fromMerges.VocabSize, fromMerges.PadId, fromMerges.BosId, fromMerges.EosId));
        Assert.Equal(tok.SpecialIds.Order(), fromMerges.SpecialIds.Order());
        foreach (string s in Probes)
        {
            Assert.Equal(tok.Encode(s), fromMerges.Encode(s));
        }
    }

    [Fact]
    public void SavedFilesFollowTheHuggingFaceSchema()
    {
        BpeTrainer.Train(Corpus(200), new BpeTrainerOptions { VocabSize = 300 }).Save(_dir);
        using JsonDocument doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(_dir, "tokenizer.json")));
        JsonElement root = doc.RootElement;
        Assert.Equal("1.0", root.GetProperty("version").GetString());
        JsonElement pre = root.GetProperty("pre_tokenizer");
        Assert.Equal("ByteLevel", pre.GetProperty("type").GetString());
        Assert.False(pre.GetProperty("add_prefix_space").GetBoolean());
        Assert.True(pre.GetProperty("trim_offsets").GetBoolean());
        Assert.True(pre.GetProperty("use_regex").GetBoolean());
        Assert.Equal("ByteLevel", root.GetProperty("decoder").GetProperty("type").GetString());
        JsonElement model = root.GetProperty("model");
        Assert.Equal("BPE", model.GetProperty("type").GetString());
        foreach (string key in new[] { "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix" })
        {
            Assert.Equal(JsonValueKind.Null, model.GetProperty(key).ValueKind);
        }
        Assert.False(model.GetProperty("fuse_unk").GetBoolean());
        Assert.False(model.GetProperty("byte_fallback").GetBoolean());
        Assert.False(model.GetProperty("ignore_merges").GetBoolean());
        Assert.Equal(300, model.GetProperty("vocab").EnumerateObject().Count());
        Assert.Equal(300 - ByteLevelBpe.FirstMergeId, model.GetProperty("merges").GetArrayLength());
        JsonElement eos = root.GetProperty("added_tokens")[2];
        Assert.Equal(2, eos.GetProperty("id").GetInt32());
        Assert.Equal("<|eos|>", eos.GetProperty("content").GetString());
        Assert.True(eos.GetProperty("special").GetBoolean());

        using JsonDocument config = JsonDocument.Parse(File.ReadAllText(Path.Combine(_dir, "tokenizer_config.json")));
        Assert.Equal("PreTrainedTokenizerFast", config.RootElement.GetProperty("tokenizer_class").GetString());
        Assert.Equal("<|pad|>", config.RootElement.GetProperty("pad_token").GetString());
        Assert.StartsWith("#version: 0.2\n", File.ReadAllText(Path.Combine(_dir, "merges.txt")));
        Assert.True(File.Exists(Path.Combine(_dir, "special_tokens_map.json")));
    }

    [Fact]
    public void TrainsA2048VocabularyOnAMegabyte()
    {
        // Speed is not asserted here (timing belongs in a benchmark); the elapsed time is only printed.
        string[] corpus = [.. Corpus(20_000)];
        long bytes = corpus.Sum(s => (long)System.Text.Encoding.UTF8.GetByteCount(s));
        var sw = Stopwatch.StartNew();
        ByteLevelBpe bpe = BpeTrainer.Train(corpus, new BpeTrainerOptions { VocabSize = 2048 });
        output.WriteLine($"trained {bpe.VocabSize} tokens on {corpus.Length} texts, {bytes / 1e6:F2} MB, in {sw.Elapsed.TotalSeconds:F2} s");
        Assert.Equal(2048, bpe.VocabSize);
        Assert.True(bytes > 900_000, $"corpus is {bytes} bytes");
        Assert.Equal(2048 - ByteLevelBpe.FirstMergeId, bpe.Merges.Count);
        for (int i = 0; i < bpe.Merges.Count; i++)         // merge i makes token FirstMergeId + i from its two parts
            Assert.Equal(bpe.Tokens[bpe.Merges[i].Left] + bpe.Tokens[bpe.Merges[i].Right], bpe.Tokens[ByteLevelBpe.FirstMergeId + i]);
        foreach (string text in corpus.Take(200))
        {
            int[] ids = bpe.Encode(text);
            Assert.Equal(text, bpe.Decode(ids));
            Assert.True(ids.Length < System.Text.Encoding.UTF8.GetByteCount(text), text);   // merges compress
        }
    }

    [Fact]
    public void RejectsATooSmallVocabulary() =>
        Assert.Throws<ArgumentException>(() => BpeTrainer.Train(["a"], new BpeTrainerOptions { VocabSize = 100 }));

    /// <summary>
    /// Deterministic synthetic sentences (~50 bytes each): Zipf-distributed words from a 4000-word lexicon
    /// of random syllables, plus numbers, punctuation and some non-ASCII text.
    /// </summary>
    internal static IEnumerable<string> Corpus(int sentences)
    {
        string[] onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "ch", "sh", "th", "pl", "gr"];
        string[] vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "é", "ü"];
        string[] codas = ["", "", "n", "r", "s", "t", "ng", "ck", "ll", "st"];
        var rng = new Random(1234);
        var lexicon = new string[4000];
        for (int w = 0; w < lexicon.Length; w++)
        {
            int syllables = 1 + rng.Next(3);
            var sb = new System.Text.StringBuilder();
            for (int k = 0; k < syllables; k++)
            {
                sb.Append(onsets[rng.Next(onsets.Length)]).Append(vowels[rng.Next(vowels.Length)]).Append(codas[rng.Next(codas.Length)]);
            }
            lexicon[w] = sb.ToString();
        }
        string[] punct = [".", "!", "?", ",", " —", "...", " 😀", "'s", ";"];
        for (int i = 0; i < sentences; i++)
        {
            var sb = new System.Text.StringBuilder();
            int words = 5 + rng.Next(6);
            for (int k = 0; k < words; k++)
            {
                if (k > 0) sb.Append(' ');
                double u = rng.NextDouble();
                string word = rng.Next(25) == 0 ? rng.Next(10_000).ToString(System.Globalization.CultureInfo.InvariantCulture)
                    : lexicon[(int)(Math.Pow(lexicon.Length, u)) - 1];
                sb.Append(k == 0 ? char.ToUpperInvariant(word[0]) + word[1..] : word);
                if (rng.Next(8) == 0) sb.Append(punct[rng.Next(punct.Length)]);
            }
            yield return sb.Append('.').ToString();
        }
    }

    /// <summary>Plain BPE: recount every pair over all words before each merge (the definition the trainer must match).</summary>
    private static List<(int Left, int Right)> NaiveMerges(IEnumerable<string> texts, int count)
    {
        var words = texts.SelectMany(ByteLevel.Split).GroupBy(w => w, StringComparer.Ordinal)
            .Select(g => (Syms: System.Text.Encoding.UTF8.GetBytes(g.Key).Select(ByteLevelBpe.ByteId).ToList(), Count: (long)g.Count()))
            .ToList();
        var merges = new List<(int, int)>();
        for (int m = 0; m < count; m++)
        {
            var pairs = new Dictionary<(int, int), long>();
            foreach ((List<int> syms, long c) in words)
            {
                for (int i = 0; i + 1 < syms.Count; i++)
                {
                    pairs[(syms[i], syms[i + 1])] = pairs.GetValueOrDefault((syms[i], syms[i + 1])) + c;
                }
            }
            var best = pairs.OrderByDescending(p => p.Value).ThenBy(p => p.Key.Item1).ThenBy(p => p.Key.Item2).First();
            if (best.Value < 2)
            {
                break;
            }
            int id = ByteLevelBpe.FirstMergeId + m;
            merges.Add(best.Key);
            foreach ((List<int> syms, _) in words)
            {
                for (int i = 0; i + 1 < syms.Count; i++)
                {
                    if (syms[i] == best.Key.Item1 && syms[i + 1] == best.Key.Item2)
                    {
                        syms[i] = id;
                        syms.RemoveAt(i + 1);
                    }
                }
            }
        }
        return merges;
    }
}
