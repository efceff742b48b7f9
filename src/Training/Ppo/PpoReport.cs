using System.Globalization;
using System.Text;
using Rlhf.Export;
using Rlhf.Training.Common;
using ScottPlot;

namespace Rlhf.Training.Ppo;

/// <summary>Gold score, RM score and KL of best-of-N sampling from the SFT model (N = 1 is the SFT model).</summary>
public sealed record BestOfNPoint(int N, double Gold, double Score, double Kl);

/// <summary>Perplexity of the SFT and PPO models on the same held-out pretraining-style text (what PPO costs there: the alignment tax).</summary>
public sealed record CorpusPerplexity(double Sft, double Ppo, long Tokens);

/// <summary>SFT vs best-of-N vs PPO on the same held-out prompts (and, where measured, on held-out corpus text).</summary>
public sealed record Comparison(
    string[] Prompts, string[] SftResponses, double[] SftGold, double[] SftScores,
    string[] PpoResponses, double[] PpoGold, double[] PpoScores, double PpoKl, IReadOnlyList<BestOfNPoint> BestOfN,
    CorpusPerplexity? Corpus = null)
{
    /// <summary>Mean and standard deviation of the SFT model's gold scores.</summary>
    public (double Mean, double Std) SftGoldStats => TrainerParts.MeanStd(SftGold);

    /// <summary>Mean and standard deviation of PPO's gold scores.</summary>
    public (double Mean, double Std) PpoGoldStats => TrainerParts.MeanStd(PpoGold);
}

/// <summary>The PPO stage's pictures and its Markdown report.</summary>
public static class PpoReport
{
    /// <summary>Training curves: reward/score/gold, KL, and losses per iteration (PNG).</summary>
    public static void Curves(string folder, MetricsTable m)
    {
        (string, double[], double[]) S(string label, string col) => TrainerParts.Series(label, m, col, "iteration");
        Plots.Lines(Path.Combine(folder, "reward.png"), "PPO: reward per iteration", "iteration", "mean per response",
            [S("RM score", "objective/scores"), S("RLHF reward (score − β·KL)", "objective/rlhf_reward"), S("gold score", "objective/gold"), S("held-out gold", "eval/gold")]);
        Plots.Lines(Path.Combine(folder, "kl.png"), "PPO: KL to the SFT model", "iteration", "nats per response",
            [S("rollout KL", "objective/kl"), S("held-out KL", "eval/kl")]);
        Plots.Lines(Path.Combine(folder, "losses.png"), "PPO: losses and clipping", "iteration", "value",
            [S("policy loss", "loss/policy"), S("value loss", "loss/value"), S("policy clip fraction", "policy/clipfrac"), S("approx KL", "policy/approxkl")]);
    }

    /// <summary>report.md and report.png (gold score vs KL for SFT, best-of-N and PPO on one pair of axes).</summary>
    public static void Write(string folder, Comparison c, double ptxCoef)
    {
        var plt = new Plot();
        var bon = plt.Add.Scatter(c.BestOfN.Select(b => b.Kl).ToArray(), c.BestOfN.Select(b => b.Gold).ToArray());
        bon.LegendText = "SFT best-of-N (N = " + string.Join(", ", c.BestOfN.Select(b => b.N)) + ")";
        bon.MarkerSize = 9;
        foreach (var b in c.BestOfN) plt.Add.Text($"N={b.N}", b.Kl, b.Gold);
        var ppo = plt.Add.Scatter(new[] { c.PpoKl }, new[] { c.PpoGoldStats.Mean });
        ppo.LegendText = "PPO";
        ppo.MarkerSize = 12;
        ppo.LineWidth = 0;
        plt.Title("Gold score vs KL to the SFT model (held-out prompts)");
        plt.XLabel("KL(π ‖ π_SFT), nats per response");
        plt.YLabel("mean gold score");
        plt.ShowLegend(Alignment.LowerRight);
        AtomicFile.Write(Path.Combine(folder, "report.png"), tmp => plt.SavePng(tmp, 900, 550));

        string F(double x) => x.ToString("F3", CultureInfo.InvariantCulture);
        var (sftMean, sftStd) = c.SftGoldStats;
        var (ppoMean, _) = c.PpoGoldStats;
        var md = new StringBuilder();
        md.AppendLine("# PPO report").AppendLine();
        md.AppendLine($"Held-out prompts: {c.Prompts.Length}. Gold score gain of PPO over SFT: {F(ppoMean - sftMean)} " +
                      $"({F((ppoMean - sftMean) / Math.Max(sftStd, 1e-9))} SFT standard deviations).").AppendLine();
        md.AppendLine("| policy | gold score | RM score | KL to SFT (nats) |").AppendLine("|---|---|---|---|");
        foreach (var b in c.BestOfN) md.AppendLine($"| {(b.N == 1 ? "SFT" : $"SFT best-of-{b.N}")} | {F(b.Gold)} | {F(b.Score)} | {F(b.Kl)} |");
        md.AppendLine($"| PPO | {F(ppoMean)} | {F(c.PpoScores.Average())} | {F(c.PpoKl)} |").AppendLine();
        if (c.Corpus is { } p)
            md.AppendLine($"Held-out corpus perplexity ({p.Tokens} predicted tokens of the default task's reviews, the alignment tax; " +
                          $"ptx_coef {ptxCoef.ToString(CultureInfo.InvariantCulture)}): SFT {F(p.Sft)}, PPO {F(p.Ppo)} ({(p.Ppo / p.Sft - 1).ToString("+0.0%;-0.0%", CultureInfo.InvariantCulture)}).").AppendLine();
        md.AppendLine("![gold vs KL](report.png)").AppendLine();
        md.AppendLine("![reward](reward.png) ![kl](kl.png)").AppendLine();
        md.AppendLine("## Samples (same prompts)").AppendLine();
        md.AppendLine("| prompt | SFT | gold | PPO | gold |").AppendLine("|---|---|---|---|---|");
        for (int i = 0; i < Math.Min(12, c.Prompts.Length); i++)
            md.AppendLine($"| {Cell(c.Prompts[i])} | {Cell(c.SftResponses[i])} | {F(c.SftGold[i])} | {Cell(c.PpoResponses[i])} | {F(c.PpoGold[i])} |");
        AtomicFile.WriteAllText(Path.Combine(folder, "report.md"), md.ToString());
    }

    static string Cell(string s) => s.Replace("|", "\\|").Replace("\n", " ");
}
