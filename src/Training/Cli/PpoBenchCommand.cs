using System.CommandLine;
using System.Diagnostics;
using Rlhf.Export;
using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Training.Model;
using Rlhf.Training.OnnxExport;
using Rlhf.Training.Ppo;
using Rlhf.Training.Sft;
using static TorchSharp.torch;

namespace Rlhf.Training.Cli;

/// <summary>
/// <c>rlhf bench ppo</c>: seconds per phase of one PPO iteration (generate, score, experience, train, sync) for each
/// advantage estimator × trainer precision × rollout precision, per model config. The models are random (the point is cost): a fresh policy
/// with a tokenizer trained on the default task, and a reward model from it with a fresh head, exported to ONNX.
/// The second of two iterations is timed (the first pays for warm-up).
/// </summary>
internal static class PpoBenchCommand
{
    /// <summary>The <c>ppo</c> sub-command of <c>rlhf bench</c>.</summary>
    public static Command Create()
    {
        var configs = new Option<string>("--configs") { Description = "Comma-separated names of model folders under models/ (their config.json).", DefaultValueFactory = _ => "tiny,small" };
        var batch = new Option<int>("--rollout-batch") { Description = "Rollouts per iteration.", DefaultValueFactory = _ => 32 };
        var miniBatch = new Option<int>("--mini-batch") { Description = "Rollouts per minibatch.", DefaultValueFactory = _ => 16 };
        var epochs = new Option<int>("--ppo-epochs") { Description = "Passes over the rollouts per iteration.", DefaultValueFactory = _ => 1 };
        var newTokens = new Option<int>("--max-new-tokens") { Description = "Response length cap.", DefaultValueFactory = _ => 32 };
        var threads = new Option<int>("--threads") { Description = "Threads (0 = all cores).", DefaultValueFactory = _ => 0 };
        var estimators = new Option<string>("--estimators") { Description = "Comma-separated advantage estimators to time (gae, rloo, grpo, dr_grpo, reinforce_pp); the critic-free ones sample --n-samples-per-prompt responses per prompt.", DefaultValueFactory = _ => "gae" };
        var samples = new Option<int>("--n-samples-per-prompt") { Description = "Samples per prompt for the critic-free estimators (gae samples one).", DefaultValueFactory = _ => 4 };
        var json = new Option<string?>("--json") { Description = "Also write the figures to this JSON file (keys iteration_seconds.<fp32|bf16>.<fp32|int8>.<config>, phase_seconds.<phase>.<precision>.<rollout precision>.<config>; a critic-free estimator's keys end in .<estimator>)." };
        var cmd = new Command("ppo", "Seconds per phase of a PPO iteration for fp32/bf16 training × fp32/int8 rollouts, per model config (random weights).")
            { configs, batch, miniBatch, epochs, newTokens, threads, estimators, samples, json };
        cmd.SetAction(r => RlhfCommand.Guard(() =>
        {
            var names = r.GetValue(configs)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            var settings = new PpoConfig
            {
                RolloutBatch = r.GetValue(batch), MiniBatch = Math.Min(r.GetValue(miniBatch), r.GetValue(batch)), PpoEpochs = r.GetValue(epochs),
                MaxNewTokens = r.GetValue(newTokens), Threads = r.GetValue(threads),
            };
            var list = r.GetValue(estimators)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(e => ConfigLoader.FromJson<PpoConfig>(new System.Text.Json.Nodes.JsonObject { ["advantage_estimator"] = e }, "--estimators").AdvantageEstimator).ToList();
            var figures = Run(names, settings, Console.Out, list, r.GetValue(samples));
            if (r.GetValue(json) is string file)
                BenchFigures.Write(file, figures);
            return 0;
        }));
        return cmd;
    }

    /// <summary>
    /// Runs every config × estimator × precision × rollout precision; <paramref name="settings"/> gives the batch shape and
    /// threads, <paramref name="samplesPerPrompt"/> the k of the critic-free estimators (same responses per iteration).
    /// </summary>
    public static SortedDictionary<string, double> Run(IReadOnlyList<string> configNames, PpoConfig settings, TextWriter w,
        IReadOnlyList<AdvantageEstimator>? estimators = null, int samplesPerPrompt = 4)
    {
        estimators ??= [AdvantageEstimator.Gae];
        var figures = new SortedDictionary<string, double>(StringComparer.Ordinal);
        w.WriteLine($"one PPO iteration: {settings.RolloutBatch} rollouts of up to {settings.MaxNewTokens} tokens, {settings.PpoEpochs} epoch(s) of minibatches of {settings.MiniBatch}; seconds per phase");
        w.WriteLine($"{"config",-8} {"estimator",12} {"train",5} {"rollout",7} | {string.Join(" ", PhaseSeconds.Names.Select(p => $"{p,10}"))} | {"iteration",9} {"speed-up",8} {"log π gap",9}");
        foreach (string name in configNames)
        {
            string root = Directory.CreateTempSubdirectory("rlhf-bench-ppo-").FullName;
            try
            {
                var (sft, rm) = RandomModels(name, root, settings.Threads);
                double baseline = 0;
                foreach (var estimator in estimators)
                foreach (var precision in new[] { Precision.Fp32, Precision.Bf16 })
                    foreach (var rollout in new[] { RolloutPrecision.Fp32, RolloutPrecision.Int8 })
                    {
                        var cfg = settings with
                        {
                            AdvantageEstimator = estimator, NSamplesPerPrompt = estimator.NeedsCritic() ? 1 : samplesPerPrompt,
                            Out = Path.Combine(root, $"ppo-{precision}-{rollout}"), SftModel = sft, RmModel = null, RewardModel = rm,
                            RewardNormalization = ScoreNormalization.None, Iterations = 2, EvalPrompts = 4, EvalEvery = 100, CheckpointEvery = 0,
                            DefaultPrompts = Math.Max(64, 2 * settings.RolloutBatch), BestOfN = [1], Precision = precision, RolloutPrecision = rollout,
                        };
                        PpoTrainer.Train(cfg, new RunControl { Progress = false });
                        var last = MetricsTable.ReadCsv(Path.Combine(cfg.Out, "metrics.csv")).Rows[^1];
                        string p = precision.ToString().ToLowerInvariant(), rp = ExportNames.Name(rollout), est = ConfigLoader.EnumName(estimator);
                        string suffix = estimator == AdvantageEstimator.Gae ? "" : "." + est;
                        double total = PhaseSeconds.TotalOf(last);
                        foreach (var ph in PhaseSeconds.Names) figures[$"phase_seconds.{ph}.{p}.{rp}.{name}{suffix}"] = last["time/" + ph];
                        figures[$"iteration_seconds.{p}.{rp}.{name}{suffix}"] = total;
                        double gap = last["policy/rollout_logprob_mismatch"];
                        figures[$"rollout_logprob_mismatch.{p}.{rp}.{name}{suffix}"] = gap;
                        if (baseline == 0) baseline = total;
                        w.WriteLine($"{name,-8} {est,12} {p,5} {rp,7} | {string.Join(" ", PhaseSeconds.Names.Select(ph => $"{last["time/" + ph],10:F2}"))} | {total,9:F2} {baseline / total,7:F2}x {gap,9:E1}");
                        Directory.Delete(cfg.Out, true);
                    }
            }
            finally
            {
                try { Directory.Delete(root, true); } catch (IOException) { }
            }
        }
        using var self = Process.GetCurrentProcess();
        w.WriteLine($"peak RSS: {self.PeakWorkingSet64 / (1024.0 * 1024):F0} MiB");
        return figures;
    }

    /// <summary>
    /// A fresh policy of models/<paramref name="name"/>/config.json with a tokenizer trained on default-task texts, and a
    /// reward model from it with a fresh head exported to ONNX. Returns (policy folder, reward ONNX folder).
    /// </summary>
    internal static (string Sft, string RewardOnnx) RandomModels(string name, string root, int threads)
    {
        DeviceSelector.SetThreads(threads);
        string sft = Path.Combine(root, "sft");
        var texts = DataSets.SftExamples(1, DataSets.SftTrainName, 2000).Select(e => Inference.Tokenization.PromptFormat.Join(e.Prompt, e.Response));
        SftTrainer.WriteFreshModel(sft, texts, new SftConfig().TokenizerVocabSize, Path.Combine("models", name, "config.json"), seed: 1);
        string rmOnnx = Path.Combine(root, "rm-onnx");
        using var rm = LlamaForSequenceClassification.FromPretrained(sft, CPU, ScalarType.Float32, newHeadSeed: 1);
        ExportStage.ExportReward(rm, rmOnnx, ModelKind.Reward, new ExportOptions { TokenizerFolder = sft, Overwrite = true, Stage = "bench" }, parity: false);
        return (sft, rmOnnx);
    }
}
