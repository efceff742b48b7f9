using Rlhf.Export.Onnx;
using Rlhf.Inference.Reward;
using DataType = Rlhf.Export.Onnx.Proto.TensorProto.Types.DataType;

namespace Rlhf.Inference.Tests.Reward;

/// <summary>
/// An external "encoder classifier" reward model built by hand: word + token-type embeddings, mean pooling over the
/// mask, a linear head; with a WordPiece vocab.txt. Scores are checked against the same arithmetic done here in plain loops.
/// </summary>
public sealed class RewardScorerTests : IDisposable
{
    const int H = 4;
    static readonly string[] Vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "movie", "was", "great", "bad", "very", ".", "fun", "[MASK]"];
    readonly float[] _words, _types, _w;
    readonly float _bias = 0.25f;
    readonly string _dir = Path.Combine(Path.GetTempPath(), $"rlhf-rm-{Guid.NewGuid():N}");

    public RewardScorerTests()
    {
        var rng = new Random(7);
        _words = [.. Enumerable.Range(0, Vocab.Length * H).Select(_ => (float)(rng.NextDouble() * 2 - 1))];
        _types = [.. Enumerable.Range(0, 2 * H).Select(_ => (float)(rng.NextDouble() * 2 - 1))];
        _w = [.. Enumerable.Range(0, H * 3).Select(_ => (float)(rng.NextDouble() * 2 - 1))];
    }

    public void Dispose()
    {
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }

    /// <summary>Writes model.onnx (+ vocab.txt) with <paramref name="columns"/> logits and the given input names.</summary>
    string Build(int columns = 1, string ids = "input_ids", string mask = "attention_mask", bool tokenTypes = true, string sub = "m")
    {
        string dir = Path.Combine(_dir, sub);
        var b = new GraphBuilder("encoder_classifier");
        string x = b.Node("Gather", [b.Initializer("word_embeddings", _words, Vocab.Length, H), b.Input(ids, DataType.Int64, "batch", "seq")], Attr.Int("axis", 0));
        if (tokenTypes)
            x = b.Node("Add", [x, b.Node("Gather", [b.Initializer("token_type_embeddings", _types, 2, H), b.Input("token_type_ids", DataType.Int64, "batch", "seq")], Attr.Int("axis", 0))]);
        string m = b.Node("Unsqueeze", [b.Node("Cast", [b.Input(mask, DataType.Int64, "batch", "seq")], Attr.Int("to", (long)DataType.Float)), b.ConstI64(2)]);
        string sum = b.Node("ReduceSum", [b.Node("Mul", [x, m]), b.ConstI64(1)], Attr.Int("keepdims", 0));
        string cnt = b.Node("ReduceSum", [m, b.ConstI64(1)], Attr.Int("keepdims", 0));
        string pooled = b.Node("Div", [sum, cnt]);
        float[] w = [.. Enumerable.Range(0, H * columns).Select(i => _w[i])];
        b.AddNode("Add", [b.Node("MatMul", [pooled, b.Initializer("classifier.weight", w, H, columns)]), b.Initializer("classifier.bias", Enumerable.Repeat(_bias, columns).ToArray(), columns)], ["logits"]);
        b.Output("logits", DataType.Float, "batch", columns);
        b.Save(dir);
        File.WriteAllLines(Path.Combine(dir, "vocab.txt"), Vocab);
        return dir;
    }

    /// <summary>The classifier in plain loops: mean over tokens of (word + type embedding), then · w[:, column] + bias.</summary>
    float Expected(string[] tokens, int[] types, int column = 0, int columns = 1)
    {
        var pooled = new double[H];
        for (int t = 0; t < tokens.Length; t++)
        {
            int id = Array.IndexOf(Vocab, tokens[t]);
            Assert.True(id >= 0, tokens[t]);
            for (int h = 0; h < H; h++) pooled[h] += _words[id * H + h] + _types[types[t] * H + h];
        }
        double y = _bias;
        for (int h = 0; h < H; h++) y += pooled[h] / tokens.Length * _w[h * columns + column];
        return (float)y;
    }

    [Fact]
    public void ScoresPairsWithCLSSEPTemplateAndTokenTypes()
    {
        using var scorer = RewardScorer.Load(Build(), new RewardScorerOptions { Threads = 1, BatchSize = 2 });
        Assert.Equal(RewardTemplate.Pair, scorer.Template);
        var (ids, types) = scorer.Encode("The movie was", "very great.");
        Assert.Equal(new[] { 2, 4, 5, 6, 3, 9, 7, 10, 3 }, ids);
        Assert.Equal(new[] { 0, 0, 0, 0, 0, 1, 1, 1, 1 }, types);

        var scores = scorer.Score([new("The movie was", "very great."), new("the movie", "bad"), new("Movie", "was fun fun fun.")]);
        float e0 = Expected(["[CLS]", "the", "movie", "was", "[SEP]", "very", "great", ".", "[SEP]"], [0, 0, 0, 0, 0, 1, 1, 1, 1]);
        float e1 = Expected(["[CLS]", "the", "movie", "[SEP]", "bad", "[SEP]"], [0, 0, 0, 0, 1, 1]);
        float e2 = Expected(["[CLS]", "movie", "[SEP]", "was", "fun", "fun", "fun", ".", "[SEP]"], [0, 0, 0, 1, 1, 1, 1, 1, 1]);
        Assert.Equal(e0, scores[0], 5);
        Assert.Equal(e1, scores[1], 5);   // padded in a batch with a longer row
        Assert.Equal(e2, scores[2], 5);
    }

    [Fact]
    public void SpecNormalisesTruncatesAndPicksALabel()
    {
        string dir = Build(columns: 2);
        File.WriteAllText(Path.Combine(dir, RewardSpec.FileName), """{ "label_index": 1, "max_length": 6, "mean": 0.5, "std": 2.0 }""");
        using var scorer = RewardScorer.Load(Path.Combine(dir, "model.onnx"), new RewardScorerOptions { Threads = 1 });
        float score = scorer.Score([new("The movie was", "very great.")])[0];
        // 3 + 3 tokens + 3 specials > 6: the prompt is cut from its start.
        float raw = Expected(["[CLS]", "[SEP]", "very", "great", ".", "[SEP]"], [0, 0, 1, 1, 1, 1], column: 1, columns: 2);
        Assert.Equal((raw - 0.5f) / 2f, score, 5);
    }

    [Fact]
    public void MultiColumnOutputWithoutLabelIndexIsRejected()
    {
        var e = Assert.Throws<InvalidDataException>(() => RewardScorer.Load(Build(columns: 3)));
        Assert.Contains("label_index", e.Message);
    }

    [Fact]
    public void SignatureMismatchListsExpectedAndFound()
    {
        var e = Assert.Throws<InvalidDataException>(() => RewardScorer.Load(Build(ids: "ids", mask: "mask", tokenTypes: false)));
        Assert.Contains("no input 'input_ids'", e.Message);
        Assert.Contains("ids [batch,seq] Int64", e.Message);
        Assert.Contains("reward_spec.json", e.Message);

        // The same model with its names mapped by a spec works.
        string dir = Build(ids: "ids", mask: "mask", tokenTypes: false, sub: "mapped");
        File.WriteAllText(Path.Combine(dir, RewardSpec.FileName), """{ "input_ids": "ids", "attention_mask": "mask" }""");
        using var scorer = RewardScorer.Load(dir);
        Assert.Equal(RewardTemplate.Pair, scorer.Template);
        float expected = Expected(["[CLS]", "the", "movie", "was", "[SEP]", "very", "great", ".", "[SEP]"], [0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Without token types the type-0 embedding is not added: subtract its contribution.
        double typeTerm = 0;
        for (int h = 0; h < H; h++) typeTerm += _types[h] * _w[h];
        Assert.Equal(expected - (float)typeTerm, scorer.Score([new("The movie was", "very great.")])[0], 5);
    }

    [Fact]
    public void TextTemplateIsOneSequenceOfPromptSpaceResponse()
    {
        string dir = Build(sub: "text");
        File.WriteAllText(Path.Combine(dir, RewardSpec.FileName), """{ "template": "text" }""");
        using var scorer = RewardScorer.Load(dir, new RewardScorerOptions { Threads = 1 });
        Assert.Equal(RewardTemplate.Text, scorer.Template);
        var (ids, types) = scorer.Encode("The movie was", "very great.");
        Assert.Equal(new[] { 2, 4, 5, 6, 9, 7, 10, 3 }, ids);            // [CLS] the movie was very great . [SEP]
        Assert.Equal(new int[8], types);
        float expected = Expected(["[CLS]", "the", "movie", "was", "very", "great", ".", "[SEP]"], [0, 0, 0, 0, 0, 0, 0, 0]);
        Assert.Equal(expected, scorer.Score([new("The movie was", "very great.")])[0], 5);
        Assert.False(scorer.Spec.Normalises);
    }

    [Fact]
    public void PairWithAnEmptyPromptIsASingleSequence()
    {
        using var scorer = RewardScorer.Load(Build(sub: "empty"), new RewardScorerOptions { Threads = 1 });
        Assert.Equal(RewardTemplate.Pair, scorer.Template);
        var (ids, types) = scorer.Encode("", "The movie was fun.");
        Assert.Equal(new[] { 2, 4, 5, 6, 11, 10, 3 }, ids);               // [CLS] the movie was fun . [SEP]
        Assert.Equal(new int[7], types);
        float expected = Expected(["[CLS]", "the", "movie", "was", "fun", ".", "[SEP]"], [0, 0, 0, 0, 0, 0, 0]);
        Assert.Equal(expected, scorer.Score([new("", "The movie was fun.")])[0], 5);
    }

    [Fact]
    public void TemplateOptionOverridesTheSpecAndMeanOrStdMarkTheSpecNormalised()
    {
        string dir = Build(sub: "override");
        File.WriteAllText(Path.Combine(dir, RewardSpec.FileName), """{ "template": "pair", "std": 2.0 }""");
        using var scorer = RewardScorer.Load(dir, new RewardScorerOptions { Threads = 1, Template = RewardTemplate.Text });
        Assert.Equal(RewardTemplate.Text, scorer.Template);
        Assert.True(scorer.Spec.Normalises);
        float expected = Expected(["[CLS]", "movie", "fun", "[SEP]"], [0, 0, 0, 0]) / 2f;
        Assert.Equal(expected, scorer.Score([new("movie", "fun")])[0], 5);
    }
}
