using Rlhf.Training.Data;
using Rlhf.Training.RewardModel;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.RewardModel;

public sealed class PairwiseLossTests
{
    static double LogSigmoid(double x) => -Math.Log(1 + Math.Exp(-x));

    [Fact]
    public void EachPromptCountsOnceWhateverItsNumberOfPairs()
    {
        // prompt A: 3 pairs (weights 1/3), prompt B: 1 pair (weight 1)
        using var chosen = tensor(new float[] { 1f, 0.5f, -1f, 0f });
        using var rejected = tensor(new float[] { 0f, 0.5f, 1f, 2f });
        using var weight = tensor(new float[] { 1f / 3, 1f / 3, 1f / 3, 1f });
        double a = (LogSigmoid(1) + LogSigmoid(0) + LogSigmoid(-2)) / 3, b = LogSigmoid(-2);
        Assert.Equal(-(a + b) / 2, PairwiseLoss.Compute(chosen, rejected, weight, prompts: 2).item<float>(), 5);
        Assert.Equal(-(LogSigmoid(0.5) + LogSigmoid(-0.5) + LogSigmoid(-2.5)) / 3 / 2 - LogSigmoid(-2.5) / 2,
            PairwiseLoss.Compute(chosen, rejected, weight, prompts: 2, margin: 0.5).item<float>(), 5);
    }

    [Fact]
    public void GradientPushesChosenUpAndRejectedDown()
    {
        using var chosen = tensor(new float[] { 0f }, requires_grad: true);
        using var rejected = tensor(new float[] { 0f }, requires_grad: true);
        using var w = tensor(new float[] { 1f });
        PairwiseLoss.Compute(chosen, rejected, w, 1).backward();
        Assert.Equal(-0.5f, chosen.grad!.item<float>(), 6);      // d/dr_w −log σ(r_w − r_l) = −(1 − σ(0))
        Assert.Equal(0.5f, rejected.grad!.item<float>(), 6);
    }

    [Fact]
    public void RankedRecordsGiveAllKChoose2PairsWinnerFirst()
    {
        var g = RmGroup.FromRanked(new RankedExample("p", ["a", "b", "c", "d"], [2, 0, 3, 1]));
        Assert.Equal(6, g.Pairs.Count);
        Assert.Contains((1, 0), g.Pairs);   // rank 0 beats rank 2
        Assert.Contains((3, 2), g.Pairs);   // rank 1 beats rank 3
        Assert.All(g.Pairs, p => Assert.True(g.Gold[p.W] > g.Gold[p.L]));
    }

    [Fact]
    public void AccuracySkipsGoldTies()
    {
        double[] scores = [3, 1, 2, 0];
        double[] gold = [1, 0, 0, 5];
        (int, int)[] pairs = [(0, 1), (1, 2), (0, 3), (2, 1)];
        // (0,1): right; (1,2): gold tie skipped; (0,3): wrong; (2,1): tie skipped
        Assert.Equal(0.5, PairwiseLoss.PairwiseAccuracy(scores, gold, pairs));
    }

    [Fact]
    public void SpearmanMatchesTheClosedFormWithoutTies()
    {
        double[] x = [1, 2, 3, 4, 5], y = [2, 1, 4, 3, 5];
        // 1 − 6 Σd² / (n(n² − 1)), d = (1, −1, 1, −1, 0)
        Assert.Equal(1 - 6.0 * 4 / (5 * 24), PairwiseLoss.Spearman(x, y), 12);
        Assert.Equal([1.5, 1.5, 3], PairwiseLoss.Ranks([7, 7, 9]));
    }

    [Fact]
    public void NormalizationGivesMeanZeroStdOne()
    {
        double[] raw = [1, 2, 3, 4];
        var n = RewardNormalization.From(raw, unitStd: true);
        var z = raw.Select(n.Apply).ToArray();
        Assert.Equal(0, z.Average(), 12);
        Assert.Equal(1, Math.Sqrt(z.Sum(v => v * v) / 3), 12);
    }
}
