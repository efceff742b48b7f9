using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Rlhf.Training.Cli;
using Rlhf.Training.Common;
using Rlhf.Training.Pipeline;
using Rlhf.Training.Ppo;
using Rlhf.Training.RewardModel;
using Rlhf.Training.Sft;
using Rlhf.Training.Tests.Common;
using Rlhf.Training.Tests.Sft;

namespace Rlhf.Training.Tests.Pipeline;

public sealed class PipelineTests
{
    /// <summary>Tiny stages; the SFT stage is the shared tiny SFT run's config (same seed), so their outputs can be compared.</summary>
    static PipelineConfig Tiny(string outDir) => new()
    {
        Out = outDir, Threads = 1, Seed = SftTrainerTests.Shared.Config.Seed,
        // out, seed, device and threads of a stage are the pipeline's: leave them at their defaults
        Sft = SftTrainerTests.Tiny("ignored") with { Out = new SftConfig().Out, Seed = new SftConfig().Seed, Device = new SftConfig().Device, Threads = new SftConfig().Threads },
        Rm = new RmConfig { TrainPrompts = 8, EvalPrompts = 4, K = 2, PromptsPerBatch = 4, Epochs = 1, MaxNewTokens = 6, MaxSeqLen = 40 },
        Ppo = new PpoConfig { DefaultPrompts = 16, EvalPrompts = 4, Iterations = 2, RolloutBatch = 4, MiniBatch = 4, PpoEpochs = 1, MaxNewTokens = 6, BestOfN = [1, 2] },
    };

    static JsonNode Json(string file) => JsonNode.Parse(File.ReadAllText(file))!;

    static DateTime Written(string file) => File.GetLastWriteTimeUtc(file);

    /// <summary>Keys in the first column of the README's summary.json table for <paramref name="stage"/> ("SFT:", "RM:", "PPO:").</summary>
    static string[] ReadmeSummaryKeys(string stage)
    {
        string readme = ReadmeConfigKeysTests.Readme();
        int section = readme.IndexOf("### `summary.json`", StringComparison.Ordinal);
        int start = readme.IndexOf("\n" + stage + "\n", section, StringComparison.Ordinal);
        int end = readme.IndexOf("\n\n", start + stage.Length + 3, StringComparison.Ordinal);
        return [.. readme[start..end].Split('\n').Where(l => l.StartsWith("| `", StringComparison.Ordinal))
            .SelectMany(l => Regex.Matches(l.Split('|')[1], "`([a-z0-9_]+)`").Select(m => m.Groups[1].Value))];
    }

    [Fact]
    public void ResumesAnInterruptedStageThenReusesThenOverwrites()
    {
        string outDir = Path.Combine(Directory.CreateTempSubdirectory().FullName, "p");
        var cfg = Tiny(outDir);
        string sftDir = Path.Combine(outDir, "sft");

        // An SFT stage killed after 2 of its 4 steps, exactly as the pipeline configures it.
        var sft = cfg.Sft with { Out = sftDir, Seed = cfg.Seed, Device = cfg.Device, Threads = cfg.Threads };
        StopAfter.Step(2, c => SftTrainer.Run(sft, c));
        Assert.False(File.Exists(Path.Combine(sftDir, "summary.json")));
        DateTime initWritten = Written(Path.Combine(sftDir, "init", "model.safetensors"));

        var s = PipelineRunner.Run(cfg, new RunControl { Progress = false });
        // resumed, not restarted: the folder kept its init/, and the weights equal an uninterrupted run's
        Assert.Equal(initWritten, Written(Path.Combine(sftDir, "init", "model.safetensors")));
        Assert.Equal(File.ReadAllBytes(Path.Combine(SftTrainerTests.Shared.Config.Out, "model.safetensors")), File.ReadAllBytes(Path.Combine(sftDir, "model.safetensors")));

        // summary.json: one section per stage, each equal to the stage's own summary.json, keys as the README lists them
        var written = Json(Path.Combine(outDir, "summary.json")).AsObject();
        Assert.Equal(["stage", "sft", "rm", "ppo", "seconds"], written.Select(kv => kv.Key).ToArray());
        Assert.Equal("pipeline", written["stage"]!.GetValue<string>());
        Assert.True(written["seconds"]!.GetValue<double>() > 0);
        foreach (var (stage, heading) in new[] { ("sft", "SFT:"), ("rm", "RM:"), ("ppo", "PPO:") })
        {
            Assert.Equal(Json(Path.Combine(outDir, stage, "summary.json")).ToJsonString(), written[stage]!.ToJsonString());
            Assert.Equal(s[stage]!.ToJsonString(), written[stage]!.ToJsonString());
            Assert.Equal(ReadmeSummaryKeys(heading).Order(), written[stage]!.AsObject().Select(kv => kv.Key).Order());
        }
        Assert.Equal(4, written["sft"]!["steps"]!.GetValue<int>());
        Assert.Equal(2, written["rm"]!["steps"]!.GetValue<int>());          // 8 prompts / 4 per batch, one epoch
        Assert.Equal(2, written["ppo"]!["iterations"]!.GetValue<int>());

        // report.md carries the summary's figures
        var ppo = written["ppo"]!;
        string F(JsonNode? x) => x!.GetValue<double>().ToString("F3", CultureInfo.InvariantCulture);
        string report = File.ReadAllText(Path.Combine(outDir, "ppo", "report.md"));
        Assert.Contains($"| PPO | {F(ppo["ppo_gold_mean"])} | {F(ppo["ppo_score"])} | {F(ppo["ppo_kl"])} |", report);
        var bon = ppo["best_of_n"]!.AsArray();
        Assert.Equal([1, 2], bon.Select(b => b!["n"]!.GetValue<int>()));
        Assert.Equal(0.0, bon[0]!["kl"]!.GetValue<double>(), 12);
        Assert.Equal(Math.Log(2) - 0.5, bon[1]!["kl"]!.GetValue<double>(), 12);   // log N − (N − 1)/N
        Assert.Equal(ppo["sft_gold_mean"]!.GetValue<double>(), bon[0]!["gold"]!.GetValue<double>(), 12);
        Assert.Contains($"| SFT | {F(bon[0]!["gold"])} | {F(bon[0]!["score"])} | {F(bon[0]!["kl"])} |", report);
        Assert.Contains($"| SFT best-of-2 | {F(bon[1]!["gold"])} | {F(bon[1]!["score"])} | {F(bon[1]!["kl"])} |", report);
        double gain = ppo["ppo_gold_mean"]!.GetValue<double>() - ppo["sft_gold_mean"]!.GetValue<double>();
        Assert.Equal(gain / Math.Max(ppo["sft_gold_std"]!.GetValue<double>(), 1e-9), ppo["gold_gain_in_sft_std"]!.GetValue<double>(), 9);
        Assert.Contains($"Gold score gain of PPO over SFT: {gain.ToString("F3", CultureInfo.InvariantCulture)} ({F(ppo["gold_gain_in_sft_std"])} SFT standard deviations)", report);
        // table lines: policies (header, rule, SFT, best-of-2, PPO) and samples (header, rule, one row per held-out prompt)
        Assert.Equal(5 + 2 + 4, report.Split('\n').Count(l => l.StartsWith('|')));
        foreach (string f in new[] { "report.png", "reward.png", "kl.png", "losses.png", "metrics.csv", "ppo_config.json", "model.safetensors" })
            Assert.True(File.Exists(Path.Combine(outDir, "ppo", f)), f);
        Assert.True(Directory.Exists(Path.Combine(outDir, "ppo", "critic")));
        Assert.True(Directory.Exists(Path.Combine(outDir, "ppo", "onnx")));

        // every stage reused, nothing retrained
        string[] models = [.. new[] { "sft", "rm", "ppo" }.Select(x => Path.Combine(outDir, x, "model.safetensors"))];
        DateTime[] before = [.. models.Select(Written)];
        var again = PipelineRunner.Run(cfg, new RunControl { Progress = false });
        Assert.Equal(before, models.Select(Written));
        foreach (string stage in new[] { "sft", "rm", "ppo" }) Assert.Equal(written[stage]!.ToJsonString(), again[stage]!.ToJsonString());

        // --overwrite reruns every stage from scratch (the folder is cleared) with the same results
        string stray = Path.Combine(outDir, "stray.txt");
        File.WriteAllText(stray, "");
        byte[] sftBytes = File.ReadAllBytes(models[0]), rmBytes = File.ReadAllBytes(models[1]);
        Thread.Sleep(20);
        var fresh = PipelineRunner.Run(cfg, new RunControl { Progress = false, Overwrite = true });
        Assert.False(File.Exists(stray));
        Assert.All(models.Zip(before), m => Assert.True(Written(m.First) > m.Second, m.First + " was not rewritten"));
        Assert.Equal(sftBytes, File.ReadAllBytes(models[0]));
        Assert.Equal(rmBytes, File.ReadAllBytes(models[1]));
        Assert.Equal(written["rm"]!["pairwise_accuracy"]!.ToJsonString(), fresh["rm"]!["pairwise_accuracy"]!.ToJsonString());
    }

    [Fact]
    public void SftFromAndRmFromUseExistingFolders()
    {
        var shared = SftTrainerTests.Shared.Config;
        string dir = Directory.CreateTempSubdirectory().FullName;
        string cfgFile = Path.Combine(dir, "pipeline.json");
        File.WriteAllText(cfgFile, ConfigLoader.ToJson(Tiny("ignored")));

        // --sft-from: no sft/ stage, the RM starts from the given folder, and its summary is the pipeline's sft section
        string a = Path.Combine(dir, "a");
        Assert.Equal(0, RlhfCommand.Run(["pipeline", "--config", cfgFile, "--out", a, "--sft-from", shared.Out]));
        Assert.False(Directory.Exists(Path.Combine(a, "sft")));
        Assert.Equal(shared.Out, Json(Path.Combine(a, "rm", "rm_config.json"))["sft_model"]!.GetValue<string>());
        Assert.Equal(shared.Out, Json(Path.Combine(a, "ppo", "ppo_config.json"))["sft_model"]!.GetValue<string>());
        Assert.Equal(Json(Path.Combine(shared.Out, "summary.json")).ToJsonString(), Json(Path.Combine(a, "summary.json"))["sft"]!.ToJsonString());
        Assert.Equal(shared.Out, Json(Path.Combine(a, "pipeline_config.json"))["sft_from"]!.GetValue<string>());

        // --rm-from as well: only PPO runs, against that reward model
        string b = Path.Combine(dir, "b"), rm = Path.Combine(a, "rm");
        DateTime rmWritten = Written(Path.Combine(rm, "model.safetensors"));
        Assert.Equal(0, RlhfCommand.Run(["pipeline", "--config", cfgFile, "--out", b, "--sft-from", shared.Out, "--rm-from", rm]));
        Assert.Equal(["ppo"], Directory.GetDirectories(b).Select(Path.GetFileName));
        var ppoConfig = Json(Path.Combine(b, "ppo", "ppo_config.json"));
        Assert.Equal((shared.Out, rm), (ppoConfig["sft_model"]!.GetValue<string>(), ppoConfig["rm_model"]!.GetValue<string>()));
        Assert.Equal(Json(Path.Combine(rm, "summary.json")).ToJsonString(), Json(Path.Combine(b, "summary.json"))["rm"]!.ToJsonString());
        Assert.Equal(rmWritten, Written(Path.Combine(rm, "model.safetensors")));   // used, not retrained
    }
}
