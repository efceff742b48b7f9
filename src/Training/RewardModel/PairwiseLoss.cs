using static TorchSharp.torch;

namespace Rlhf.Training.RewardModel;

/// <summary>The reward model's ranking objective and its held-out measures.</summary>
public static class PairwiseLoss
{
    /// <summary>
    /// InstructGPT's comparison loss with an optional margin m, each prompt counting once:
    /// loss = −(1/P) Σ_prompts (1/C(K,2)) Σ_(w,l) log σ(r_w − r_l − m),
    /// given as per-pair tensors with weight 1/(pairs of its prompt) and <paramref name="prompts"/> = P.
    /// </summary>
    /// <param name="chosen">r(x, y_w) [N]</param>
    /// <param name="rejected">r(x, y_l) [N]</param>
    /// <param name="weight">1 / (pairs of the pair's prompt) [N]</param>
    public static Tensor Compute(Tensor chosen, Tensor rejected, Tensor weight, int prompts, double margin = 0)
    {
        if (chosen.dim() != 1 || !chosen.shape.SequenceEqual(rejected.shape) || !chosen.shape.SequenceEqual(weight.shape))
            throw new ArgumentException($"chosen, rejected and weight must be [N]; got [{string.Join(",", chosen.shape)}], [{string.Join(",", rejected.shape)}], [{string.Join(",", weight.shape)}]");
        var logSigmoid = nn.functional.logsigmoid(chosen - rejected - margin);
        return -(logSigmoid * weight).sum() / prompts;
    }

    /// <summary>Share of pairs (i, j) with different gold values where the scores order i, j the same way as the gold.</summary>
    public static double PairwiseAccuracy(IReadOnlyList<double> scores, IReadOnlyList<double> gold, IEnumerable<(int I, int J)> pairs)
    {
        int right = 0, counted = 0;
        foreach (var (i, j) in pairs)
        {
            if (gold[i] == gold[j]) continue;
            counted++;
            if (Math.Sign(scores[i] - scores[j]) == Math.Sign(gold[i] - gold[j])) right++;
        }
        return counted == 0 ? double.NaN : right / (double)counted;
    }

    /// <summary>Spearman rank correlation: Pearson correlation of the average ranks (ties share their mean rank).</summary>
    public static double Spearman(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        if (x.Count != y.Count) throw new ArgumentException("x and y must have the same length");
        double[] rx = Ranks(x), ry = Ranks(y);
        double mx = rx.Average(), my = ry.Average();
        double sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < rx.Length; i++)
        {
            sxy += (rx[i] - mx) * (ry[i] - my);
            sxx += (rx[i] - mx) * (rx[i] - mx);
            syy += (ry[i] - my) * (ry[i] - my);
        }
        return sxy / Math.Sqrt(sxx * syy);
    }

    /// <summary>1-based ranks with ties averaged.</summary>
    internal static double[] Ranks(IReadOnlyList<double> v)
    {
        int[] order = Enumerable.Range(0, v.Count).OrderBy(i => v[i]).ToArray();
        var ranks = new double[v.Count];
        for (int a = 0; a < order.Length;)
        {
            int b = a;
            while (b + 1 < order.Length && v[order[b + 1]] == v[order[a]]) b++;
            double r = (a + b) / 2.0 + 1;
            for (int k = a; k <= b; k++) ranks[order[k]] = r;
            a = b + 1;
        }
        return ranks;
    }
}
