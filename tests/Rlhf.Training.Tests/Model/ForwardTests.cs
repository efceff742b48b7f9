using Rlhf.Training.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Model;

public sealed class ForwardTests
{
    [Fact]
    public void PositionIdsFromLeftPaddedMask()
    {
        var mask = torch.tensor(new long[] { 0, 0, 1, 1, 1, 1, 1, 1, 1, 1 }, [2, 5]);
        Assert.Equal(new long[] { 0, 0, 0, 1, 2, 0, 1, 2, 3, 4 }, PositionIds.FromAttentionMask(mask).data<long>().ToArray());
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("qwen2")]
    public void LeftPaddedBatchMatchesRowsAlone(string type)
    {
        var m = TinyModels.Randomized(TinyModels.Config(type), 11);
        long[] a = [5, 6, 7, 8, 9, 10], b = [12, 13, 14];
        using var noGrad = torch.no_grad();
        var ids = TinyModels.Ids(a, [0, 0, 0, .. b]);
        var mask = TinyModels.Ids([1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]);
        var logits = m.Forward(ids, mask, PositionIds.FromAttentionMask(mask));
        Assert.False(logits.isnan().any().item<bool>());
        Assert.True(TinyModels.MaxAbsDiff(logits[0], TinyModels.RowLogits(m, a)) < 1e-5);
        Assert.True(TinyModels.MaxAbsDiff(logits[1].narrow(0, 3, 3), TinyModels.RowLogits(m, b)) < 1e-5);
    }

    [Fact]
    public void KvCachedStepsMatchFullForward()
    {
        var m = TinyModels.Randomized(TinyModels.Config("qwen2"), 5);
        using var noGrad = torch.no_grad();
        long[] a = [5, 6, 7, 8, 9, 10, 11], b = [12, 13, 14, 15, 16];
        var ids = TinyModels.Ids(a, [0, 0, .. b]);
        var mask = TinyModels.Ids([1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]);
        var pos = PositionIds.FromAttentionMask(mask);
        var full = m.Forward(ids, mask, pos);                                     // [2, 7, V]

        using var cache = new KvCache(2);
        var parts = new List<Tensor> { m.Forward(ids.narrow(1, 0, 3), mask.narrow(1, 0, 3), pos.narrow(1, 0, 3), cache) };
        for (int t = 3; t < 7; t++)
            parts.Add(m.Forward(ids.narrow(1, t, 1), mask.narrow(1, 0, t + 1), pos.narrow(1, t, 1), cache));
        Assert.Equal(7, cache.Length);
        var stepped = torch.cat(parts, 1);
        Assert.True(TinyModels.MaxAbsDiff(full[0], stepped[0]) < 1e-5);
        Assert.True(TinyModels.MaxAbsDiff(full[1].narrow(0, 2, 5), stepped[1].narrow(0, 2, 5)) < 1e-5);
    }

    [Fact]
    public void ShapeErrorsSayWhatIsExpected()
    {
        var m = TinyModels.Randomized(TinyModels.Config(), 1);
        var ids = TinyModels.Ids([1, 2, 3]);
        var e = Assert.Throws<ArgumentException>(() => m.Forward(ids, torch.ones(1, 4, ScalarType.Int64), torch.zeros(1, 3, ScalarType.Int64)));
        Assert.Contains("attentionMask", e.Message);
    }

    [Fact]
    public void DropoutOnlyInTraining()
    {
        var cfg = TinyModels.Config() with { AttentionDropout = 0.5, ResidualDropout = 0.5 };
        var m = TinyModels.Randomized(cfg, 2);
        var ids = TinyModels.Ids([1, 2, 3, 4]);
        var mask = torch.ones(1, 4, ScalarType.Int64);
        var pos = PositionIds.FromAttentionMask(mask);
        using var noGrad = torch.no_grad();
        Assert.True(TinyModels.Same(m.Forward(ids, mask, pos), m.Forward(ids, mask, pos)));
        m.train();
        Assert.False(TinyModels.Same(m.Forward(ids, mask, pos), m.Forward(ids, mask, pos)));
    }

    [Fact]
    public void SequenceClassifierScoresLastRealToken()
    {
        var cfg = TinyModels.Config();
        var rm = LlamaForSequenceClassification.Create(cfg, torch.CPU, ScalarType.Float32, 4);
        rm.eval();
        using var noGrad = torch.no_grad();
        var ids = TinyModels.Ids([0, 0, 5, 6, 7], [5, 6, 7, 8, 0]);
        var mask = TinyModels.Ids([0, 0, 1, 1, 1], [1, 1, 1, 1, 0]);
        Assert.Equal(new long[] { 4, 3 }, LlamaForSequenceClassification.LastRealIndex(mask).data<long>().ToArray());
        var values = rm.Values(ids, mask);
        Assert.Equal(new long[] { 2, 5 }, values.shape);
        var scores = rm.Scores(ids, mask);
        Assert.Equal(values[0, 4].item<float>(), scores[0].item<float>());
        Assert.Equal(values[1, 3].item<float>(), scores[1].item<float>());
        // left padding does not change the score of [5, 6, 7]
        var alone = rm.Scores(TinyModels.Ids([5, 6, 7]), TinyModels.Ids([1, 1, 1]));
        Assert.True(Math.Abs(alone[0].item<float>() - scores[0].item<float>()) < 1e-5);
    }

    [Fact]
    public void GradientsReachEveryParameter()
    {
        var m = TinyModels.Randomized(TinyModels.Config("qwen2", tied: true), 8);
        m.train();
        var ids = TinyModels.Ids([1, 2, 3, 4], [0, 5, 6, 7]);
        var mask = TinyModels.Ids([1, 1, 1, 1], [0, 1, 1, 1]);
        var logits = m.Forward(ids, mask, PositionIds.FromAttentionMask(mask));
        logits.pow(2).mean().backward();
        foreach (var (name, p) in m.named_parameters())
        {
            Assert.NotNull(p.grad);
            Assert.True(p.grad!.abs().sum().item<float>() > 0, name);
        }
    }

    [Fact]
    public void Bf16ModelMatchesFloat32AtEveryPosition()
    {
        // Scrambled weights (logits of a few units, not the ≈0.1 of a default init) copied into a bf16 model; a left-padded
        // batch compared at every real position, tolerance relative to the float32 logits' range.
        var cfg = TinyModels.Config("qwen2");
        using var f32 = TinyModels.Randomized(cfg, 21);
        using var bf16 = LlamaForCausalLM.Create(cfg, torch.CPU, ScalarType.BFloat16, 1);
        bf16.eval();
        using var noGrad = torch.no_grad();
        var source = f32.state_dict();
        foreach (var (name, p) in bf16.named_parameters()) p.copy_(source[name]);
        Assert.All(bf16.parameters(), p => Assert.Equal(ScalarType.BFloat16, p.dtype));

        var ids = TinyModels.Ids([0, 0, 4, 5, 17, 33, 9, 41], [3, 8, 12, 7, 25, 6, 44, 2]);
        var mask = TinyModels.Ids([0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]);
        var pos = PositionIds.FromAttentionMask(mask);
        var low = bf16.Forward(ids, mask, pos);
        Assert.Equal(ScalarType.BFloat16, low.dtype);
        var reference = f32.Forward(ids, mask, pos);
        var real = mask.to(ScalarType.Bool).unsqueeze(-1);                          // [B, S, 1]
        var diff = (low.to(ScalarType.Float32) - reference).abs().masked_fill(real.logical_not(), 0);
        float range = (reference.max() - reference.min()).item<float>();
        float worst = diff.max().item<float>();
        Assert.True(range > 2, $"logit range {range}: weights too small to test anything");
        Assert.True(worst < 0.03f * range, $"max |bf16 - f32| = {worst}, logit range {range}");
    }
}
