using System.Diagnostics;
using Rlhf.Inference.Services;
using Rlhf.Training.Common;
using Rlhf.Training.Model;

namespace Rlhf.Training.Ppo;

/// <summary>Seconds of one iteration's phases.</summary>
public sealed record PhaseSeconds(double Generate, double Score, double Experience, double Train, double Sync)
{
    /// <summary>The phases in iteration order; a metrics row holds each as <c>time/{name}</c>.</summary>
    public static readonly IReadOnlyList<string> Names = ["generate", "score", "experience", "train", "sync"];

    /// <summary>The whole iteration's seconds from a metrics row (the sum of its <c>time/{name}</c> phases).</summary>
    public static double TotalOf(IReadOnlyDictionary<string, double> row) => Names.Sum(n => row["time/" + n]);

    /// <summary>The whole iteration.</summary>
    public double Total => Generate + Score + Experience + Train + Sync;
}

/// <summary>What one PPO iteration did: its KL coefficient, the experience's and learner's figures, a task metric, timings.</summary>
/// <param name="Iteration">1-based</param>
/// <param name="KlCoef">β the rewards were shaped with</param>
/// <param name="TaskScore">the task's own score of the training samples (the default task's gold), null when the task has none</param>
public sealed record IterationStats(int Iteration, double KlCoef, ExperienceStats Experience, LearnerStats Learner, double? TaskScore,
    PhaseSeconds Seconds, int RolloutBatch)
{
    /// <summary>The metrics row (metrics.csv and TensorBoard keys, docs/outputs.md).</summary>
    public Dictionary<string, double> ToRow()
    {
        var e = Experience;
        var l = Learner;
        var row = new Dictionary<string, double>
        {
            ["iteration"] = Iteration, ["objective/kl_coef"] = KlCoef,
            ["time/generate"] = Seconds.Generate, ["time/score"] = Seconds.Score,
            ["objective/kl"] = e.Kl, ["objective/entropy"] = e.Entropy, ["objective/scores"] = e.Scores,
            ["objective/rm_scores"] = e.RmScores, ["objective/rlhf_reward"] = e.RlhfReward,
        };
        if (TaskScore is double gold) row["objective/gold"] = gold;
        row["tokens/eos_fraction"] = e.EosFraction;
        row["tokens/response_length"] = e.ResponseLength;
        if (e.ValueMean is double vm) row["val/mean"] = vm;
        if (e.ReturnMean is double rm) row["returns"] = rm;
        if (e.ExplainedVariance is double ev) row["val/explained_variance"] = ev;
        row["policy/rollout_logprob_mismatch"] = e.RolloutLogprobMismatch;
        row["rollout/is_weight_mean"] = e.IsWeightMean;
        row["rollout/is_weight_clipfrac"] = e.IsWeightClipFrac;
        row["time/experience"] = Seconds.Experience;
        if (l.Entropy is double ent) row["policy/entropy"] = ent;
        if (l.PtxLoss is double ptx) row["loss/ptx"] = ptx;
        if (l.KlLoss is double klLoss) row["loss/kl"] = klLoss;
        row["loss/policy"] = l.PolicyLoss;
        if (l.ValueLoss is double vf) row["loss/value"] = vf;
        row["policy/clipfrac"] = l.ClipFrac;
        row["policy/approxkl"] = l.ApproxKl;
        if (l.ValueClipFrac is double vc) row["val/clipfrac"] = vc;
        row["grad_norm/actor"] = l.GradNormActor;
        if (l.GradNormCritic is double gc) row["grad_norm/critic"] = gc;
        row["policy/updates"] = l.Updates;
        row["time/train"] = Seconds.Train;
        row["time/sync"] = Seconds.Sync;
        row["samples/s"] = RolloutBatch / Seconds.Total;
        return row;
    }
}

/// <summary>
/// One PPO iteration, as named parts: rollouts (ONNX Runtime samples from the actor's pushed weights) → rewards
/// (the reward pipeline scores them) → experience (TorchSharp, no grad: log-probs, values, KL-shaped rewards, GAE) →
/// learner (clipped updates over minibatches) → weights (the actor's new weights pushed into the rollout engine) →
/// KL controller. The stage (<see cref="PpoTrainer"/>) builds the parts and owns resume, checkpoints and evaluation.
/// </summary>
public sealed class PpoIteration(RolloutPhase rollouts, RewardPipeline rewards, ExperienceMaker experience, PpoLearner learner,
    PolicyWeightsPush weights, KlController kl, Func<ScoredRollouts, double>? taskScore = null)
{
    /// <summary>Runs iteration <paramref name="it"/> (0-based; the engine holds weights version <paramref name="it"/> and gets <paramref name="it"/> + 1).</summary>
    /// <param name="checkFinite">the NaN guard: (what, value) stops the run on a non-finite value</param>
    public IterationStats Step(int it, Action<string, double> checkFinite)
    {
        double beta = kl.Beta;
        var clock = Stopwatch.StartNew();
        double Lap() { double s = clock.Elapsed.TotalSeconds; clock.Restart(); return s; }

        var rolled = rollouts.Generate(it);
        double generate = Lap();

        var scored = rewards.Score(rolled, training: true);
        double score = Lap();

        var (exp, expStats) = experience.Make(scored, beta);
        double? task = taskScore?.Invoke(scored);
        double make = Lap();

        LearnerStats learned;
        using (exp) learned = learner.Update(exp, it, checkFinite);
        double train = Lap();

        double sync = weights.Push((ulong)(it + 1)).TotalSeconds;
        kl.Update(expStats.Kl, rolled.Prompts.Length);

        return new IterationStats(it + 1, beta, expStats, learned, task, new PhaseSeconds(generate, score, make, train, sync), rolled.Prompts.Length);
    }
}

/// <summary>
/// The weight push after an update: the actor's current weights into the rollout engine as a numbered version. Under LoRA
/// an engine whose graph takes adapters (the base exported once with LoRA inputs, <see cref="Inference.Services.PolicyWeightFormat.Lora"/>)
/// gets the adapter alone; any other gets the merged weights W + (α/r)·B A (<see cref="InferenceServices.Sync"/>).
/// </summary>
public sealed class PolicyWeightsPush(IRolloutService engine, LlamaForCausalLM actor)
{
    /// <summary>Sends the actor's weights as version <paramref name="version"/> (iterations done); returns how long the engine took.</summary>
    public TimeSpan Push(ulong version) => InferenceServices.Sync(engine, actor, version);
}
