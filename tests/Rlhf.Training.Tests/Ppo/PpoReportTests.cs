using System.Buffers.Binary;
using Rlhf.Training.Common;
using Rlhf.Training.Ppo;

namespace Rlhf.Training.Tests.Ppo;

/// <summary>The PPO report: the policy's path it plots (from a hand-built metrics table) and the files it writes.</summary>
public sealed class PpoReportTests
{
    /// <summary>Two held-out prompts: SFT gold 1 and 3 (mean 2), RM scores −1 and 0 (mean −0.5); PPO ends at KL 4.5.</summary>
    static Comparison HandBuilt() => new(
        ["p1", "p2"], ["a", "b"], [1, 3], [-1, 0], ["c", "d"], [4, 6], [2, 3], 4.5,
        [new BestOfNPoint(1, 2, -0.5, 0), new BestOfNPoint(4, 2.6, 0.4, Math.Log(4) - 0.75), new BestOfNPoint(16, 3.1, 1.2, Math.Log(16) - 15.0 / 16)]);

    /// <summary>Iterations 1..<paramref name="iterations"/>; every <paramref name="evalEvery"/>-th row (and the last) has the held-out columns.</summary>
    static MetricsTable Table(int iterations, int evalEvery)
    {
        var m = new MetricsTable();
        for (int it = 1; it <= iterations; it++)
        {
            var row = new Dictionary<string, double> { ["iteration"] = it, ["objective/kl"] = 0.4 * it, ["objective/scores"] = 0.1 * it };
            if (it % evalEvery == 0 || it == iterations)
            {
                row["eval/gold"] = 2 + 3 * (1 - Math.Exp(-it / 6.0));
                row["eval/score"] = -0.5 + 0.25 * it;
                row["eval/kl"] = 0.3 * it;
            }
            m.Add(row);
        }
        return m;
    }

    [Fact]
    public void PolicyPathStartsAtTheSftModelAndFollowsEveryEvaluationRow()
    {
        var path = PpoReport.PolicyPath(Table(7, 3), HandBuilt());
        Assert.Equal(
            [
                new PolicyPathPoint(0, 0, 2, -0.5),                                                   // SFT = best-of-1, at KL 0
                new PolicyPathPoint(3, 0.3 * 3, 2 + 3 * (1 - Math.Exp(-3 / 6.0)), -0.5 + 0.25 * 3),
                new PolicyPathPoint(6, 0.3 * 6, 2 + 3 * (1 - Math.Exp(-6 / 6.0)), -0.5 + 0.25 * 6),
                new PolicyPathPoint(7, 0.3 * 7, 2 + 3 * (1 - Math.Exp(-7 / 6.0)), -0.5 + 0.25 * 7), // the last iteration is always evaluated
            ], path);
    }

    [Fact]
    public void PolicyPathSkipsRowsMissingAnyHeldOutColumn()
    {
        var m = new MetricsTable();
        m.Add(new Dictionary<string, double> { ["iteration"] = 1, ["eval/kl"] = 1, ["eval/gold"] = 2 });                  // no eval/score
        m.Add(new Dictionary<string, double> { ["iteration"] = 2, ["eval/kl"] = 1.5, ["eval/gold"] = 2.5, ["eval/score"] = 0.5 });
        var path = PpoReport.PolicyPath(m, HandBuilt());
        Assert.Equal([0, 2], path.Select(p => p.Iteration));
    }

    [Theory]
    [InlineData(1, new int[0])]                 // only the SFT point
    [InlineData(3, new[] { 1, 2 })]             // two evaluations: both labelled
    [InlineData(5, new[] { 1, 2, 3, 4 })]
    [InlineData(11, new[] { 1, 4, 7, 10 })]     // ten evaluations: four labels, first and last included
    public void LabelledPointsSpreadFourLabelsOverTheEvaluations(int points, int[] expected) =>
        Assert.Equal(expected, PpoReport.LabelledPoints(points));

    [Fact]
    public void WriteDrawsTheTwoPanelReportPngAndTheMarkdown()
    {
        string dir = Directory.CreateTempSubdirectory().FullName;
        PpoReport.Write(dir, HandBuilt(), Table(20, 2), ptxCoef: 0);
        byte[] png = File.ReadAllBytes(Path.Combine(dir, "report.png"));
        Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], png[..4]);
        Assert.Equal(1400, BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(16)));   // IHDR width: two panels side by side
        Assert.Equal(600, BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(20)));
        string md = File.ReadAllText(Path.Combine(dir, "report.md"));
        Assert.Contains("(report.png)", md);
        Assert.Contains("| SFT best-of-16 | 3.100 | 1.200 |", md);
        Assert.Contains("| PPO | 5.000 | 2.500 | 4.500 |", md);
        Assert.Equal(["report.md", "report.png"], Directory.GetFiles(dir).Select(Path.GetFileName).Order());   // no temp file left
    }

    /// <summary>The hand-built comparison on a user's prompts: no gold anywhere; RM scores SFT −1, 0 / PPO 2, 0 (win rate (1 + ½)/2).</summary>
    static Comparison WithoutGold() => new(
        ["p1", "p2"], ["a", "b"], null, [-1, 0], ["c", "d"], null, [2, 0], 4.5,
        [new BestOfNPoint(1, null, -0.5, 0), new BestOfNPoint(4, null, 0.4, Math.Log(4) - 0.75)])
    { SftLengths = [10, 20], PpoLengths = [30, 50] };

    [Fact]
    public void WinRateCountsWinsAndHalfTies()
    {
        Assert.Equal(0.75, WithoutGold().RmWinRate, 12);
        Assert.Equal((1 + 0 + 0.5 + 1) / 4.0, PpoEvaluation.WinRate([3, 1, 2, 0.5], [2, 4, 2, -1]), 12);
        Assert.Throws<ArgumentException>(() => PpoEvaluation.WinRate([1], [1, 2]));
    }

    [Fact]
    public void WithoutGoldTheReportHasOnePanelAndNoGoldFigure()
    {
        string dir = Directory.CreateTempSubdirectory().FullName;
        var m = new MetricsTable();
        m.Add(new Dictionary<string, double> { ["iteration"] = 1, ["eval/kl"] = 2, ["eval/score"] = 1 });
        m.Add(new Dictionary<string, double> { ["iteration"] = 2, ["eval/kl"] = 4.5, ["eval/score"] = 1 });
        var c = WithoutGold();
        Assert.Null(c.GoldGainInSftStd);
        Assert.Equal([new PolicyPathPoint(0, 0, null, -0.5), new PolicyPathPoint(1, 2, null, 1), new PolicyPathPoint(2, 4.5, null, 1)],
            PpoReport.PolicyPath(m, c));
        PpoReport.Write(dir, c, m, ptxCoef: 0);
        byte[] png = File.ReadAllBytes(Path.Combine(dir, "report.png"));
        Assert.Equal(700, BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(16)));   // one panel: RM score against KL
        string md = File.ReadAllText(Path.Combine(dir, "report.md"));
        Assert.DoesNotContain("gold score", md);
        Assert.Contains("RM win rate of PPO against SFT: 0.750", md);
        Assert.Contains("SFT 15.000, PPO 40.000 tokens", md);
        Assert.Contains("| PPO | 1.000 | 4.500 |", md);
        var summary = PpoSummary.From(m, c, 1);
        Assert.Null(summary.SftGoldMean);
        Assert.Null(summary.GoldGainInSftStd);
        Assert.Equal(0.75, summary.RmWinRateVsSft, 12);
        Assert.Equal(40, summary.PpoResponseTokens, 12);
    }

    [Fact]
    public void APromptsFileAloneHoldsOutItsLastTenthForEvaluation()
    {
        var prompts = Enumerable.Range(0, 45).Select(i => $"p{i}").ToArray();
        var (train, eval) = PpoTrainer.HeldOutSplit(prompts, evalPrompts: 8, "prompts.jsonl");
        Assert.Equal(prompts[..41], train);                 // k = min(8, ⌊45/10⌋) = 4
        Assert.Equal(prompts[41..], eval);
        Assert.Equal(["a"], PpoTrainer.HeldOutSplit(["a", "b"], 8, "f").Train);   // k ≥ 1
        var e = Assert.Throws<InvalidDataException>(() => PpoTrainer.HeldOutSplit(["a"], 8, "prompts.jsonl"));
        Assert.StartsWith("prompts.jsonl: 1 prompt(s)", e.Message);
    }
}
