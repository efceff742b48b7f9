using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Rlhf.Export;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Training.Data.DefaultTask;
using Rlhf.Training.Model;
using Rlhf.Training.RewardModel;
using ScottPlot;
using Rlhf.Training.Engines;
using static TorchSharp.torch;

namespace Rlhf.Training.Pipeline;

/// <summary>A round's headline figures: a row of <c>rounds.csv</c> and the round's <c>summary.json</c> (keys in the README).</summary>
public sealed record RoundSummary
{
    /// <summary>1 = the pipeline's sft → rm → ppo; 2.. = the rounds that follow.</summary>
    public int Round { get; init; }
    /// <summary>Comparisons the round labelled (round 1: those of the RM stage).</summary>
    public int NewComparisons { get; init; }
    /// <summary>Comparisons the round's RM trained on per epoch (old + new).</summary>
    public int TrainComparisons { get; init; }
    /// <summary>The round's RM: pairwise accuracy on the first RM's held-out SFT samples against their gold scores (gold ties excluded).</summary>
    public double RmAccuracySft { get; init; }
    /// <summary>The previous round's RM: pairwise accuracy on held-out samples of the previous round's policy against gold (null in round 1).</summary>
    public double? RmAccuracyBefore { get; init; }
    /// <summary>The round's retrained RM on the same samples (null in round 1).</summary>
    public double? RmAccuracyAfter { get; init; }
    /// <summary>The round's PPO policy: held-out gold gain over the SFT model in SFT standard deviations.</summary>
    public double GoldGainInSftStd { get; init; }
    /// <summary>The round's PPO policy: held-out mean gold score.</summary>
    public double PpoGoldMean { get; init; }
    /// <summary>The round's PPO policy: held-out KL to the SFT model (nats per response).</summary>
    public double PpoKl { get; init; }
}

/// <summary>
/// Iterated RLHF, the loop from PPO back to the reward model: rounds 2..<see cref="PipelineConfig.Rounds"/>, each in
/// <c>round{r}/</c>. <c>data/</c>: K samples per prompt from the latest policy on <see cref="PipelineConfig.RoundPrompts"/>
/// fresh prompts, ranked by the default task's annotators (the RM stage's labelling path), appended to the comparisons
/// the previous RM trained on; and K samples on the RM's held-out prompts with their gold scores. <c>rm/</c>: the RM
/// continued from the previous round's on old + new comparisons (normalised on the same held-out SFT samples as the
/// first). <c>ppo/</c>: PPO from the latest policy against it, π_ref still the SFT model. The previous and the retrained
/// RM are both scored on the held-out policy samples (<c>policy_samples.jsonl</c>): where the stale RM's accuracy there
/// falls below its accuracy on SFT samples, PPO has moved to where it no longer judges well. A round whose
/// <c>summary.json</c> exists is reused; its stages are reused or resumed as the first round's are.
/// </summary>
internal static class PipelineRounds
{
    /// <summary>Runs rounds 2..N after the first round's stages and writes rounds.csv, rounds.png and report.md.</summary>
    public static IReadOnlyList<RoundSummary> Run(PipelineConfig cfg, RunControl control, string sftFolder, string rmFolder, string ppoFolder,
                                                  JsonNode rmSummary, JsonNode ppoSummary)
    {
        string oldRankings = Path.Combine(rmFolder, "rankings.jsonl"), sftEval = Path.Combine(rmFolder, "eval_rankings.jsonl");
        foreach (string f in new[] { oldRankings, sftEval, Path.Combine(rmFolder, "eval_gold.json") })
            if (!File.Exists(f))
                throw new FileNotFoundException($"{f}: rounds > 1 continue the comparisons the RM was trained on (rankings.jsonl) and normalise and " +
                                                "measure on its held-out SFT samples (eval_rankings.jsonl, eval_gold.json); use an RM trained on the default task.", f);
        var rounds = new List<RoundSummary> { FromStages(1, rmSummary, ppoSummary, null, null, (int)rmSummary["train_pairs"]!) };
        string prevRm = rmFolder, prevPolicy = ppoFolder;
        for (int r = 2; r <= cfg.Rounds; r++)
        {
            string dir = Path.Combine(cfg.Out, $"round{r}");
            string summaryFile = Path.Combine(dir, "summary.json");
            if (File.Exists(summaryFile))
            {
                Console.Error.WriteLine($"== round {r}: reusing {dir}");
                rounds.Add(JsonSerializer.Deserialize<RoundSummary>(File.ReadAllText(summaryFile), ConfigLoader.Json)!);
            }
            else
            {
                OutputFolder.Create(dir);
                var s = RunRound(cfg, control, r, dir, sftFolder, prevRm, prevPolicy, oldRankings, sftEval);
                AtomicFile.WriteAllText(summaryFile, JsonSerializer.Serialize(s, ConfigLoader.Json));
                rounds.Add(s);
            }
            prevRm = Path.Combine(dir, "rm");
            prevPolicy = Path.Combine(dir, "ppo");
            oldRankings = Path.Combine(dir, "data", "train_rankings.jsonl");
        }
        Write(cfg.Out, rounds);
        return rounds;
    }

    static RoundSummary RunRound(PipelineConfig cfg, RunControl control, int r, string dir, string sftFolder, string prevRm, string prevPolicy,
                                 string oldRankings, string sftEval)
    {
        var device = DeviceSelector.Resolve(DeviceSelector.Parse(cfg.Device));
        var tokenizer = TextTokenizer.Load(sftFolder);
        string data = Path.Combine(dir, "data");
        var (samples, newComparisons) = Label(cfg, r, data, device, tokenizer, prevPolicy, oldRankings);

        string rmFolder = Path.Combine(dir, "rm");
        var rm = cfg.Rm with
        {
            Out = rmFolder, SftModel = sftFolder, InitModel = prevRm, RankingsFile = Path.Combine(data, "train_rankings.jsonl"), EvalFile = sftEval,
            Seed = cfg.Seed, Device = cfg.Device, Threads = cfg.Threads,
        };
        var rmSummary = PipelineRunner.Stage($"RM (round {r})", rmFolder, control, c => JsonSerializer.SerializeToNode(RmTrainer.Run(rm, c), ConfigLoader.Json)!);

        // the stale and the retrained RM on the same held-out samples of the policy that the stale one trained
        int padId = tokenizer.PaddingId;
        var groups = samples.Select(s => RmTrainer.Tokenize(tokenizer, s.Group(), cfg.Rm.MaxSeqLen)).ToArray();
        double[][] Scores(string folder, RmTrainer.TokenizedGroup[] of)
        {
            using var model = LlamaForSequenceClassification.FromPretrained(folder, device, ScalarType.Float32);
            return RmTrainer.ScoreAll(model, of, padId, device);
        }
        double[][] before = Scores(prevRm, groups), after = Scores(rmFolder, groups);
        WriteJsonl(Path.Combine(dir, "policy_samples.jsonl"), samples.Select((s, i) => s with { ScoreBefore = before[i], ScoreAfter = after[i] }));
        double accBefore = RmTrainer.Accuracy(before, groups), accAfter = RmTrainer.Accuracy(after, groups);
        // on the first RM's held-out SFT samples with their gold scores, as the first RM's pairwise_accuracy (gold ties excluded)
        var gold = JsonSerializer.Deserialize<List<double[]>>(File.ReadAllText(Path.Combine(Path.GetDirectoryName(sftEval)!, "eval_gold.json")))!;
        var sftGroups = DataFiles.ReadRanked(sftEval).Records
            .Select((x, i) => RmTrainer.Tokenize(tokenizer, RmGroup.FromRanked(x) with { Gold = gold[i] }, cfg.Rm.MaxSeqLen)).ToArray();
        double accSft = RmTrainer.Accuracy(Scores(rmFolder, sftGroups), sftGroups);
        Console.Error.WriteLine($"Round {r}: RM accuracy on the latest policy's held-out samples {accBefore:P1} before retraining, {accAfter:P1} after.");

        string ppoFolder = Path.Combine(dir, "ppo");
        var ppo = cfg.PpoForAlgorithm() with
        {
            Out = ppoFolder, SftModel = sftFolder, RmModel = rmFolder, PolicyModel = prevPolicy, Seed = cfg.Seed, Device = cfg.Device, Threads = cfg.Threads,
        };
        var ppoSummary = PipelineRunner.Stage($"PPO (round {r})", ppoFolder, control, c => JsonSerializer.SerializeToNode(Ppo.PpoTrainer.Train(ppo, c), ConfigLoader.Json)!);
        return FromStages(r, rmSummary, ppoSummary, accBefore, accAfter, newComparisons) with { RmAccuracySft = accSft };
    }

    /// <summary>
    /// The round's labelled data in <paramref name="data"/>, reused when complete: rankings.jsonl (the latest policy's K
    /// samples per fresh prompt, ranked by the annotators), train_rankings.jsonl (old + new) and policy_samples.jsonl (K
    /// samples per held-out RM prompt with gold scores).
    /// </summary>
    static (PolicySamples[] Samples, int NewComparisons) Label(PipelineConfig cfg, int r, string data, Device device, TextTokenizer tokenizer,
                                                               string policyFolder, string oldRankings)
    {
        string fresh = Path.Combine(data, "rankings.jsonl"), train = Path.Combine(data, "train_rankings.jsonl"), held = Path.Combine(data, "policy_samples.jsonl");
        if (!File.Exists(train))
        {
            Console.Error.WriteLine($"== round {r}: labelling {cfg.RoundPrompts} prompts × {cfg.Rm.K} samples of {policyFolder}");
            OutputFolder.Create(data);
            using var policy = LlamaForCausalLM.FromPretrained(policyFolder, device, ScalarType.Float32);
            using var rollouts = PolicyRollouts.ForActor(cfg.Rm.Engine, policy, tokenizer, policyFolder, Path.Combine(data, ".rollout_engine"), cfg.Threads);
            SamplingOptions Sampling(ulong seed) => new() { Temperature = (float)cfg.Rm.SampleTemperature, MaxNewTokens = cfg.Rm.MaxNewTokens, Seed = seed };
            var labelCfg = cfg.Rm with { Out = data, TrainPrompts = cfg.RoundPrompts, EvalPrompts = 0, Seed = cfg.Seed };
            RmData.Load(labelCfg, (prompts, k, seed) => InferenceServices.Sample(rollouts, tokenizer, prompts, k, Sampling(Rng.Derive((ulong)seed, $"round{r}"))),
                trainSplit: $"rm_round{r}_prompts");
            File.Delete(Path.Combine(data, "eval_rankings.jsonl"));   // no held-out prompts there: those are below, with gold scores

            var prompts = DataSets.Prompts((ulong)cfg.Seed, DataSets.RmEvalPromptsName, cfg.Rm.EvalPrompts).Select(p => p.Prompt).ToList();
            var sampled = InferenceServices.Sample(rollouts, tokenizer, prompts, cfg.Rm.K, Sampling(Rng.Derive((ulong)cfg.Seed, $"round{r}_held_out")));
            WriteJsonl(held, prompts.Select((p, i) => new PolicySamples(p, [.. sampled[i].Select(s => s.Text)], [.. sampled[i].Select(s => s.EndedWithEos)],
                [.. sampled[i].Select(s => GoldScorer.Score(p, s.Text, s.EndedWithEos).Total)])));
            DataFiles.WriteRanked(train, DataFiles.ReadRanked(oldRankings).Records.Concat(DataFiles.ReadRanked(fresh).Records));   // last: marks the data complete
        }
        int newComparisons = DataFiles.ReadRanked(fresh).Records.Sum(x => x.K * (x.K - 1) / 2);
        return ([.. File.ReadLines(held).Select(l => JsonSerializer.Deserialize<PolicySamples>(l, ConfigLoader.Json)!)], newComparisons);
    }

    /// <summary>
    /// K samples of one held-out prompt from a policy, with their gold scores and, once scored, the raw scores of the
    /// previous round's RM (before) and the retrained one (after).
    /// </summary>
    internal sealed record PolicySamples(string Prompt, string[] Responses, bool[] EndedWithEos, double[] Gold,
                                         double[]? ScoreBefore = null, double[]? ScoreAfter = null)
    {
        /// <summary>All C(K,2) comparisons, judged by the gold scores (ties excluded from accuracy).</summary>
        public RmGroup Group() => RmGroup.FromRanked(new RankedExample(Prompt, Responses, AnnotatorPanel.RankByUtility(Gold))) with { Gold = Gold };
    }

    static readonly JsonSerializerOptions Line = new(ConfigLoader.Json) { WriteIndented = false };

    static void WriteJsonl<T>(string path, IEnumerable<T> records) =>
        DataFiles.WriteLines(path, records.Select(x => JsonSerializer.Serialize(x, Line)));

    static RoundSummary FromStages(int round, JsonNode rm, JsonNode ppo, double? before, double? after, int newComparisons)
    {
        static double D(JsonNode? x) => x.Deserialize<double>(ConfigLoader.Json);   // NaN is written as "NaN"
        return new()
        {
            Round = round, NewComparisons = newComparisons, TrainComparisons = (int)rm["train_pairs"]!,
            RmAccuracySft = D(rm["pairwise_accuracy"]), RmAccuracyBefore = before, RmAccuracyAfter = after,
            GoldGainInSftStd = D(ppo["gold_gain_in_sft_std"]), PpoGoldMean = D(ppo["ppo_gold_mean"]), PpoKl = D(ppo["ppo_kl"]),
        };
    }

    /// <summary>rounds.csv (one row per round), rounds.png (<see cref="RoundsPng"/>) and report.md in <paramref name="folder"/>.</summary>
    static void Write(string folder, IReadOnlyList<RoundSummary> rounds)
    {
        var table = new MetricsTable();
        foreach (var s in rounds)
        {
            var row = new Dictionary<string, double>
            {
                ["round"] = s.Round, ["new_comparisons"] = s.NewComparisons, ["train_comparisons"] = s.TrainComparisons, ["rm_accuracy_sft"] = s.RmAccuracySft,
            };
            if (s.RmAccuracyBefore is double b) row["rm_accuracy_before"] = b;
            if (s.RmAccuracyAfter is double a) row["rm_accuracy_after"] = a;
            row["gold_gain_in_sft_std"] = s.GoldGainInSftStd;
            row["ppo_gold_mean"] = s.PpoGoldMean;
            row["ppo_kl"] = s.PpoKl;
            table.Add(row);
        }
        table.WriteCsv(Path.Combine(folder, "rounds.csv"));
        RoundsPng(Path.Combine(folder, "rounds.png"), rounds);

        static string F(double? x) => x is double v ? v.ToString("F3", CultureInfo.InvariantCulture) : "–";
        var md = new StringBuilder();
        md.AppendLine("# Pipeline rounds").AppendLine();
        md.AppendLine("Round 1 is sft → rm → ppo. Each later round samples K responses per prompt from the latest policy, has the annotators " +
                      "rank them, continues the RM on the old and new comparisons, and runs PPO again from the latest policy (π_ref stays the SFT model). " +
                      "RM accuracies are pairwise against the gold scorer on held-out prompts (gold ties excluded): on SFT samples, and on the latest " +
                      "policy's samples for the previous RM (before) and the retrained one (after). A stale RM that has been optimised against " +
                      "judges its policy's samples worse than SFT samples; that gap is over-optimisation.").AppendLine();
        md.AppendLine("| round | new comparisons | trained on | RM acc. (SFT samples) | RM acc. on policy samples, before | after | gold gain (SFT std) | gold | KL to SFT |");
        md.AppendLine("|---|---|---|---|---|---|---|---|---|");
        foreach (var s in rounds)
            md.AppendLine($"| {s.Round} | {s.NewComparisons} | {s.TrainComparisons} | {F(s.RmAccuracySft)} | {F(s.RmAccuracyBefore)} | {F(s.RmAccuracyAfter)} | " +
                          $"{F(s.GoldGainInSftStd)} | {F(s.PpoGoldMean)} | {F(s.PpoKl)} |");
        md.AppendLine().AppendLine("![rounds](rounds.png)");
        AtomicFile.WriteAllText(Path.Combine(folder, "report.md"), md.ToString());
    }

    /// <summary>
    /// rounds.png, two panels over whole rounds (integer ticks): left, pairwise accuracy against gold (0–1, chance at 0.5)
    /// of each round's RM on the held-out SFT samples and, from round 2, of the previous RM (before) and the retrained one
    /// (after) on held-out samples of the previous round's policy; right, the round's PPO gold gain over SFT in SFT
    /// standard deviations. Each legend sits in one row below its panel, off the data.
    /// </summary>
    static void RoundsPng(string path, IReadOnlyList<RoundSummary> rounds)
    {
        int[] r = [.. rounds.Select(s => s.Round)];
        var accuracy = RoundsPanel("Reward model: pairwise accuracy against gold", "accuracy (fraction of pairs)", r,
            [("RM, SFT samples", MarkerShape.FilledCircle, [.. rounds.Select(s => (double?)s.RmAccuracySft)]),
             ("previous RM, policy samples", MarkerShape.OpenCircle, [.. rounds.Select(s => s.RmAccuracyBefore)]),   // a ring: an equal "after" shows inside it
             ("retrained RM, policy samples", MarkerShape.FilledDiamond, [.. rounds.Select(s => s.RmAccuracyAfter)])],
            reference: 0.5, referenceLabel: "chance");
        accuracy.Axes.SetLimitsY(-0.03, 1.03);
        var gain = RoundsPanel("PPO policy: held-out gold gain over SFT", "gold gain (SFT standard deviations)", r,
            [("PPO policy of the round, held-out prompts", MarkerShape.FilledCircle, [.. rounds.Select(s => (double?)s.GoldGainInSftStd)])],
            reference: 0, referenceLabel: "SFT");
        Plots.SideBySide(path, 1400, 560, accuracy, gain);
    }

    /// <summary>One panel of rounds.png: a line per series over rounds <paramref name="rounds"/> (missing and non-finite values skipped), a dashed reference line labelled at its left end, integer round ticks, the legend in one row below.</summary>
    static Plot RoundsPanel(string title, string yLabel, int[] rounds, (string Label, MarkerShape Marker, double?[] Y)[] series, double reference, string referenceLabel)
    {
        var plt = new Plot();
        plt.Add.HorizontalLine(reference, 1.5f, Colors.Gray, LinePattern.Dashed);
        var label = plt.Add.Text(referenceLabel, rounds.Min() - 0.28, reference);
        label.LabelFontSize = 12;
        label.LabelFontColor = Colors.Gray;
        label.Alignment = Alignment.LowerLeft;
        label.OffsetY = -2;
        foreach (var (name, marker, y) in series)
        {
            var points = rounds.Zip(y).Where(p => p.Second is double v && double.IsFinite(v)).ToArray();
            if (points.Length == 0) continue;
            var line = plt.Add.Scatter(points.Select(p => (double)p.First).ToArray(), points.Select(p => p.Second!.Value).ToArray());
            line.LegendText = name;
            line.LineWidth = 2;
            line.MarkerShape = marker;
            line.MarkerSize = marker switch { MarkerShape.OpenCircle => 16, MarkerShape.FilledDiamond => 12, _ => 9 };
            line.MarkerLineWidth = 2;
        }
        plt.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            [.. rounds.Select(x => (double)x)], [.. rounds.Select(x => x.ToString(CultureInfo.InvariantCulture))]);
        plt.Axes.AutoScale();
        plt.Axes.SetLimitsX(rounds.Min() - 0.3, rounds.Max() + 0.3);
        plt.Title(title);
        plt.XLabel("round");
        plt.YLabel(yLabel);
        Plots.LegendBelow(plt);
        plt.Legend.FontSize = 12;
        return plt;
    }
}
