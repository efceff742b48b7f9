using System.Globalization;
using System.Text;
using Rlhf.Export;
using Rlhf.Training.Common;
using ScottPlot;

namespace Rlhf.Training.Ppo;

/// <summary>Gold score (null where the task has none), RM score and KL of best-of-N sampling from the SFT model (N = 1 is the SFT model).</summary>
public sealed record BestOfNPoint(int N, double? Gold, double Score, double Kl);

/// <summary>One point of the PPO policy's path on the held-out prompts: iteration (0 is the SFT model), KL to the SFT model (nats per response), mean gold (null where the task has none) and RM score.</summary>
public sealed record PolicyPathPoint(int Iteration, double Kl, double? Gold, double Score);

/// <summary>Perplexity of the SFT and PPO models on the same held-out pretraining-style text (what PPO costs there: the alignment tax).</summary>
public sealed record CorpusPerplexity(double Sft, double Ppo, long Tokens);

/// <summary>SFT vs best-of-N vs PPO on the same held-out prompts (and, where measured, on held-out corpus text). The gold
/// arrays are null where the task has no gold scorer (a user's prompts).</summary>
public sealed record Comparison(
    string[] Prompts, string[] SftResponses, double[]? SftGold, double[] SftScores,
    string[] PpoResponses, double[]? PpoGold, double[] PpoScores, double PpoKl, IReadOnlyList<BestOfNPoint> BestOfN,
    CorpusPerplexity? Corpus = null)
{
    /// <summary>Response length in tokens of each SFT sample [prompts].</summary>
    public int[] SftLengths { get; init; } = [];
    /// <summary>Response length in tokens of each PPO sample [prompts].</summary>
    public int[] PpoLengths { get; init; } = [];

    /// <summary>Mean and standard deviation of the SFT model's gold scores (null without gold).</summary>
    public (double Mean, double Std)? SftGoldStats => SftGold is null ? null : Statistics.MeanStd(SftGold);

    /// <summary>Mean and standard deviation of PPO's gold scores (null without gold).</summary>
    public (double Mean, double Std)? PpoGoldStats => PpoGold is null ? null : Statistics.MeanStd(PpoGold);

    /// <summary>(PPO gold − SFT gold) / SFT gold std, null without gold.</summary>
    public double? GoldGainInSftStd => SftGoldStats is { } s && PpoGoldStats is { } p ? (p.Mean - s.Mean) / Math.Max(s.Std, 1e-9) : null;

    /// <summary>Share of held-out prompts where the reward model scores PPO's sample above SFT's (ties count half, <see cref="PpoEvaluation.WinRate"/>).</summary>
    public double RmWinRate => PpoEvaluation.WinRate(PpoScores, SftScores);
}

/// <summary>The PPO stage's pictures and its Markdown report.</summary>
public static class PpoReport
{
    /// <summary>Training curves: reward/score/gold, KL, and losses per iteration (PNG).</summary>
    public static void Curves(string folder, MetricsTable m)
    {
        (string, double[], double[]) S(string label, string col) => Plots.Series(label, m, col, "iteration");
        Plots.Lines(Path.Combine(folder, "reward.png"), "PPO: reward per iteration", "iteration", "mean per response",
            [S("RM score", "objective/scores"), S("RLHF reward (score − β·KL)", "objective/rlhf_reward"), S("gold score", "objective/gold"), S("held-out gold", "eval/gold")]);
        Plots.Lines(Path.Combine(folder, "kl.png"), "PPO: KL to the SFT model", "iteration", "nats per response",
            [S("rollout KL", "objective/kl"), S("held-out KL", "eval/kl")]);
        Plots.Lines(Path.Combine(folder, "losses.png"), "PPO: losses and clipping", "iteration", "value",
            [S("policy loss", "loss/policy"), S("value loss", "loss/value"), S("policy clip fraction", "policy/clipfrac"), S("approx KL", "policy/approxkl")]);
    }

    /// <summary>
    /// report.md and report.png: two panels side by side, held-out gold score (left) and RM score (right) against KL to the
    /// SFT model, each with PPO's path over its evaluations (<see cref="PolicyPath"/>), its final policy, and SFT best-of-N.
    /// </summary>
    public static void Write(string folder, Comparison c, MetricsTable metrics, double ptxCoef)
    {
        var path = PolicyPath(metrics, c);
        var final = new PolicyPathPoint(path[^1].Iteration, c.PpoKl, c.PpoGoldStats?.Mean, c.PpoScores.Average());
        var scorePanel = TradeOffPanel("Reward-model score vs KL (held-out prompts)", "mean RM score per response", path, final, c.BestOfN, p => p.Score, b => b.Score);
        if (c.GoldGainInSftStd is not null)
            Plots.SideBySide(Path.Combine(folder, "report.png"), 1400, 600,
                TradeOffPanel("Gold score vs KL (held-out prompts)", "mean gold score per response", path, final, c.BestOfN, p => p.Gold!.Value, b => b.Gold!.Value),
                scorePanel);
        else Plots.SideBySide(Path.Combine(folder, "report.png"), 700, 600, scorePanel);

        string F(double x) => x.ToString("F3", CultureInfo.InvariantCulture);
        bool gold = c.GoldGainInSftStd is not null;
        string G(double? x) => gold ? $" {F(x!.Value)} |" : "";
        var md = new StringBuilder();
        md.AppendLine("# PPO report").AppendLine();
        md.Append($"Held-out prompts: {c.Prompts.Length}. ");
        if (c.SftGoldStats is { } sft && c.PpoGoldStats is { } ppo)
            md.Append($"Gold score gain of PPO over SFT: {F(ppo.Mean - sft.Mean)} ({F(c.GoldGainInSftStd!.Value)} SFT standard deviations). ");
        else md.Append("These prompts are not the default task's, so the policies are compared by the reward model alone. ");
        md.AppendLine($"RM win rate of PPO against SFT: {F(c.RmWinRate)}. Mean response length: SFT {F(Mean(c.SftLengths))}, PPO {F(Mean(c.PpoLengths))} tokens.").AppendLine();
        md.AppendLine($"| policy |{(gold ? " gold score |" : "")} RM score | KL to SFT (nats) |").AppendLine($"|---|{(gold ? "---|" : "")}---|---|");
        foreach (var b in c.BestOfN) md.AppendLine($"| {(b.N == 1 ? "SFT" : $"SFT best-of-{b.N}")} |{G(b.Gold)} {F(b.Score)} | {F(b.Kl)} |");
        md.AppendLine($"| PPO |{G(c.PpoGoldStats?.Mean)} {F(c.PpoScores.Average())} | {F(c.PpoKl)} |").AppendLine();
        if (c.Corpus is { } p)
            md.AppendLine($"Held-out corpus perplexity ({p.Tokens} predicted tokens of the default task's reviews, the alignment tax; " +
                          $"ptx_coef {ptxCoef.ToString(CultureInfo.InvariantCulture)}): SFT {F(p.Sft)}, PPO {F(p.Ppo)} ({(p.Ppo / p.Sft - 1).ToString("+0.0%;-0.0%", CultureInfo.InvariantCulture)}).").AppendLine();
        md.AppendLine(gold
            ? "![gold score (left) and RM score (right) against KL to the SFT model: PPO's path over its evaluations, its final policy, and SFT best-of-N](report.png)"
            : "![RM score against KL to the SFT model: PPO's path over its evaluations, its final policy, and SFT best-of-N](report.png)").AppendLine();
        md.AppendLine("![reward](reward.png) ![kl](kl.png)").AppendLine();
        md.AppendLine("## Samples (same prompts)").AppendLine();
        string what = gold ? "gold" : "RM score";
        md.AppendLine($"| prompt | SFT | {what} | PPO | {what} |").AppendLine("|---|---|---|---|---|");
        double[] sftCol = c.SftGold ?? c.SftScores, ppoCol = c.PpoGold ?? c.PpoScores;
        for (int i = 0; i < Math.Min(12, c.Prompts.Length); i++)
            md.AppendLine($"| {Cell(c.Prompts[i])} | {Cell(c.SftResponses[i])} | {F(sftCol[i])} | {Cell(c.PpoResponses[i])} | {F(ppoCol[i])} |");
        AtomicFile.WriteAllText(Path.Combine(folder, "report.md"), md.ToString());
    }

    static string Cell(string s) => s.Replace("|", "\\|").Replace("\n", " ");

    static double Mean(int[] xs) => xs.Length == 0 ? double.NaN : xs.Average();

    /// <summary>
    /// The PPO policy's path on the held-out prompts: the SFT model at KL 0 (iteration 0; the comparison's SFT samples, which
    /// are best-of-N with N = 1), then each metrics row that has <c>eval/kl</c>, <c>eval/score</c> and, where the task has a
    /// gold scorer, <c>eval/gold</c>, in iteration order (a resumed run's table holds the rows from before the resume too).
    /// </summary>
    public static IReadOnlyList<PolicyPathPoint> PolicyPath(MetricsTable metrics, Comparison c)
    {
        bool withGold = c.SftGoldStats is not null;
        var path = new List<PolicyPathPoint> { new(0, 0, c.SftGoldStats?.Mean, c.SftScores.Average()) };
        foreach (var r in metrics.Rows)
            if (r.TryGetValue("iteration", out double it) && r.TryGetValue("eval/kl", out double kl) && r.TryGetValue("eval/score", out double score))
            {
                bool hasGold = r.TryGetValue("eval/gold", out double gold);
                if (withGold && !hasGold) continue;
                path.Add(new PolicyPathPoint((int)it, kl, withGold ? gold : null, score));
            }
        return path;
    }

    /// <summary>
    /// Indices of the path points that get an iteration label: at most <paramref name="count"/>, evenly spread over the
    /// points after the SFT start, always including the last (which <see cref="TradeOffPanel"/> labels as the final policy).
    /// </summary>
    internal static int[] LabelledPoints(int points, int count = 4)
    {
        int evals = points - 1;
        if (evals <= 0) return [];
        if (evals <= count) return [.. Enumerable.Range(1, evals)];
        return [.. Enumerable.Range(0, count).Select(k => 1 + (int)Math.Round((double)k * (evals - 1) / (count - 1))).Distinct()];
    }

    static readonly Color PathColor = Color.FromHex("#1f77b4"), FinalColor = Color.FromHex("#d62728"), BestOfNColor = Color.FromHex("#7f7f7f");

    /// <summary>One panel of report.png: <paramref name="y"/> of the policy's path and of SFT best-of-N against KL to the SFT model.</summary>
    static Plot TradeOffPanel(string title, string yLabel, IReadOnlyList<PolicyPathPoint> path, PolicyPathPoint final, IReadOnlyList<BestOfNPoint> bestOfN,
                              Func<PolicyPathPoint, double> y, Func<BestOfNPoint, double> bestOfNY)
    {
        var plt = new Plot();
        double[] kls = [.. path.Select(p => p.Kl), .. bestOfN.Select(b => b.Kl), final.Kl];
        double kMin = kls.Min(), kSpan = Math.Max(kls.Max() - kMin, 1e-12);
        // Labels sit above-left of the path (it rises to the right) and below-right of best-of-N, turned inwards at the panel's edges.
        Alignment Above(double kl) => (kl - kMin) / kSpan < 0.1 ? Alignment.LowerLeft : Alignment.LowerRight;
        Alignment Below(double kl) => (kl - kMin) / kSpan > 0.9 ? Alignment.UpperRight : Alignment.UpperLeft;
        if (bestOfN.Count > 0)
        {
            var bon = plt.Add.Scatter(bestOfN.Select(b => b.Kl).ToArray(), bestOfN.Select(bestOfNY).ToArray(), BestOfNColor);
            bon.LegendText = "SFT best-of-N";
            bon.LineWidth = 2;
            bon.LinePattern = LinePattern.Dashed;
            bon.MarkerSize = 8;
            bon.MarkerShape = MarkerShape.FilledSquare;
            foreach (var b in bestOfN.Where(b => b.N > 1)) Label(plt, $"N = {b.N}", b.Kl, bestOfNY(b), BestOfNColor, Below(b.Kl));
        }
        var line = plt.Add.Scatter(path.Select(p => p.Kl).ToArray(), path.Select(y).ToArray(), PathColor);
        line.LegendText = "PPO at each evaluation";
        line.LineWidth = 2;
        line.MarkerSize = path.Count > 40 ? 4 : 7;
        Label(plt, "SFT", path[0].Kl, y(path[0]), Colors.Black, Below(path[0].Kl));
        foreach (int i in LabelledPoints(path.Count).Where(i => i < path.Count - 1))
            Label(plt, $"it {path[i].Iteration}", path[i].Kl, y(path[i]), PathColor, Above(path[i].Kl));
        var end = plt.Add.Marker(final.Kl, y(final), MarkerShape.FilledDiamond, 16, FinalColor);
        end.LegendText = $"PPO final policy (it {final.Iteration})";
        Label(plt, $"final (it {final.Iteration})", final.Kl, y(final), FinalColor, Above(final.Kl));
        plt.Title(title);
        plt.XLabel("KL(π ‖ π_SFT), nats per response");
        plt.YLabel(yLabel);
        plt.Axes.Margins(0.12, 0.15);   // room for the labels beside the outermost points
        Plots.LegendBelow(plt);
        return plt;
    }

    /// <summary>
    /// A small label beside the point (<paramref name="x"/>, <paramref name="y"/>); <paramref name="corner"/> is the label's
    /// corner at the point, so <see cref="Alignment.LowerRight"/> puts it above-left and <see cref="Alignment.UpperLeft"/> below-right.
    /// </summary>
    static void Label(Plot plt, string text, double x, double y, Color color, Alignment corner)
    {
        var t = plt.Add.Text(text, x, y);
        t.LabelFontSize = 12;
        t.LabelFontColor = color;
        t.Alignment = corner;
        t.OffsetX = corner switch { Alignment.LowerRight or Alignment.UpperRight => -4, Alignment.LowerLeft or Alignment.UpperLeft => 6, _ => 0 };
        t.OffsetY = corner is Alignment.LowerRight or Alignment.LowerLeft or Alignment.LowerCenter ? -4 : 6;
    }
}
