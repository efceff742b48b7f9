using System.Diagnostics;
using Rlhf.Export;
using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Training.Data.DefaultTask;
using Rlhf.Training.Model;
using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>
/// The PPO stage (InstructGPT's: PPO with a per-token KL penalty): builds the parts of <see cref="PpoIteration"/> from
/// the config, runs the iterations under the shared step loop (progress, checkpoints, cancellation, NaN guard), resumes
/// from a checkpoint, evaluates on held-out prompts, stops early on a plateau, and writes the policy, critic, metrics,
/// plots, report and summary.
/// </summary>
public static class PpoTrainer
{
    const string CheckpointName = "checkpoint";

    /// <summary>Runs the stage end to end.</summary>
    public static PpoSummary Train(PpoConfig cfg, RunControl control)
    {
        cfg.Validate();
        using var log = StageLog.Use(control.Logger);
        return OutputFolder.CleanOnFailure(cfg.Out, () => TrainStage(cfg, control));
    }

    static PpoSummary TrainStage(PpoConfig cfg, RunControl control)
    {
        var clock = Stopwatch.StartNew();
        var device = DeviceSelector.Resolve(DeviceSelector.Parse(cfg.Device));
        DeviceSelector.SetThreads(cfg.Threads);
        var (prompts, evalPrompts) = Prompts(cfg);   // bad prompt files fail before the output folder is touched
        PpoModels.CheckFolders(cfg);
        string? resumeFrom = OutputFolder.Prepare(cfg.Out, control.Resume, control.Overwrite, CheckpointName);
        using var models = PpoModels.Open(cfg, device, resumeFrom);
        var rollouts = new RolloutPhase(models.Rollouts, models.Tokenizer, prompts, cfg);
        var rewards = new RewardPipeline(models.Rewards, models.Tokenizer, cfg);
        using var learner = new PpoLearner(models, cfg, cfg.PtxCoef > 0 ? PtxBatches.Load(cfg, models.Tokenizer, models.Actor.Config.MaxPositionEmbeddings) : null);
        KlController kl = cfg.AdaptiveKl ? new AdaptiveKlController(cfg.InitKlCoef, cfg.TargetKl, cfg.KlHorizon) : new FixedKlController(cfg.InitKlCoef);
        var weights = new PolicyWeightsPush(models.Rollouts, models.Actor);

        var metrics = new MetricsTable();
        int start = 0;
        if (resumeFrom is not null)
        {
            (var state, metrics) = Checkpoints.Load<PpoState>(resumeFrom, learner.Optimizers, ConfigLoader.ToJson(cfg));
            start = state.Iteration;
            kl.Restore(state.Kl);
            if (state.Moments is not null) rewards.Moments = new RunningMoments(state.Moments);
            rewards.Calibration = state.Calibration;
            StageLog.Info($"Resuming from iteration {start} of {cfg.Iterations}.");
        }
        // Weights version = iterations done: replicas (which serve their own folder) and a resumed run's engine get the actor's now.
        if (resumeFrom is not null || cfg.RolloutEndpoints.Count > 0) weights.Push((ulong)start);
        if (resumeFrom is null)
        {
            if (RewardPipeline.NeedsSftCalibration(cfg, models.Rewards)) rewards.Calibrate(rollouts.Cycle(cfg.NormalizationSamples, 0x5F7A11));
            if (cfg.FoldRmNormalization && models.Critic is not null) RewardPipeline.FoldIntoCritic(models.Critic, cfg, rewards.Calibration);
        }
        var gold = GoldScorer.TaskGoldFor(onTaskPrompts: cfg.PromptsFile is null && cfg.EvalPromptsFile is null);
        var iteration = new PpoIteration(rollouts, rewards, new ExperienceMaker(models, cfg), learner, weights, kl,
            gold is null ? null : s => PpoEvaluation.Gold(s, gold).Average());
        var evaluation = new PpoEvaluation(models, rewards, evalPrompts, cfg, gold);
        var steps = new StageSteps("ppo", cfg.Out, cfg.Iterations, start, cfg.CheckpointEvery, resumeFrom, control);
        StageLog.Info($"PPO: {prompts.Count} prompts, {cfg.Iterations} iterations of {cfg.RolloutBatch} rollouts, engine {cfg.Engine}, reward {cfg.RewardModel ?? cfg.RmFolder()}.");

        bool plateaued = resumeFrom is not null && Plateaued(metrics, cfg);   // a resumed run that had stopped early stays stopped
        steps.Run("PPO", () =>
        {
            for (int it = start; it < cfg.Iterations && !plateaued; it++)
            {
                var stats = iteration.Step(it, (what, value) => steps.CheckFinite(it, what, value));
                var row = stats.ToRow();
                bool last = it + 1 == cfg.Iterations;
                if ((it + 1) % cfg.EvalEvery == 0 || last)
                {
                    var e = evaluation.Evaluate();
                    if (e.Gold is double g) row["eval/gold"] = g;
                    row["eval/score"] = e.Score;
                    row["eval/kl"] = e.Kl;
                    row["eval/response_length"] = e.Lengths.Average();
                    StageLog.Info($"iter {it + 1}/{cfg.Iterations}  score {stats.Experience.Scores:F3}{(stats.TaskScore is double t ? $"  gold {t:F3}" : "")}  kl {stats.Experience.Kl:F2}  " +
                        $"β {kl.Beta:F4}  held-out score {e.Score:F3}{(e.Gold is double eg ? $" gold {eg:F3}" : "")} kl {e.Kl:F2}");
                    plateaued = !last && Plateaued(metrics, cfg, e.Score);
                    if (plateaued)
                        StageLog.Info($"Held-out RM score has not gained more than {cfg.EarlyStopMinDelta} over {cfg.EarlyStopPatience} evaluations: stopping after iteration {it + 1} (early_stop_patience).");
                }
                var state = new PpoState(it + 1, kl.State, ConfigLoader.ToJson(cfg), rewards.Moments.State, rewards.Calibration);
                steps.EndStep(it + 1, row, metrics, () => SaveCheckpoint(cfg, models, learner, metrics, state), final: plateaued);
            }
        });

        // Outputs: the aligned policy as an HF folder (+ ONNX), the critic (gae), metrics, curves, the report.
        models.Actor.SavePretrained(cfg.Out, ScalarType.Float32);
        TokenizerFiles.Copy(cfg.SftModel, cfg.Out);
        models.Critic?.SavePretrained(Path.Combine(cfg.Out, "critic"), ScalarType.Float32);
        OnnxExport.ExportStage.AfterStage(models.Actor, cfg.Out, "ppo");
        metrics.WriteCsv(Path.Combine(cfg.Out, "metrics.csv"));
        AtomicFile.WriteAllText(Path.Combine(cfg.Out, "ppo_config.json"), ConfigLoader.ToJson(cfg));
        PpoReport.Curves(cfg.Out, metrics);
        var comparison = evaluation.Compare();
        PpoReport.Write(cfg.Out, comparison, metrics, cfg.PtxCoef);
        var summary = PpoSummary.From(metrics, comparison, clock.Elapsed.TotalSeconds) with
        {
            RewardNormalization = rewards.Calibration,
            TrainableParameters = Optimization.TrainableCount(models.Actor) + (models.Critic is null ? 0 : Optimization.TrainableCount(models.Critic)),
        };
        AtomicFile.WriteAllText(Path.Combine(cfg.Out, "summary.json"), System.Text.Json.JsonSerializer.Serialize(summary, ConfigLoader.Json));
        return summary;
    }

    /// <summary>The checkpoint: actor (with the tokenizer), critic (when there is one), the optimizers, the metrics so far and <paramref name="state"/>.</summary>
    static string SaveCheckpoint(PpoConfig cfg, PpoModels models, PpoLearner learner, MetricsTable metrics, PpoState state) =>
        Checkpoints.Save(Path.Combine(cfg.Out, CheckpointName), tmp =>
        {
            // merged: false — under LoRA the checkpoint holds each base and its adapter/, which resume reads back exactly
            models.Actor.SavePretrained(Path.Combine(tmp, "actor"), ScalarType.Float32, merged: false);
            TokenizerFiles.Copy(cfg.SftModel, Path.Combine(tmp, "actor"));
            models.Critic?.SavePretrained(Path.Combine(tmp, "critic"), ScalarType.Float32, merged: false);
        }, learner.Optimizers, metrics, state);

    /// <summary>Whether the held-out RM scores in <paramref name="metrics"/> (and <paramref name="latest"/>, not yet added) have plateaued (<see cref="EarlyStopping"/>).</summary>
    static bool Plateaued(MetricsTable metrics, PpoConfig cfg, double? latest = null)
    {
        double[] scores = [.. metrics.Rows.Where(r => r.ContainsKey("eval/score")).Select(r => r["eval/score"]), .. latest is { } l ? [l] : Array.Empty<double>()];
        return EarlyStopping.Plateaued(scores, cfg.EarlyStopPatience, cfg.EarlyStopMinDelta);
    }

    /// <summary>
    /// The training and held-out prompts: the embedded task's splits; or the user's <c>prompts_file</c> with
    /// <c>eval_prompts_file</c> (its first <c>eval_prompts</c>); or, with a <c>prompts_file</c> alone, its last
    /// min(eval_prompts, n/10) prompts held out (<see cref="HeldOutSplit"/>) so the evaluation is on prompts PPO never trained on.
    /// </summary>
    static (IReadOnlyList<string> Train, IReadOnlyList<string> Eval) Prompts(PpoConfig cfg)
    {
        IReadOnlyList<string> Read(string file) => NonEmpty(ReadPrompts(file, cfg), file);
        IReadOnlyList<string> Embedded(string split, int n) => [.. DataSets.Prompts((ulong)cfg.Seed, split, n).Select(p => p.Prompt)];
        if (cfg.PromptsFile is null)
            return (Embedded(DataSets.PpoPromptsName, cfg.DefaultPrompts),
                    cfg.EvalPromptsFile is null ? Embedded(DataSets.PpoEvalPromptsName, cfg.EvalPrompts) : [.. Read(cfg.EvalPromptsFile).Take(cfg.EvalPrompts)]);
        var train = Read(cfg.PromptsFile);
        if (cfg.EvalPromptsFile is not null) return (train, [.. Read(cfg.EvalPromptsFile).Take(cfg.EvalPrompts)]);
        return HeldOutSplit(train, cfg.EvalPrompts, cfg.PromptsFile);
    }

    /// <summary>Splits one prompt list into training prompts and the last k = min(<paramref name="evalPrompts"/>, ⌊n/10⌋) held out (k ≥ 1, n ≥ 2).</summary>
    internal static (IReadOnlyList<string> Train, IReadOnlyList<string> Eval) HeldOutSplit(IReadOnlyList<string> prompts, int evalPrompts, string file)
    {
        if (prompts.Count < 2)
            throw new InvalidDataException($"{file}: {prompts.Count} prompt(s); give at least 2 (some are held out for evaluation) or an eval_prompts_file.");
        int k = Math.Max(1, Math.Min(evalPrompts, prompts.Count / 10));
        return ([.. prompts.Take(prompts.Count - k)], [.. prompts.Skip(prompts.Count - k)]);
    }

    /// <summary>A prompts file's prompts as text: conversations rendered with the SFT model's chat template and its generation prompt.</summary>
    static List<string> ReadPrompts(string file, PpoConfig cfg)
    {
        var records = DataFiles.ReadPrompts(file, columns: cfg.DatasetColumns).Records;
        using var chat = ChatText.TemplateFor(records, cfg.SftModel, file);
        return [.. records.Select(p => ChatText.PromptText(p, chat))];
    }

    static List<string> NonEmpty(List<string> list, string file) =>
        list.Count > 0 ? list : throw new InvalidDataException($"{file}: no prompts.");

    sealed record PpoState(int Iteration, KlControllerState Kl, string ConfigJson, RunningMomentsState? Moments = null,
                           RewardModel.RewardNormalization? Calibration = null) : ICheckpointState;
}
