using System.Text.Json;
using Rlhf.Export.Onnx;
using Rlhf.Inference.Reward;
using Rlhf.Inference.Tokenization;
using DataType = Rlhf.Export.Onnx.Proto.TensorProto.Types.DataType;

namespace Rlhf.Inference.Tests.Reward;

/// <summary>
/// External reward models whose score output is <c>rewards</c> [B] or some other single [B] output, and the
/// <c>joined</c> template (<c>[BOS] prompt response [EOS]</c>) with the reward model's own tokenizer. The graph is a mean
/// of token embeddings over the mask times a weight vector plus a bias; scores are recomputed here in plain loops.
/// </summary>
public sealed class ExternalRewardModelTests : IDisposable
{
    const int H = 4, V = 258, Bos = 256, Eos = 257;   // byte-level vocabulary: ids 0..255 are the bytes, then <s>, </s>
    readonly float[] _emb, _w;
    const float Bias = -0.5f;
    readonly string _dir = Directory.CreateTempSubdirectory("rlhf-extrm-").FullName;

    public ExternalRewardModelTests()
    {
        var rng = new Random(11);
        _emb = [.. Enumerable.Range(0, V * H).Select(_ => (float)(rng.NextDouble() * 2 - 1))];
        _w = [.. Enumerable.Range(0, H).Select(_ => (float)(rng.NextDouble() * 2 - 1))];
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>
    /// model.onnx with outputs named and shaped as given: each (name, rank) is the pooled score as [B] (rank 1) or
    /// [B, 1] (rank 2); <paramref name="decoy"/> adds a [B, 1] "logits" output holding a different value (score + 100).
    /// </summary>
    string Build(string sub, (string Name, int Rank)[] outputs, bool decoy = false)
    {
        string dir = Path.Combine(_dir, sub);
        var b = new GraphBuilder("mean_pool_rm");
        string x = b.Node("Gather", [b.Initializer("embed", _emb, V, H), b.Input("input_ids", DataType.Int64, "batch", "seq")], Attr.Int("axis", 0));
        string m = b.Node("Unsqueeze", [b.Node("Cast", [b.Input("attention_mask", DataType.Int64, "batch", "seq")], Attr.Int("to", (long)DataType.Float)), b.ConstI64(2)]);
        string pooled = b.Node("Div", [b.Node("ReduceSum", [b.Node("Mul", [x, m]), b.ConstI64(1)], Attr.Int("keepdims", 0)),
                                       b.Node("ReduceSum", [m, b.ConstI64(1)], Attr.Int("keepdims", 0))]);
        string score = b.Node("Add", [b.Node("MatMul", [pooled, b.Initializer("head.weight", _w, H, 1)]), b.Initializer("head.bias", [Bias], 1)]);   // [B, 1]
        foreach (var (name, rank) in outputs)
        {
            if (rank == 1) { b.AddNode("Squeeze", [score, b.ConstI64(1)], [name]); b.Output(name, DataType.Float, "batch"); }
            else { b.AddNode("Identity", [score], [name]); b.Output(name, DataType.Float, "batch", 1); }
        }
        if (decoy)
        {
            b.AddNode("Add", [score, b.Initializer("hundred", [100f], 1)], ["logits"]);
            b.Output("logits", DataType.Float, "batch", 1);
        }
        b.Save(dir);
        WriteByteTokenizer(dir);
        return dir;
    }

    /// <summary>A byte-level BPE tokenizer.json without merges (token id = byte) plus &lt;s&gt; and &lt;/s&gt;, named in tokenizer_config.json.</summary>
    static void WriteByteTokenizer(string dir)
    {
        var vocab = Enumerable.Range(0, 256).ToDictionary(i => ByteLevel.ByteToChar((byte)i).ToString(), i => i);
        var json = new
        {
            version = "1.0",
            added_tokens = new object[]
            {
                new { id = Bos, content = "<s>", single_word = false, lstrip = false, rstrip = false, normalized = false, special = true },
                new { id = Eos, content = "</s>", single_word = false, lstrip = false, rstrip = false, normalized = false, special = true },
            },
            pre_tokenizer = new { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = true },
            decoder = new { type = "ByteLevel", add_prefix_space = true, trim_offsets = true, use_regex = true },
            model = new { type = "BPE", vocab, merges = Array.Empty<string>() },
        };
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), JsonSerializer.Serialize(json));
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>"}""");
    }

    /// <summary>The model in plain loops: bias + w · mean of the ids' embeddings.</summary>
    float Expected(int[] ids)
    {
        double y = Bias;
        for (int h = 0; h < H; h++) y += ids.Average(id => (double)_emb[id * H + h]) * _w[h];
        return (float)y;
    }

    /// <summary>Hand ids of the joined template: &lt;s&gt;, the prompt's bytes, a space and the response's bytes, &lt;/s&gt;.</summary>
    static int[] Joined(string prompt, string response) => [Bos, .. (prompt + " " + response).Select(c => (int)c), Eos];

    static readonly RewardRequest[] Requests = [new("The movie was", "great."), new("Bad", "food, slow service"), new("ok", "!")];

    [Theory]
    [InlineData(1, false)]   // rewards [B]
    [InlineData(2, false)]   // rewards [B, 1]
    [InlineData(1, true)]    // rewards [B] next to a logits output: rewards wins
    public void RewardsOutputWithTheJoinedTemplateAndItsOwnTokenizer(int rank, bool decoy)
    {
        using var scorer = RewardScorer.Load(Build($"r{rank}{decoy}", [("rewards", rank)], decoy), new RewardScorerOptions { Threads = 1, BatchSize = 2 });
        Assert.Equal(RewardTemplate.Joined, scorer.Template);                   // a BPE tokenizer: decoder-style RM
        Assert.Equal(Joined("The movie was", "great."), scorer.Encode("The movie was", "great.").Ids);
        Assert.Equal([Bos, .. "ok!".Select(c => (int)c), Eos], scorer.Encode("ok", "!").Ids);      // no space before punctuation
        var scores = scorer.Score(Requests);
        for (int i = 0; i < Requests.Length; i++)
        {
            int[] ids = i == 2 ? [Bos, .. "ok!".Select(c => (int)c), Eos] : Joined(Requests[i].Prompt, Requests[i].Response);
            Assert.Equal(Expected(ids), scores[i], 5);
        }
    }

    [Fact]
    public void ASingleBOutputUnderAnyNameIsTheScore()
    {
        using var scorer = RewardScorer.Load(Build("score", [("score", 1)]), new RewardScorerOptions { Threads = 1 });
        Assert.Equal(Expected(Joined("The movie was", "great.")), scorer.Score([Requests[0]])[0], 5);

        // two outputs, neither called rewards or logits: the spec names the one to use
        string dir = Build("two", [("a", 1), ("b", 2)]);
        var e = Assert.Throws<InvalidDataException>(() => RewardScorer.Load(dir));
        Assert.Contains("no output named rewards or logits", e.Message);
        File.WriteAllText(Path.Combine(dir, RewardSpec.FileName), """{ "output": "b", "mean": 1.0, "std": 4.0 }""");
        using var mapped = RewardScorer.Load(dir, new RewardScorerOptions { Threads = 1 });
        Assert.Equal((Expected(Joined("The movie was", "great.")) - 1f) / 4f, mapped.Score([Requests[0]])[0], 5);
    }

    [Fact]
    public void JoinedTemplateTruncatesThePromptFirstAndKeepsBosAndEos()
    {
        string dir = Build("trunc", [("rewards", 1)]);
        File.WriteAllText(Path.Combine(dir, RewardSpec.FileName), """{ "max_length": 10 }""");
        using var scorer = RewardScorer.Load(dir, new RewardScorerOptions { Threads = 1 });
        // "The movie was great." is 20 bytes + 2 specials: the prompt loses its first 12 bytes ("The movie wa")
        int[] ids = [Bos, .. "s great.".Select(c => (int)c), Eos];
        Assert.Equal(ids, scorer.Encode("The movie was", "great.").Ids);
        Assert.Equal(Expected(ids), scorer.Score([Requests[0]])[0], 5);
    }
}
