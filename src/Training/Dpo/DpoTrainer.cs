using System.Diagnostics;
using System.Text.Json;
using Rlhf.Export;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Training.Model;
using Rlhf.Training.OnnxExport;
using Rlhf.Training.Ppo;
using Rlhf.Training.RewardModel;
using Rlhf.Training.Sft;
using TorchSharp;
using Rlhf.Training.Engines;
using static TorchSharp.torch;

namespace Rlhf.Training.Dpo;

/// <summary>Headline figures of a DPO run (<c>summary.json</c>; keys in docs/outputs.md).</summary>
public sealed record DpoSummary
{
    /// <summary>Always "dpo".</summary>
    public string Stage { get; init; } = "dpo";
    /// <summary>Optimizer steps.</summary>
    public int Steps { get; init; }
    /// <summary>Prompts (groups) trained on per epoch.</summary>
    public int TrainPrompts { get; init; }
    /// <summary>Comparisons per epoch.</summary>
    public int TrainPairs { get; init; }
    /// <summary>Held-out pairs (different gold) whose implicit rewards order them as the reference does.</summary>
    public double HeldOutRewardAccuracy { get; init; }
    /// <summary>Mean training loss over the last 10% of steps.</summary>
    public double FinalTrainLoss { get; init; }
    /// <summary>Default task: held-out gold of the SFT model's samples (mean, std), of the DPO model's, and its KL to SFT.</summary>
    public PolicyComparison? Policy { get; init; }
    /// <summary>Seconds spent sampling and labelling responses.</summary>
    public double LabelSeconds { get; init; }
    /// <summary>Seconds spent training.</summary>
    public double TrainSeconds { get; init; }
    /// <summary>Seconds of the whole stage.</summary>
    public double Seconds { get; init; }
}

/// <summary>The aligned policy against the SFT model on held-out prompts: gold means, SFT's gold std, the gain in SFT std, KL to SFT (nats per response).</summary>
public sealed record PolicyComparison(double SftGoldMean, double SftGoldStd, double GoldMean, double Kl)
{
    /// <summary>(gold − SFT gold) / SFT gold std.</summary>
    public double GoldGainInSftStd => (GoldMean - SftGoldMean) / SftGoldStd;
}

/// <summary>
/// Direct Preference Optimisation (Rafailov et al. 2023) as a stage: the comparisons (files, or the default task
/// labelled as the RM stage labels it), the reference's log-probabilities computed once without gradients, then
/// steps over batches of prompts whose K responses run once each through the policy (rows packed without padding)
/// and whose C(K,2) pairs share the prompt's weight; checkpoints, resume, metrics, plots, export and, on the default
/// task, the held-out gold gain and KL of the result.
/// </summary>
public static class DpoTrainer
{
    const string CheckpointName = "checkpoint";

    /// <summary>One prompt's tokens and its K responses' tokens, with the comparisons among them.</summary>
    internal sealed record DpoGroup(RmGroup Group, int[] Prompt, int[][] Responses);

    /// <summary>Runs the stage end to end.</summary>
    public static DpoSummary Run(DpoConfig cfg, RunControl control)
    {
        cfg.Validate();
        using var log = StageLog.Use(control.Logger);
        return OutputFolder.CleanOnFailure(cfg.Out, () => RunStage(cfg, control));
    }

    static DpoSummary RunStage(DpoConfig cfg, RunControl control)
    {
        var clock = Stopwatch.StartNew();
        var device = DeviceSelector.Resolve(DeviceSelector.Parse(cfg.Device));
        DeviceSelector.SetThreads(cfg.Threads);
        var tokenizer = TextTokenizer.Load(cfg.SftModel);   // a bad SFT folder fails before the output folder is touched
        string? resumeFrom = OutputFolder.Prepare(cfg.Out, control.Resume, control.Overwrite, CheckpointName);

        var labelClock = Stopwatch.StartNew();
        var labelling = cfg.Labelling();
        RmData data = resumeFrom is not null ? RmTrainer.Reload(labelling) : RmTrainer.LabelFresh(labelling, tokenizer, device);
        double labelSeconds = labelClock.Elapsed.TotalSeconds;
        var train = data.Train.Select(g => Tokenize(tokenizer, g, cfg.MaxSeqLen)).ToArray();
        var eval = data.Eval.Select(g => Tokenize(tokenizer, g, cfg.MaxSeqLen)).ToArray();
        StageLog.Info($"DPO data: {train.Length} prompts ({train.Sum(g => g.Group.Pairs.Count)} comparisons), {eval.Length} held-out prompts, in {labelSeconds:F1}s.");

        using var policy = LlamaForCausalLM.FromPretrained(resumeFrom ?? cfg.SftModel, device, ScalarType.Float32);
        policy.GradientCheckpointing = cfg.GradientCheckpointing;
        if (cfg.Lora().Enabled) policy.AttachLora(cfg.Lora(), cfg.Seed, cfg.SftModel, from: resumeFrom);   // a checkpoint holds the base and adapter/
        // π_ref: the SFT model; under LoRA the policy's frozen base itself (same storage, adapters off), no second copy.
        using var reference = cfg.Lora().Enabled ? LlamaForCausalLM.SharingBase(policy) : LlamaForCausalLM.FromPretrained(cfg.SftModel, device, ScalarType.Float32);
        foreach (var p in reference.parameters()) p.requires_grad = false;
        policy.Precision = reference.Precision = cfg.Precision.Resolve(device);
        policy.eval();   // dropout off: the implicit reward compares the same function as π_ref's
        reference.eval();
        int padId = tokenizer.PaddingId;
        // log π_ref of every response, once (no gradient), cached for the whole run
        float[][] refTrain = SequenceLogProbsAll(reference, train, padId, device);
        float[][] refEval = SequenceLogProbsAll(reference, eval, padId, device);

        int stepsPerEpoch = (train.Length + cfg.PromptsPerBatch - 1) / cfg.PromptsPerBatch;
        int totalSteps = cfg.Epochs * stepsPerEpoch;
        using var optimizer = Optimization.AdamW(policy, new AdamWSettings(cfg.Lr, cfg.WeightDecay, cfg.Beta1, cfg.Beta2, cfg.AdamEps));
        var optimizers = new Dictionary<string, optim.Optimizer> { ["optimizer"] = optimizer };
        var metrics = new MetricsTable();
        int start = 0;
        if (resumeFrom is not null)
        {
            (var state, metrics) = Checkpoints.Load<DpoState>(resumeFrom, optimizers, ConfigLoader.ToJson(cfg));
            start = state.Step;
            StageLog.Info($"Resuming from step {start} of {totalSteps}.");
        }
        var steps = new StageSteps("dpo", cfg.Out, totalSteps, start, cfg.CheckpointEvery, resumeFrom, control);
        var trainClock = Stopwatch.StartNew();
        steps.Run("DPO", () =>
        {
            for (int step = start; step < totalSteps; step++)
            {
                double lr = LrSchedule.At(step, totalSteps, cfg.Lr, LrDecay.Cosine, cfg.WarmupSteps, 0.0);
                Optimization.SetLr(optimizer, lr);
                Optimization.ClearGrads(optimizer);
                int[] batch = RmTrainer.BatchIndices(train.Length, step, stepsPerEpoch, cfg.PromptsPerBatch, cfg.Seed);
                var row = new Dictionary<string, double> { ["step"] = step + 1, ["epoch"] = (step + 1) / (double)stepsPerEpoch, ["lr"] = lr };
                using (var scope = NewDisposeScope())
                {
                    var groups = batch.Select(i => train[i]).ToArray();
                    var logp = SequenceLogProbs(policy, groups, padId, device);
                    var rewards = DpoLoss.ImplicitRewards(logp, tensor(batch.SelectMany(i => refTrain[i]).ToArray(), device: device), cfg.Beta);
                    var (chosen, rejected, weight) = RmTrainer.PairTensors(rewards, [.. groups.Select(g => g.Group)], device);
                    var loss = DpoLoss.Compute(chosen, rejected, weight, groups.Length, cfg.Beta, cfg.Loss);
                    loss.backward();
                    using var noGrad = no_grad();
                    row["loss/train"] = loss.item<float>();
                    row["rewards/accuracy"] = (chosen > rejected).to_type(ScalarType.Float32).mean().item<float>();
                    row["rewards/chosen"] = chosen.mean().item<float>();
                    row["rewards/rejected"] = rejected.mean().item<float>();
                    row["rewards/margin"] = (chosen - rejected).mean().item<float>();
                }
                double gradNorm = Optimization.ClipGradNorm(policy, cfg.GradClip);
                steps.CheckFinite(step, "the training loss", row["loss/train"]);
                steps.CheckFinite(step, "the gradient norm", gradNorm);
                optimizer.step();
                row["grad_norm"] = gradNorm;
                bool last = step + 1 == totalSteps;
                if (eval.Length > 0 && ((step + 1) % cfg.EvalEvery == 0 || last))
                {
                    row["rewards/accuracy_eval"] = HeldOutAccuracy(policy, eval, refEval, padId, device, cfg.Beta);
                    StageLog.Info($"step {step + 1}/{totalSteps}  loss {row["loss/train"]:F4}  margin {row["rewards/margin"]:F3}  held-out accuracy {row["rewards/accuracy_eval"]:P1}");
                }
                steps.EndStep(step + 1, row, metrics, () => Checkpoints.Save(Path.Combine(cfg.Out, CheckpointName), tmp =>
                {
                    policy.SavePretrained(tmp, ScalarType.Float32, merged: false);
                    TokenizerFiles.Copy(cfg.SftModel, tmp);
                }, optimizers, metrics, new DpoState(step + 1, ConfigLoader.ToJson(cfg))));
            }
        });
        double trainSeconds = trainClock.Elapsed.TotalSeconds;

        policy.SavePretrained(cfg.Out, ScalarType.Float32);
        TokenizerFiles.Copy(cfg.SftModel, cfg.Out);
        ExportStage.AfterStage(policy, cfg.Out, "dpo");
        AtomicFile.WriteAllText(Path.Combine(cfg.Out, "dpo_config.json"), ConfigLoader.ToJson(cfg));
        metrics.WriteCsv(Path.Combine(cfg.Out, "metrics.csv"));
        Plots.Lines(Path.Combine(cfg.Out, "loss.png"), "DPO: loss and implicit-reward accuracy", "step", "value",
            [Plots.Series("loss (train)", metrics, "loss/train"), Plots.Series("accuracy (train batch)", metrics, "rewards/accuracy"),
             Plots.Series("accuracy (held-out)", metrics, "rewards/accuracy_eval")]);
        Plots.Lines(Path.Combine(cfg.Out, "rewards.png"), "DPO: implicit rewards β·log π/π_ref", "step", "mean per response",
            [Plots.Series("chosen", metrics, "rewards/chosen"), Plots.Series("rejected", metrics, "rewards/rejected"),
             Plots.Series("margin", metrics, "rewards/margin")]);
        policy.Precision = reference.Precision = Precision.Fp32;
        var comparison = data.IsDefaultTask && cfg.PolicyEvalPrompts > 0 ? ComparePolicies(cfg, policy, reference, tokenizer, padId, device) : null;
        if (comparison is not null)
            StageLog.Info($"Held-out gold: SFT {comparison.SftGoldMean:F3} (std {comparison.SftGoldStd:F3}), DPO {comparison.GoldMean:F3} " +
                          $"(+{comparison.GoldGainInSftStd:F2} SFT std) at KL {comparison.Kl:F2}.");
        var (_, lossY) = metrics.Series("step", "loss/train");
        var summary = new DpoSummary
        {
            Steps = totalSteps, TrainPrompts = train.Length, TrainPairs = train.Sum(g => g.Group.Pairs.Count),
            HeldOutRewardAccuracy = eval.Length > 0 ? HeldOutAccuracy(policy, eval, refEval, padId, device, cfg.Beta) : double.NaN,
            FinalTrainLoss = lossY.Length == 0 ? double.NaN : lossY.Skip(lossY.Length - Math.Max(1, lossY.Length / 10)).Average(),
            Policy = comparison, LabelSeconds = labelSeconds, TrainSeconds = trainSeconds, Seconds = clock.Elapsed.TotalSeconds,
        };
        AtomicFile.WriteAllText(Path.Combine(cfg.Out, "summary.json"), JsonSerializer.Serialize(summary, ConfigLoader.Json));
        return summary;
    }

    /// <summary>
    /// A group's tokens: the prompt (<see cref="PromptFormat.PromptIds"/>) and each response (<see cref="PromptFormat.ResponseIds"/>),
    /// at most <paramref name="maxLen"/> tokens together: the prompt loses tokens from its start (BOS kept) down to half the
    /// budget, then the response from its end.
    /// </summary>
    internal static DpoGroup Tokenize(TextTokenizer tokenizer, RmGroup g, int maxLen)
    {
        int[] prompt = PromptFormat.PromptIds(tokenizer, g.Prompt);
        int[][] responses = [.. g.Responses.Select(r => PromptFormat.ResponseIds(tokenizer, g.Prompt, r))];
        int longest = responses.Max(r => r.Length);
        int keep = Math.Max(Math.Min(prompt.Length, maxLen / 2), maxLen - longest);
        if (prompt.Length > keep)
            prompt = tokenizer.AddedBosId is int bos ? [bos, .. prompt[^(keep - 1)..]] : prompt[^keep..];
        int budget = maxLen - prompt.Length;
        return new DpoGroup(g, prompt, [.. responses.Select(r => r.Length > budget ? r[..budget] : r)]);
    }

    /// <summary>Σ_t log π(y_t|x, y_&lt;t) of every response of <paramref name="groups"/> [Σ K], in group order; rows packed without padding.</summary>
    internal static Tensor SequenceLogProbs(LlamaForCausalLM model, IReadOnlyList<DpoGroup> groups, int padId, Device device)
    {
        int[][] prompts = [.. groups.SelectMany(g => g.Responses.Select(_ => g.Prompt))];
        int[][] responses = [.. groups.SelectMany(g => g.Responses)];
        using var exp = Experience.Build(prompts, responses, padId, device);
        var (packed, index) = exp.Pack();
        using var _ = packed;
        var logp = LogProbs.OfTokens(ExperienceMaker.ResponseLogits(model, exp, packed, index), exp.Responses);
        return (logp * exp.ResponseMask).sum(1);
    }

    /// <summary>Per group, Σ log π of each response, without gradients, 16 groups at a time.</summary>
    static float[][] SequenceLogProbsAll(LlamaForCausalLM model, DpoGroup[] groups, int padId, Device device)
    {
        var all = new float[groups.Length][];
        using var _ = no_grad();
        for (int i = 0; i < groups.Length; i += 16)
        {
            using var scope = NewDisposeScope();
            var chunk = groups.Skip(i).Take(16).ToArray();
            float[] flat = SequenceLogProbs(model, chunk, padId, device).to(CPU).data<float>().ToArray();
            int offset = 0;
            for (int g = 0; g < chunk.Length; g++)
            {
                all[i + g] = flat[offset..(offset + chunk[g].Responses.Length)];
                offset += chunk[g].Responses.Length;
            }
        }
        return all;
    }

    /// <summary>Share of held-out pairs with different reference values that the implicit rewards order the same way (<see cref="RmTrainer.Accuracy(double[][], IReadOnlyList{RmGroup})"/>).</summary>
    static double HeldOutAccuracy(LlamaForCausalLM policy, DpoGroup[] eval, float[][] refEval, int padId, Device device, double beta)
    {
        float[][] logp = SequenceLogProbsAll(policy, eval, padId, device);
        double[][] rewards = [.. logp.Select((g, i) => g.Select((x, j) => beta * (x - refEval[i][j])).ToArray())];
        return RmTrainer.Accuracy(rewards, [.. eval.Select(g => g.Group)]);
    }

    /// <summary>
    /// Default task: one sample per held-out PPO prompt from the DPO policy and from the SFT model (the seeds PPO's
    /// evaluation and its SFT baseline use, temperature 1), gold-scored; KL = mean Σ_t (log π − log π_ref) over the DPO samples.
    /// </summary>
    static PolicyComparison ComparePolicies(DpoConfig cfg, LlamaForCausalLM policy, LlamaForCausalLM reference, TextTokenizer tokenizer, int padId, Device device)
    {
        string[] prompts = [.. DataSets.Prompts((ulong)cfg.Seed, DataSets.PpoEvalPromptsName, cfg.PolicyEvalPrompts).Select(p => p.Prompt)];
        int[][] ids = [.. prompts.Select(p => PromptFormat.PromptIds(tokenizer, p))];
        var sampling = new PpoConfig { MaxNewTokens = cfg.MaxNewTokens };
        RolloutBatch Sample(LlamaForCausalLM model, string scratch, ulong seed)
        {
            using var engine = PolicyRollouts.ForActor(cfg.Engine, model, tokenizer, cfg.SftModel, Path.Combine(cfg.Out, scratch), cfg.Threads);
            InferenceServices.Sync(engine, model, 0);
            return RolloutPhase.Sample(engine, 0, prompts, ids, seed, sampling);
        }
        var gold = Data.DefaultTask.GoldScorer.TaskGoldFor(onTaskPrompts: true)!;
        double[] Gold(RolloutBatch b) => [.. b.Results.Select((r, i) =>
            gold(prompts[i], PromptFormat.ResponseText(tokenizer, r.ResponseIds), r.FinishReason == Inference.Rollout.RolloutFinishReason.Eos))];
        var sft = Sample(reference, ".reference_engine", 0xB0F);
        var dpo = Sample(policy, ".rollout_engine", 0xE7A1);
        double kl;
        using (no_grad())
        {
            var groups = prompts.Select((p, i) => new DpoGroup(new RmGroup(p, [""], [], [0]), ids[i], [dpo.Results[i].ResponseIds])).ToArray();
            kl = SequenceLogProbsAll(policy, groups, padId, device).Zip(SequenceLogProbsAll(reference, groups, padId, device))
                .Average(p => (double)(p.First[0] - p.Second[0]));
        }
        var (sftMean, sftStd) = Statistics.MeanStd(Gold(sft));
        return new PolicyComparison(sftMean, sftStd, Gold(dpo).Average(), kl);
    }

    sealed record DpoState(int Step, string ConfigJson) : ICheckpointState;
}
