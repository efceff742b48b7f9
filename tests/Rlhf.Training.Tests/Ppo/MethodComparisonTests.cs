using Rlhf.Training.Common;
using Rlhf.Training.Ppo;

namespace Rlhf.Training.Tests.Ppo;

/// <summary><c>rlhf compare</c>'s reading of PPO-stage and DPO folders, its table and its plot.</summary>
public sealed class MethodComparisonTests
{
    static string PpoFolder(string root)
    {
        string dir = Directory.CreateDirectory(Path.Combine(root, "ppo")).FullName;
        File.WriteAllText(Path.Combine(dir, "summary.json"), """
            {"stage": "ppo", "iterations": 10, "sft_gold_mean": 0.5, "sft_gold_std": 2.0, "ppo_gold_mean": 3.0, "ppo_kl": 4.0,
             "seconds_per_iteration": {"generate": 0.25, "score": 0.25, "experience": 0.5, "train": 2.0, "sync": 0.0},
             "best_of_n": [{"n": 1, "gold": 0.5, "score": 0, "kl": 0}, {"n": 4, "gold": 2.0, "score": 1, "kl": 0.636}]}
            """);
        var m = new MetricsTable();
        m.Add(new Dictionary<string, double> { ["iteration"] = 5, ["eval/kl"] = 2.0, ["eval/gold"] = 1.5 });
        m.Add(new Dictionary<string, double> { ["iteration"] = 6 });
        m.Add(new Dictionary<string, double> { ["iteration"] = 10, ["eval/kl"] = 4.0, ["eval/gold"] = 3.0 });
        m.WriteCsv(Path.Combine(dir, "metrics.csv"));
        return dir;
    }

    [Fact]
    public void ReadsPathsAndWritesTheTableAndThePlot()
    {
        string root = Directory.CreateTempSubdirectory().FullName;
        string ppo = PpoFolder(root);
        string dpo = Directory.CreateDirectory(Path.Combine(root, "dpo")).FullName;
        File.WriteAllText(Path.Combine(dpo, "summary.json"), """
            {"stage": "dpo", "steps": 375, "policy": {"sft_gold_mean": 0.5, "sft_gold_std": 2.0, "gold_mean": 1.5, "kl": 1.25}}
            """);
        var run = MethodComparison.Load("ppo", ppo);
        Assert.Equal([(0.0, 0.5), (2.0, 1.5), (4.0, 3.0)], run.Path);
        Assert.Equal(1.25, run.GoldGainInSftStd, 12);   // (3 − 0.5) / 2
        string plot = Path.Combine(root, "compare.png");
        string table = MethodComparison.Write([("ppo", ppo), ("dpo", dpo)], plot);
        Assert.Contains("| ppo | 1.25 | 4.00 | 10 | 3.00 | 0.25 | 0.25 | 0.50 | 2.00 | 0.00 |", table);
        Assert.Contains("| dpo | 0.50 | 1.25 | 375 | – | – | – | – | – | – |", table);
        Assert.True(new FileInfo(plot).Length > 10_000);
        Assert.Throws<FileNotFoundException>(() => MethodComparison.Load("x", Path.Combine(root, "missing")));
    }
}
