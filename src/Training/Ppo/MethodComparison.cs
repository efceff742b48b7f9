using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Rlhf.Export;
using Rlhf.Training.Common;
using ScottPlot;

namespace Rlhf.Training.Ppo;

/// <summary>One finished run as the comparison reads it: its held-out path, final point, phases and the SFT reference.</summary>
/// <param name="Name">label in the plot and table</param>
/// <param name="Path">(KL to SFT, held-out gold) at each evaluation, SFT first (KL 0); a DPO run has its final point only</param>
/// <param name="SecondsPerIteration">mean seconds per iteration by phase (empty for DPO)</param>
public sealed record ComparedRun(string Name, IReadOnlyList<(double Kl, double Gold)> Path, double SftGoldMean, double SftGoldStd,
    double Gold, double Kl, int Iterations, IReadOnlyDictionary<string, double> SecondsPerIteration, IReadOnlyList<BestOfNPoint> BestOfN)
{
    /// <summary>(gold − SFT gold) / SFT gold std.</summary>
    public double GoldGainInSftStd => (Gold - SftGoldMean) / SftGoldStd;
}

/// <summary>
/// Several aligned runs on one frontier (<c>rlhf compare</c>): each PPO-stage run's held-out gold against KL to the SFT
/// model along its evaluations, a DPO run's final point, and SFT best-of-N's curve; a table of gold gain, KL and
/// seconds per iteration by phase.
/// </summary>
public static class MethodComparison
{
    /// <summary>Reads a PPO-stage folder (metrics.csv + summary.json) or a DPO folder (summary.json with its policy comparison).</summary>
    public static ComparedRun Load(string name, string folder)
    {
        string file = System.IO.Path.Combine(folder, "summary.json");
        if (!File.Exists(file)) throw new FileNotFoundException($"{folder}: no summary.json (a finished ppo or dpo folder is needed).");
        var s = JsonNode.Parse(File.ReadAllText(file))!.AsObject();
        string stage = s["stage"]?.GetValue<string>() ?? "";
        if (stage == "dpo")
        {
            var p = s["policy"] ?? throw new InvalidDataException($"{file}: no policy comparison (it is measured on the default task only).");
            double sftMean = (double)p["sft_gold_mean"]!, gold = (double)p["gold_mean"]!, kl = (double)p["kl"]!;
            return new ComparedRun(name, [(0, sftMean), (kl, gold)], sftMean, (double)p["sft_gold_std"]!, gold, kl, (int)s["steps"]!,
                new Dictionary<string, double>(), []);
        }
        if (stage != "ppo") throw new InvalidDataException($"{file}: stage '{stage}', expected ppo or dpo.");
        if (s["sft_gold_mean"] is null)
            throw new InvalidDataException($"{file}: no gold figures (the run's prompts are not the default task's); compare runs on the default task.");
        var metrics = MetricsTable.ReadCsv(System.IO.Path.Combine(folder, "metrics.csv"));
        double sft = (double)s["sft_gold_mean"]!;
        var path = new List<(double, double)> { (0, sft) };
        foreach (var r in metrics.Rows)
            if (r.TryGetValue("eval/kl", out double k) && r.TryGetValue("eval/gold", out double g)) path.Add((k, g));
        var phases = s["seconds_per_iteration"]!.AsObject().ToDictionary(p => p.Key, p => (double)p.Value!);
        var bestOf = s["best_of_n"]!.AsArray().Select(b => new BestOfNPoint((int)b!["n"]!, (double)b["gold"]!, (double)b["score"]!, (double)b["kl"]!)).ToList();
        return new ComparedRun(name, path, sft, (double)s["sft_gold_std"]!, (double)s["ppo_gold_mean"]!, (double)s["ppo_kl"]!,
            (int)s["iterations"]!, phases, bestOf);
    }

    /// <summary>The frontier plot: every run's path (DPO as one point) and the best-of-N curve of the run that measured the most N.</summary>
    public static void Plot(string file, IReadOnlyList<ComparedRun> runs)
    {
        var plt = new Plot();
        var palette = new ScottPlot.Palettes.Category10();
        var bestOf = runs.OrderByDescending(r => r.BestOfN.Count).First().BestOfN;
        if (bestOf.Count > 1)
        {
            var bon = plt.Add.Scatter(bestOf.Select(b => b.Kl).ToArray(), bestOf.Select(b => b.Gold ?? double.NaN).ToArray(), Color.FromHex("#7f7f7f"));
            bon.LegendText = "SFT best-of-N (" + string.Join(", ", bestOf.Select(b => b.N)) + ")";
            bon.LinePattern = LinePattern.Dashed;
            bon.MarkerShape = MarkerShape.FilledSquare;
            bon.MarkerSize = 8;
        }
        for (int i = 0; i < runs.Count; i++)
        {
            var r = runs[i];
            var color = palette.GetColor(i);
            var line = plt.Add.Scatter(r.Path.Select(p => p.Kl).ToArray(), r.Path.Select(p => p.Gold).ToArray(), color);
            line.LegendText = $"{r.Name}: +{r.GoldGainInSftStd.ToString("F2", CultureInfo.InvariantCulture)} SFT std at KL {r.Kl.ToString("F1", CultureInfo.InvariantCulture)}";
            line.LineWidth = 2;
            line.MarkerSize = 6;
            plt.Add.Marker(r.Kl, r.Gold, MarkerShape.FilledDiamond, 14, color);
        }
        plt.Title("Held-out gold score against KL to the SFT model");
        plt.XLabel("KL(π ‖ π_SFT), nats per response");
        plt.YLabel("mean gold score per response");
        Plots.LegendBelow(plt);
        string tmp = file + ".tmp.png";
        plt.SavePng(tmp, 1000, 700);
        File.Move(tmp, file, overwrite: true);
    }

    /// <summary>The table: gold gain in SFT std, KL, iterations, seconds per iteration in total and by phase.</summary>
    public static string Markdown(IReadOnlyList<ComparedRun> runs)
    {
        string F(double x, string f = "F2") => x.ToString(f, CultureInfo.InvariantCulture);
        var phases = PhaseSeconds.Names;
        var md = new StringBuilder();
        md.AppendLine("| method | gold gain (SFT std) | KL to SFT | iterations (DPO: steps) | s/iteration | " + string.Join(" | ", phases) + " |");
        md.AppendLine("|---|---|---|---|---|" + string.Concat(phases.Select(_ => "---|")));
        foreach (var r in runs)
        {
            string total = r.SecondsPerIteration.Count == 0 ? "–" : F(phases.Sum(p => r.SecondsPerIteration.GetValueOrDefault(p)));
            md.AppendLine($"| {r.Name} | {F(r.GoldGainInSftStd)} | {F(r.Kl)} | {r.Iterations} | {total} | " +
                          string.Join(" | ", phases.Select(p => r.SecondsPerIteration.TryGetValue(p, out double v) ? F(v) : "–")) + " |");
        }
        return md.ToString();
    }

    /// <summary>Reads <paramref name="runs"/> (name, folder), writes the plot and returns the table.</summary>
    public static string Write(IReadOnlyList<(string Name, string Folder)> runs, string plotFile)
    {
        var loaded = runs.Select(r => Load(r.Name, r.Folder)).ToList();
        Plot(plotFile, loaded);
        return Markdown(loaded);
    }
}
