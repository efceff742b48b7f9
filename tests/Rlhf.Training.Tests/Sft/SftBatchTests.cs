using Rlhf.Training.Sft;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Sft;

public sealed class SftBatchTests
{
    [Fact]
    public void CollateMasksPromptAndPaddingAndShiftsTargets()
    {
        // ids: [BOS=1, p=5, r=6, EOS=2] with prompt length 2; second row shorter: [1, 7, 2], prompt length 2
        var batch = SftBatch.Collate([new TokenizedExample([1, 5, 6, 2], 2), new TokenizedExample([1, 7, 2], 2)], padId: 0, CPU);
        Assert.Equal(new long[] { 1, 5, 6, 2, 1, 7, 2, 0 }, batch.InputIds.data<long>().ToArray());
        Assert.Equal(new long[] { 1, 1, 1, 1, 1, 1, 1, 0 }, batch.AttentionMask.data<long>().ToArray());
        Assert.Equal(new long[] { 0, 1, 2, 3, 0, 1, 2, 0 }, batch.PositionIds.data<long>().ToArray());
        // position t predicts t+1 when t+1 >= prompt length: row 0 targets at t=1 (6), t=2 (EOS); row 1 at t=1 (EOS)
        Assert.Equal(new long[] { -100, 6, 2, -100, -100, 2, -100, -100 }, batch.Targets.data<long>().ToArray());
        Assert.Equal(3, batch.TargetCount);
    }

    [Fact]
    public void SummedNllEqualsHandComputedCrossEntropy()
    {
        // logits for 3 positions over V=2; targets 1, ignore, 0
        float[] l = [0f, 1f, 5f, -5f, 2f, 0f];
        using var logits = tensor(l, [1, 3, 2]);
        using var targets = tensor(new long[] { 1, -100, 0 }, [1, 3]);
        double expected = -Math.Log(Math.Exp(1) / (1 + Math.Exp(1))) - Math.Log(Math.Exp(2) / (Math.Exp(2) + 1));
        Assert.Equal(expected, SftLoss.SummedNll(logits, targets).item<float>(), 5);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void SummedNllOverPackedRowsAndCountedPositionsEqualsTheLossOverAllLogitsAndItsGradient(bool tied)
    {
        using var model = Tests.Model.TinyModels.Randomized(Tests.Model.TinyModels.Config(tied: tied), seed: 5);
        model.eval();
        using var batch = SftBatch.Collate([new TokenizedExample([1, 5, 6, 9, 2], 2), new TokenizedExample([1, 7, 8, 2], 3),
                                            new TokenizedExample([1, 4, 2], 1)], padId: 0, CPU);
        var full = SftLoss.SummedNll(model.Forward(batch.InputIds, batch.AttentionMask, batch.PositionIds), batch.Targets);
        full.backward();
        var expectedGrads = model.parameters().Select(p => p.grad!.clone()).ToList();
        model.zero_grad();
        var counted = SftLoss.SummedNll(model, batch);
        counted.backward();
        Assert.True(Math.Abs(full.item<float>() - counted.item<float>()) < 1e-4, $"packed {counted.item<float>()} vs all logits {full.item<float>()}");
        foreach (var (p, g) in model.parameters().Zip(expectedGrads))
            Assert.True((p.grad! - g).abs().max().item<float>() < 1e-5f, "gradients differ");
    }

    [Fact]
    public void PermutationIsSeededAndComplete()
    {
        int[] a = Rlhf.Training.Common.SplitMixRandom.Permutation(100, 42), b = Rlhf.Training.Common.SplitMixRandom.Permutation(100, 42), c = Rlhf.Training.Common.SplitMixRandom.Permutation(100, 43);
        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
        Assert.Equal(Enumerable.Range(0, 100), a.Order());
    }
}
