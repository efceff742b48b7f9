using System.Globalization;
using System.Text.Json.Nodes;
using Rlhf.Training.Cli;
using Rlhf.Training.Common;
using Rlhf.Training.Data;
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

    /// <summary>
    /// A modification time no write can give (the day after the Unix epoch). A file stamped with it and found with it
    /// later was not rewritten; found with another, it was. Unlike comparing two write times, this needs no sleep and
    /// does not depend on the file system's timestamp granularity (a rewrite within the same clock tick).
    /// </summary>
    static readonly DateTime Stamp = DateTime.UnixEpoch.AddDays(1);

    /// <summary>Stamps each file with <see cref="Stamp"/>.</summary>
    static void MarkUnwritten(params string[] files)
    {
        foreach (string f in files) File.SetLastWriteTimeUtc(f, Stamp);
    }

    /// <summary>Whether <paramref name="file"/> was rewritten since <see cref="MarkUnwritten"/>.</summary>
    static bool Rewritten(string file) => File.GetLastWriteTimeUtc(file) != Stamp;

    /// <summary>Keys in the first column of docs/outputs.md's summary.json table for <paramref name="stage"/> ("SFT:", "RM:", "PPO:").</summary>
    static string[] DocumentedSummaryKeys(string stage)
    {
        string section = DocsPages.Section(DocsPages.Docs("outputs.md"), "## `summary.json`");
        int start = section.IndexOf("\n" + stage + "\n", StringComparison.Ordinal);
        Assert.True(start >= 0, $"docs/outputs.md's summary.json section has no '{stage}' table");
        int end = section.IndexOf("\n\n", start + stage.Length + 3, StringComparison.Ordinal);
        return DocsPages.TableKeys(section[start..(end < 0 ? section.Length : end)]);
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
        MarkUnwritten(Path.Combine(sftDir, "init", "model.safetensors"));

        var s = PipelineRunner.Run(cfg, new RunControl { Progress = false });
        // resumed, not restarted: the folder kept its init/, and the weights equal an uninterrupted run's
        Assert.False(Rewritten(Path.Combine(sftDir, "init", "model.safetensors")));
        Assert.Equal(File.ReadAllBytes(Path.Combine(SftTrainerTests.Shared.Config.Out, "model.safetensors")), File.ReadAllBytes(Path.Combine(sftDir, "model.safetensors")));

        // summary.json: one section per stage, each equal to the stage's own summary.json, keys as docs/outputs.md lists them
        var written = Json(Path.Combine(outDir, "summary.json")).AsObject();
        Assert.Equal(["stage", "sft", "rm", "ppo", "seconds"], written.Select(kv => kv.Key).ToArray());
        Assert.Equal("pipeline", written["stage"]!.GetValue<string>());
        Assert.True(written["seconds"]!.GetValue<double>() > 0);
        foreach (var (stage, heading) in new[] { ("sft", "SFT:"), ("rm", "RM:"), ("ppo", "PPO:") })
        {
            Assert.Equal(Json(Path.Combine(outDir, stage, "summary.json")).ToJsonString(), written[stage]!.ToJsonString());
            Assert.Equal(s[stage]!.ToJsonString(), written[stage]!.ToJsonString());
            Assert.Equal(DocumentedSummaryKeys(heading).Order(), written[stage]!.AsObject().Select(kv => kv.Key).Order());
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
        MarkUnwritten(models);
        var again = PipelineRunner.Run(cfg, new RunControl { Progress = false });
        Assert.All(models, m => Assert.False(Rewritten(m), m + " was rewritten"));
        foreach (string stage in new[] { "sft", "rm", "ppo" }) Assert.Equal(written[stage]!.ToJsonString(), again[stage]!.ToJsonString());

        // --overwrite reruns every stage from scratch (the folder is cleared) with the same results
        string stray = Path.Combine(outDir, "stray.txt");
        File.WriteAllText(stray, "");
        byte[] sftBytes = File.ReadAllBytes(models[0]), rmBytes = File.ReadAllBytes(models[1]);
        var fresh = PipelineRunner.Run(cfg, new RunControl { Progress = false, Overwrite = true });
        Assert.False(File.Exists(stray));
        Assert.All(models, m => Assert.True(Rewritten(m), m + " was not rewritten"));
        Assert.Equal(sftBytes, File.ReadAllBytes(models[0]));
        Assert.Equal(rmBytes, File.ReadAllBytes(models[1]));
        Assert.Equal(written["rm"]!["pairwise_accuracy"]!.ToJsonString(), fresh["rm"]!["pairwise_accuracy"]!.ToJsonString());
    }

    [Fact]
    public void AlgorithmChoosesWhatFollowsSft()
    {
        var shared = SftTrainerTests.Shared.Config;
        string dir = Directory.CreateTempSubdirectory().FullName;
        string cfgFile = Path.Combine(dir, "pipeline.json");
        File.WriteAllText(cfgFile, ConfigLoader.ToJson(Tiny("ignored") with
        {
            Dpo = new Rlhf.Training.Dpo.DpoConfig { TrainPrompts = 8, EvalPrompts = 4, K = 2, MaxNewTokens = 6, MaxSeqLen = 40, PromptsPerBatch = 4, PolicyEvalPrompts = 4 },
        }));

        // dpo: no reward model, no PPO; the DPO stage starts from the SFT model and its summary is the pipeline's dpo section
        string a = Path.Combine(dir, "a");
        Assert.Equal(0, RlhfCommand.Run(["pipeline", "--config", cfgFile, "--out", a, "--sft-from", shared.Out, "--algorithm", "dpo"]));
        Assert.Equal(["dpo"], Directory.GetDirectories(a).Select(Path.GetFileName));
        Assert.Equal(shared.Out, Json(Path.Combine(a, "dpo", "dpo_config.json"))["sft_model"]!.GetValue<string>());
        Assert.Equal("dpo", Json(Path.Combine(a, "summary.json"))["dpo"]!["stage"]!.GetValue<string>());

        // grpo: the PPO stage with that estimator, four samples per prompt, and no critic
        string b = Path.Combine(dir, "b");
        Assert.Equal(0, RlhfCommand.Run(["pipeline", "--config", cfgFile, "--out", b, "--sft-from", shared.Out, "--algorithm", "grpo"]));
        var ppoConfig = Json(Path.Combine(b, "ppo", "ppo_config.json"));
        Assert.Equal(("grpo", 4, 0.25), (ppoConfig["advantage_estimator"]!.GetValue<string>(), ppoConfig["n_samples_per_prompt"]!.GetValue<int>(), ppoConfig["init_kl_coef"]!.GetValue<double>()));
        Assert.False(Directory.Exists(Path.Combine(b, "ppo", "critic")));
        Assert.NotEqual(0, RlhfCommand.Run(["pipeline", "--config", cfgFile, "--out", Path.Combine(dir, "c"), "--algorithm", "dpo", "--rounds", "2"]));
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
        MarkUnwritten(Path.Combine(rm, "model.safetensors"));
        Assert.Equal(0, RlhfCommand.Run(["pipeline", "--config", cfgFile, "--out", b, "--sft-from", shared.Out, "--rm-from", rm]));
        Assert.Equal(["ppo"], Directory.GetDirectories(b).Select(Path.GetFileName));
        var ppoConfig = Json(Path.Combine(b, "ppo", "ppo_config.json"));
        Assert.Equal((shared.Out, rm), (ppoConfig["sft_model"]!.GetValue<string>(), ppoConfig["rm_model"]!.GetValue<string>()));
        Assert.Equal(Json(Path.Combine(rm, "summary.json")).ToJsonString(), Json(Path.Combine(b, "summary.json"))["rm"]!.ToJsonString());
        Assert.False(Rewritten(Path.Combine(rm, "model.safetensors")));   // used, not retrained
    }

    [Fact]
    public void RoundsRetrainTheRmOnPolicySamplesAndScoreItAgainstGold()
    {
        // an SFT model that writes some real words (200 steps; the shared 4-step one writes bytes whose gold scores all tie at −3)
        string root = Directory.CreateTempSubdirectory().FullName, outDir = Path.Combine(root, "p");
        var sft = SftTrainerTests.Tiny(Path.Combine(root, "sft")) with { DefaultTrainSize = 3200, BatchSize = 16, GradAccum = 1, EvalEvery = 100, CheckpointEvery = 0, SampleCount = 4 };
        SftTrainer.Run(sft, new RunControl { Progress = false });
        string sftDir = sft.Out;
        var cfg = Tiny(outDir) with { SftFrom = sftDir, Rounds = 2, RoundPrompts = 8, Rm = Tiny(outDir).Rm with { K = 3, EvalPrompts = 6, MaxNewTokens = 24, MaxSeqLen = 64 } };
        var s = PipelineRunner.Run(cfg, new RunControl { Progress = false });
        string round = Path.Combine(outDir, "round2");

        // structure: round2/{data,rm,ppo}, each stage chained from the previous round, reference still the SFT model
        foreach (string f in new[] { "summary.json", "policy_samples.jsonl", "data/rankings.jsonl", "data/train_rankings.jsonl", "data/policy_samples.jsonl",
                                     "rm/summary.json", "ppo/summary.json", "ppo/report.md" })
            Assert.True(File.Exists(Path.Combine(round, f)), f);
        foreach (string f in new[] { "rounds.csv", "rounds.png", "report.md" }) Assert.True(File.Exists(Path.Combine(outDir, f)), f);
        var rmCfg = Json(Path.Combine(round, "rm", "rm_config.json"));
        Assert.Equal(Path.Combine(outDir, "rm"), rmCfg["init_model"]!.GetValue<string>());
        Assert.Equal(Path.Combine(outDir, "rm", "eval_rankings.jsonl"), rmCfg["eval_file"]!.GetValue<string>());
        var ppoCfg = Json(Path.Combine(round, "ppo", "ppo_config.json"));
        Assert.Equal((sftDir, Path.Combine(outDir, "ppo"), Path.Combine(round, "rm")),
            (ppoCfg["sft_model"]!.GetValue<string>(), ppoCfg["policy_model"]!.GetValue<string>(), ppoCfg["rm_model"]!.GetValue<string>()));

        // old + new comparisons: the first RM's 8 prompts and 8 fresh ones (other prompts), 3 comparisons each
        var oldRanked = DataFiles.ReadRanked(Path.Combine(outDir, "rm", "rankings.jsonl")).Records;
        var newRanked = DataFiles.ReadRanked(Path.Combine(round, "data", "rankings.jsonl")).Records;
        Assert.Equal(8, newRanked.Count);
        Assert.NotEqual(oldRanked.Select(r => r.Prompt), newRanked.Select(r => r.Prompt));
        Assert.Equal(oldRanked.Concat(newRanked).Select(r => r.Prompt), DataFiles.ReadRanked(Path.Combine(round, "data", "train_rankings.jsonl")).Records.Select(r => r.Prompt));
        Assert.Equal(16 * 3, Json(Path.Combine(round, "rm", "summary.json"))["train_pairs"]!.GetValue<int>());

        // accuracy on the first policy's held-out samples, counted here from gold scores computed here
        var samples = File.ReadLines(Path.Combine(round, "policy_samples.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.Equal(6, samples.Count);
        double Count(string scores)
        {
            int right = 0, counted = 0;
            foreach (var x in samples)
            {
                string prompt = x["prompt"]!.GetValue<string>();
                string[] texts = [.. x["responses"]!.AsArray().Select(t => t!.GetValue<string>())];
                bool[] eos = [.. x["ended_with_eos"]!.AsArray().Select(t => t!.GetValue<bool>())];
                double[] sc = [.. x[scores]!.AsArray().Select(t => t!.GetValue<double>())];
                double[] gold = [.. texts.Select((t, i) => Rlhf.Training.Data.DefaultTask.GoldScorer.Score(prompt, t, eos[i]).Total)];
                Assert.Equal(gold, x["gold"]!.AsArray().Select(t => t!.GetValue<double>()));
                for (int i = 0; i < 3; i++)
                    for (int j = i + 1; j < 3; j++)
                        if (gold[i] != gold[j])
                        {
                            counted++;
                            if ((sc[i] > sc[j]) == (gold[i] > gold[j]) && sc[i] != sc[j]) right++;
                        }
            }
            Assert.True(counted > 0);
            return right / (double)counted;
        }
        var rows = MetricsTable.ReadCsv(Path.Combine(outDir, "rounds.csv")).Rows;
        Assert.Equal([1.0, 2.0], rows.Select(r => r["round"]));
        Assert.False(rows[0].ContainsKey("rm_accuracy_before"));
        Assert.Equal(Count("score_before"), rows[1]["rm_accuracy_before"], 12);
        Assert.Equal(Count("score_after"), rows[1]["rm_accuracy_after"], 12);
        Assert.Equal(rows[1]["rm_accuracy_after"], Json(Path.Combine(round, "summary.json"))["rm_accuracy_after"]!.GetValue<double>(), 12);
        Assert.Equal(Json(Path.Combine(round, "ppo", "summary.json"))["ppo_kl"]!.GetValue<double>(), rows[1]["ppo_kl"], 12);
        Assert.Equal(s["ppo"]!["gold_gain_in_sft_std"]!.GetValue<double>(), rows[0]["gold_gain_in_sft_std"], 12);
        Assert.Equal(2, s["rounds"]!.AsArray().Count);
        Assert.Equal(DocsPages.ParagraphKeys(DocsPages.Docs("outputs.md"), "Round keys:").Order(), Json(Path.Combine(round, "summary.json")).AsObject().Select(kv => kv.Key).Order());

        // the scores are the RMs' own: the first prompt's responses scored one at a time by the previous and the retrained RM
        var tokenizer = Rlhf.Inference.Tokenization.TextTokenizer.Load(sftDir);
        foreach (var (folder, key) in new[] { (Path.Combine(outDir, "rm"), "score_before"), (Path.Combine(round, "rm"), "score_after") })
        {
            using var rm = Rlhf.Training.Model.LlamaForSequenceClassification.FromPretrained(folder, TorchSharp.torch.CPU, TorchSharp.torch.ScalarType.Float32);
            rm.eval();
            for (int i = 0; i < 3; i++)
            {
                int[] ids = Rlhf.Inference.Tokenization.PromptFormat.JoinedIds(tokenizer, samples[0]["prompt"]!.GetValue<string>(),
                    samples[0]["responses"]![i]!.GetValue<string>(), cfg.Rm.MaxSeqLen);
                using var noGrad = TorchSharp.torch.no_grad();
                using var t = TorchSharp.torch.tensor(ids.Select(x => (long)x).ToArray(), [1, ids.Length]);
                using var m = TorchSharp.torch.ones_like(t);
                using var score = rm.Scores(t, m);
                double stored = samples[0][key]![i]!.GetValue<double>();   // scored in packed rows: equal up to float rounding
                Assert.True(Math.Abs(score.item<float>() - stored) < 1e-4, $"{key} {i}: alone {score.item<float>()}, stored {stored}");
            }
        }

        // the alignment tax is measured and reported
        var ppo = Json(Path.Combine(round, "ppo", "summary.json"));
        Assert.True(ppo["corpus_perplexity_sft"]!.GetValue<double>() > 1 && ppo["corpus_perplexity_ppo"]!.GetValue<double>() > 1);
        Assert.Contains($"SFT {ppo["corpus_perplexity_sft"]!.GetValue<double>().ToString("F3", CultureInfo.InvariantCulture)}, PPO", File.ReadAllText(Path.Combine(round, "ppo", "report.md")));
        Assert.Contains("| 2 | 24 | 48 |", File.ReadAllText(Path.Combine(outDir, "report.md")));

        // resume: a finished round is reused; a round without its summary reuses its finished stages
        string[] models = [.. new[] { "rm", "ppo" }.Select(x => Path.Combine(round, x, "model.safetensors"))];
        MarkUnwritten([.. models, Path.Combine(round, "summary.json")]);
        PipelineRunner.Run(cfg, new RunControl { Progress = false });
        Assert.False(Rewritten(Path.Combine(round, "summary.json")));
        string roundSummary = File.ReadAllText(Path.Combine(round, "summary.json"));
        File.Delete(Path.Combine(round, "summary.json"));
        PipelineRunner.Run(cfg, new RunControl { Progress = false });
        Assert.All(models, m => Assert.False(Rewritten(m), m + " was rewritten"));
        Assert.Equal(roundSummary, File.ReadAllText(Path.Combine(round, "summary.json")));
    }

    [Fact]
    public void RoundsRefuseWhatTheyCannotLabelOrWouldOverride()
    {
        var cfg = Tiny("ignored") with { Rounds = 2 };
        cfg.Validate();
        string E(PipelineConfig c) => Assert.Throws<InvalidDataException>(c.Validate).Message;
        Assert.Contains("rm.rankings_file", E(cfg with { Rm = cfg.Rm with { RankingsFile = "r.jsonl" } }));
        Assert.Contains("ppo.policy_model is set by the pipeline", E(cfg with { Ppo = cfg.Ppo with { PolicyModel = "p" } }));
        Assert.Contains("rm.init_model is set by the pipeline", E(cfg with { Rm = cfg.Rm with { InitModel = "r" } }));
        Assert.Contains("rounds must be ≥ 1", E(cfg with { Rounds = 0 }));
    }
}
