using System.Diagnostics;
using Rlhf.Export;
using Rlhf.Inference.Reward;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Training.Data.DefaultTask;
using Rlhf.Training.Model;
using Rlhf.Training.RewardModel;
using Rlhf.Training.Sft;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>
/// PPO with a per-token KL penalty, as InstructGPT: each iteration reads top to bottom —
/// rollout (ONNX Runtime) → score (reward model) → experience (TorchSharp, no grad: old/ref logprobs, values,
/// KL-shaped rewards) → GAE → clipped policy/value updates over shuffled minibatches → weight sync into the engine.
/// </summary>
public static class PpoTrainer
{
    const string CheckpointName = "checkpoint";

    /// <summary>Models and services of a run.</summary>
    sealed class Run : IDisposable
    {
        public required Device Device { get; init; }
        public required TextTokenizer Tokenizer { get; init; }
        public required LlamaForCausalLM Actor { get; init; }
        public required LlamaForCausalLM Reference { get; init; }
        public required LlamaForSequenceClassification Critic { get; init; }
        public required IRolloutService Rollouts { get; init; }
        public required IRewardService Rewards { get; init; }
        /// <summary>The sft normalisation of the reward model's scores (gain·r + bias), null when none applies.</summary>
        public RewardNormalization? Calibration { get; set; }
        public int PadId => Tokenizer.PadId ?? Tokenizer.EosId ?? 0;

        public void Dispose()
        {
            Rollouts.Dispose();
            Rewards.Dispose();
            Actor.Dispose();
            Reference.Dispose();
            Critic.Dispose();
        }
    }

    /// <summary>A scored rollout batch: what came back from the inference side, as plain arrays.</summary>
    internal sealed record ScoredRollouts(string[] Prompts, int[][] PromptIds, RolloutResult[] Results, string[] Texts, bool[] EndedWithEos, float[] RmScores, float[] Scores);

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
        var prompts = TrainingPrompts(cfg);   // bad prompt files fail before the output folder is touched
        var evalPrompts = EvalPrompts(cfg);
        CheckModelFolders(cfg);
        string? resumeFrom = OutputFolder.Prepare(cfg.Out, control.Resume, control.Overwrite, CheckpointName);
        using var run = Open(cfg, device, resumeFrom);
        var promptIds = prompts.Select(p => PromptFormat.PromptIds(run.Tokenizer, p)).ToArray();
        using var actorOpt = TrainerParts.AdamW(run.Actor, new AdamWSettings(cfg.ActorLr, cfg.WeightDecay, cfg.Beta1, cfg.Beta2, cfg.AdamEps));
        using var criticOpt = TrainerParts.AdamW(run.Critic, new AdamWSettings(cfg.CriticLr, cfg.WeightDecay, cfg.Beta1, cfg.Beta2, cfg.AdamEps));
        var optimizers = new Dictionary<string, optim.Optimizer> { ["actor_optimizer"] = actorOpt, ["critic_optimizer"] = criticOpt };
        KlController kl = cfg.AdaptiveKl ? new AdaptiveKlController(cfg.InitKlCoef, cfg.TargetKl, cfg.KlHorizon) : new FixedKlController(cfg.InitKlCoef);
        var ptx = cfg.PtxCoef > 0 ? PtxBatches.Load(cfg, run.Tokenizer, run.Actor.Config.MaxPositionEmbeddings) : null;

        var metrics = new MetricsTable();
        var moments = new RunningMoments();   // reward_normalization running
        int start = 0;
        if (resumeFrom is not null)
        {
            (var state, metrics) = TrainerParts.LoadCheckpoint<PpoState>(resumeFrom, optimizers, ConfigLoader.ToJson(cfg));
            start = state.Iteration;
            kl.Restore(state.Kl);
            if (state.Moments is not null) moments = new RunningMoments(state.Moments);
            run.Calibration = state.Calibration;
            Log($"Resuming from iteration {start} of {cfg.Iterations}.");
        }
        // Weights version = iterations done: replicas (which serve their own folder) and a resumed run's engine get the actor's now.
        if (resumeFrom is not null || cfg.RolloutEndpoints.Count > 0) InferenceServices.Sync(run.Rollouts, run.Actor, (ulong)start);
        if (resumeFrom is null)
        {
            run.Calibration = NeedsSftNormalization(cfg, run.Rewards) ? MeasureOnSft(run, prompts, promptIds, cfg) : null;
            if (cfg.FoldRmNormalization) FoldIntoCritic(run.Critic, cfg, run.Calibration);
        }
        var steps = new StageSteps("ppo", cfg.Out, cfg.Iterations, start, cfg.CheckpointEvery, resumeFrom, control);
        Log($"PPO: {prompts.Count} prompts, {cfg.Iterations} iterations of {cfg.RolloutBatch} rollouts, engine {cfg.Engine}, reward {cfg.RewardModel ?? cfg.RmFolder()}.");

        bool plateaued = resumeFrom is not null && Plateaued(metrics, cfg);   // a resumed run that had stopped early stays stopped
        void Iterations()
        {
            for (int it = start; it < cfg.Iterations && !plateaued; it++)
            {
                var row = new Dictionary<string, double> { ["iteration"] = it + 1, ["objective/kl_coef"] = kl.Beta };
                var t = Stopwatch.StartNew();

                // 1. rollout (ONNX Runtime)
                int[] batch = BatchRows(prompts.Count, it, cfg);
                var rolled = Rollout(run, run.Rollouts, (ulong)it, [.. batch.Select(i => prompts[i])], [.. batch.Select(i => promptIds[i])], SamplingSeed(cfg.Seed, it), cfg);
                row["time/generate"] = t.Elapsed.TotalSeconds;
                t.Restart();

                // 2. score (reward model) with the missing-EOS penalty and clipping
                var scored = Score(run, rolled, cfg, moments);
                row["time/score"] = t.Elapsed.TotalSeconds;
                t.Restart();

                // 3–5. experience: old/ref logprobs, values, KL-shaped rewards, GAE
                using var exp = BuildExperience(run, scored, kl.Beta, cfg, row);
                row["time/experience"] = t.Elapsed.TotalSeconds;
                t.Restart();

                // 6. PPO epochs over shuffled minibatches
                Update(run, exp, actorOpt, criticOpt, ptx, it, cfg, row, steps);
                row["time/train"] = t.Elapsed.TotalSeconds;
                t.Restart();

                // 7. weight sync into the rollout engine: the weights of iteration it + 1
                row["time/sync"] = InferenceServices.Sync(run.Rollouts, run.Actor, (ulong)(it + 1)).TotalSeconds;
                kl.Update(row["objective/kl"], cfg.RolloutBatch);
                row["samples/s"] = cfg.RolloutBatch / new[] { "generate", "score", "experience", "train", "sync" }.Sum(k => row["time/" + k]);

                bool last = it + 1 == cfg.Iterations;
                if ((it + 1) % cfg.EvalEvery == 0 || last)
                {
                    var e = Evaluate(run, evalPrompts, cfg);
                    row["eval/gold"] = e.Gold;
                    row["eval/score"] = e.Score;
                    row["eval/kl"] = e.Kl;
                    Log($"iter {it + 1}/{cfg.Iterations}  score {row["objective/scores"]:F3}  gold {row["objective/gold"]:F3}  kl {row["objective/kl"]:F2}  " +
                        $"β {kl.Beta:F4}  held-out score {e.Score:F3} gold {e.Gold:F3} kl {e.Kl:F2}");
                    plateaued = !last && Plateaued(metrics, cfg, e.Score);
                    if (plateaued)
                        Log($"Held-out RM score has not gained more than {cfg.EarlyStopMinDelta} over {cfg.EarlyStopPatience} evaluations: stopping after iteration {it + 1} (early_stop_patience).");
                }
                steps.EndStep(it + 1, row, metrics, () => TrainerParts.SaveCheckpoint(Path.Combine(cfg.Out, CheckpointName), tmp =>
                {
                    run.Actor.SavePretrained(Path.Combine(tmp, "actor"), ScalarType.Float32);
                    TokenizerFiles.Copy(cfg.SftModel, Path.Combine(tmp, "actor"));
                    run.Critic.SavePretrained(Path.Combine(tmp, "critic"), ScalarType.Float32);
                }, optimizers, metrics, new PpoState(it + 1, kl.State, ConfigLoader.ToJson(cfg), moments.State, run.Calibration)), final: plateaued);
            }
        }

        steps.Run("PPO", Iterations);

        // Outputs: the aligned policy as an HF folder (+ ONNX), the critic, metrics, curves, the report.
        run.Actor.SavePretrained(cfg.Out, ScalarType.Float32);
        TokenizerFiles.Copy(cfg.SftModel, cfg.Out);
        run.Critic.SavePretrained(Path.Combine(cfg.Out, "critic"), ScalarType.Float32);
        OnnxExport.ExportStage.AfterStage(run.Actor, cfg.Out, "ppo");
        metrics.WriteCsv(Path.Combine(cfg.Out, "metrics.csv"));
        AtomicFile.WriteAllText(Path.Combine(cfg.Out, "ppo_config.json"), ConfigLoader.ToJson(cfg));
        PpoReport.Curves(cfg.Out, metrics);
        var comparison = Compare(run, evalPrompts, cfg);
        PpoReport.Write(cfg.Out, comparison, metrics, cfg.PtxCoef);
        var summary = PpoSummary.From(metrics, comparison, clock.Elapsed.TotalSeconds) with { RewardNormalization = run.Calibration };
        AtomicFile.WriteAllText(Path.Combine(cfg.Out, "summary.json"), System.Text.Json.JsonSerializer.Serialize(summary, ConfigLoader.Json));
        return summary;
    }

    /// <summary>Whether the held-out RM scores in <paramref name="metrics"/> (and <paramref name="latest"/>, not yet added) have plateaued (<see cref="EarlyStopping"/>).</summary>
    static bool Plateaued(MetricsTable metrics, PpoConfig cfg, double? latest = null)
    {
        double[] scores = [.. metrics.Rows.Where(r => r.ContainsKey("eval/score")).Select(r => r["eval/score"]), .. latest is { } l ? [l] : Array.Empty<double>()];
        return EarlyStopping.Plateaued(scores, cfg.EarlyStopPatience, cfg.EarlyStopMinDelta);
    }

    static Run Open(PpoConfig cfg, Device device, string? resumeFrom)
    {
        string? rmFolder = cfg.RmFolder();
        var tokenizer = TextTokenizer.Load(cfg.SftModel);
        var actor = LlamaForCausalLM.FromPretrained(resumeFrom is null ? cfg.PolicyModel ?? cfg.SftModel : Path.Combine(resumeFrom, "actor"), device, ScalarType.Float32);
        var reference = LlamaForCausalLM.FromPretrained(cfg.SftModel, device, ScalarType.Float32);
        foreach (var p in reference.parameters()) p.requires_grad = false;
        var critic = resumeFrom is not null
            ? LlamaForSequenceClassification.FromPretrained(Path.Combine(resumeFrom, "critic"), device, ScalarType.Float32)   // with its score.bias if it has one
            : rmFolder is not null
                ? LlamaForSequenceClassification.FromPretrained(rmFolder, device, ScalarType.Float32, scoreBias: cfg.FoldRmNormalization)
                : LlamaForSequenceClassification.FromPretrained(cfg.SftModel, device, ScalarType.Float32, newHeadSeed: cfg.Seed);
        if (resumeFrom is null && rmFolder is null)
            Log($"Critic: no rm_model, so it starts from the SFT model {cfg.SftModel} with a fresh value head (N(0, 1/sqrt(H+1)), no bias).");
        var timeout = TimeSpan.FromSeconds(cfg.ServiceTimeoutSeconds);
        var rewards = cfg.RewardUrl is { } url ? InferenceServices.OpenRlhfRewards(url, cfg.ServiceTokenFile, timeout)
            : cfg.RewardEndpoint is { } endpoint ? InferenceServices.RemoteRewards(endpoint, cfg.ServiceTokenFile, timeout)
            : InferenceServices.Rewards(cfg.RewardModel, rmFolder, cfg.Threads, cfg.RewardTemplate);
        var rollouts = cfg.RolloutEndpoints.Count > 0
            ? InferenceServices.Replicas(cfg.RolloutEndpoints, cfg.ServiceTokenFile, cfg.RolloutShardSize, timeout)
            : InferenceServices.Sharded(InferenceServices.Rollouts(cfg.Engine, actor, tokenizer, cfg.SftModel, Path.Combine(cfg.Out, ".rollout_engine"), cfg.Threads, cfg.RolloutPrecision), cfg.RolloutShardSize);
        actor.Precision = reference.Precision = critic.Precision = cfg.Precision;
        // dropout off for the whole stage: the ratio must compare the same function at rollout and update time
        actor.eval();
        reference.eval();
        critic.eval();
        return new Run
        {
            Device = device, Tokenizer = tokenizer, Actor = actor, Reference = reference, Critic = critic,
            Rollouts = rollouts, Rewards = rewards,
        };
    }

    /// <summary>The SFT folder and our RM folder (when one is in force) exist, or an error says what to pass instead.</summary>
    static void CheckModelFolders(PpoConfig cfg)
    {
        if (!File.Exists(Path.Combine(cfg.SftModel, "config.json")))
            throw new DirectoryNotFoundException($"{cfg.SftModel}: no SFT model folder (config.json); train one with `rlhf sft` or pass --sft-model.");
        if (cfg.PolicyModel is string policy && !File.Exists(Path.Combine(policy, "config.json")))
            throw new DirectoryNotFoundException($"{policy}: no policy model folder (config.json) to start the actor from (policy_model).");
        if (cfg.RmFolder() is string rm && !File.Exists(Path.Combine(rm, "config.json")))
            throw new DirectoryNotFoundException($"{rm}: no reward-model folder (config.json); train one with `rlhf rm`, set rm_model (--rm-model), " +
                                                 "or optimise an ONNX reward model alone with --reward-model <folder>.");
    }

    /// <summary>Rows of iteration <paramref name="it"/>: consecutive slices of a seeded permutation per pass over the prompts.</summary>
    internal static int[] BatchRows(int promptCount, int it, PpoConfig cfg)
    {
        int perPass = Math.Max(1, promptCount / cfg.RolloutBatch);
        int pass = it / perPass, within = it % perPass;
        int[] order = SftTrainer.Permutation(promptCount, cfg.Seed * 31 + pass);
        return [.. Enumerable.Range(within * cfg.RolloutBatch, cfg.RolloutBatch).Select(i => order[i % promptCount])];
    }

    static ulong SamplingSeed(long seed, int it) => Rng.Mix((ulong)seed ^ Rng.Mix((ulong)it + 0x5EED));

    /// <summary>
    /// Samples one response per prompt from <paramref name="rollouts"/>, which must hold weights <paramref name="version"/>
    /// (a service that holds another version fails the call rather than mixing versions).
    /// </summary>
    static (string[] Prompts, int[][] PromptIds, RolloutResult[] Results) Rollout(Run run, IRolloutService rollouts, ulong version, string[] prompts, int[][] ids, ulong seed, PpoConfig cfg)
    {
        var requests = ids.Select((p, i) => RolloutRequest.FromIds(p, new SamplingOptions
        {
            Temperature = (float)cfg.Temperature, TopK = cfg.TopK, TopP = (float)cfg.TopP, MaxNewTokens = cfg.MaxNewTokens,
            Seed = Rng.Mix(seed + (ulong)i),
        })).ToList();
        return (prompts, ids, [.. rollouts.Generate(requests, new RolloutCall { RequiredVersion = version })]);
    }

    /// <summary>
    /// RM scores of the responses and the scores PPO uses (<see cref="RewardShaping.Scores"/>: EOS penalty,
    /// normalisation, clip). Evaluation passes <paramref name="moments"/> = null: its scores are penalised and clipped
    /// but never normalised, and leave the training statistics alone.
    /// </summary>
    static ScoredRollouts Score(Run run, (string[] Prompts, int[][] PromptIds, RolloutResult[] Results) r, PpoConfig cfg, RunningMoments? moments = null)
    {
        string[] texts = [.. r.Results.Select(x => PromptFormat.ResponseText(run.Tokenizer, x.ResponseIds))];
        bool[] eos = [.. r.Results.Select(x => x.FinishReason == RolloutFinishReason.Eos)];
        float[] rm = run.Rewards.Score([.. r.Prompts.Select((p, i) => new RewardRequest(p, texts[i]))]);
        if (run.Calibration is { } c) rm = [.. rm.Select(x => (float)c.Apply(x))];
        using var scope = NewDisposeScope();
        var shaped = RewardShaping.Scores(tensor(rm), tensor(eos), cfg.MissingEosPenalty, cfg.MissingEosPenaltyMode,
            moments is null ? ScoreNormalization.None : cfg.RewardNormalization, moments, cfg.RewardClip);
        float[] scores = shaped.to_type(ScalarType.Float32).data<float>().ToArray();
        return new ScoredRollouts(r.Prompts, r.PromptIds, r.Results, texts, eos, rm, scores);
    }

    /// <summary>
    /// Steps 3–5 of the loop, without gradients: log π_old (TorchSharp, logits / T), log π_ref, V_old, per-token
    /// rewards r_t = −β·kl_t (+ score at the last token), GAE advantages (whitened) and returns.
    /// </summary>
    static Experience BuildExperience(Run run, ScoredRollouts s, double beta, PpoConfig cfg, Dictionary<string, double> row)
    {
        var exp = Experience.Build(s.PromptIds, [.. s.Results.Select(x => x.ResponseIds)], run.PadId, run.Device);
        using (no_grad())
        {
            var (logp, logpRef, values) = ForwardAll(run, exp, cfg.Temperature, cfg.MiniBatch);
            exp.LogpOld = logp;
            exp.LogpRef = logpRef;
            exp.ValuesOld = values;
            using var scores = tensor(s.Scores, device: run.Device);
            var (rewards, klPerToken) = RewardShaping.PerToken(scores, logp, logpRef, exp.ResponseMask, beta, cfg.KlEstimator);
            exp.Rewards = rewards;
            var (adv, ret) = Gae.Compute(rewards, values, exp.ResponseMask, cfg.Gamma, cfg.Lambda);
            exp.Returns = ret;
            exp.Advantages = cfg.WhitenAdvantages ? Masked.Whiten(adv, exp.ResponseMask) : adv;
            adv.Dispose();

            using var klRow = klPerToken.sum(1);
            using var entRow = (-logp * exp.ResponseMask).sum(1);
            double klMean = klRow.mean().item<float>();
            row["objective/kl"] = klMean;
            row["objective/entropy"] = entRow.mean().item<float>();
            row["objective/scores"] = s.Scores.Average();
            row["objective/rm_scores"] = s.RmScores.Average();
            row["objective/rlhf_reward"] = s.Scores.Average() - beta * klMean;
            row["objective/gold"] = s.Prompts.Select((p, i) => GoldScorer.Score(p, s.Texts[i], s.EndedWithEos[i]).Total).Average();
            row["tokens/eos_fraction"] = s.EndedWithEos.Count(x => x) / (double)s.EndedWithEos.Length;
            row["tokens/response_length"] = s.Results.Average(x => x.ResponseIds.Length);
            row["val/mean"] = Masked.Mean(values, exp.ResponseMask).item<float>();
            row["returns"] = Masked.Mean(ret, exp.ResponseMask).item<float>();
            row["val/explained_variance"] = ExplainedVariance.Compute(values, ret, exp.ResponseMask);
            var (logpRollout, recorded) = Tis.RolloutLogProbs([.. s.Results.Select(x => x.LogProbs)], logp);
            using var rolloutOwner = logpRollout;
            using var mismatch = Masked.Mean((logpRollout - logp).abs(), exp.ResponseMask);
            // mean |log π_engine − log π_TorchSharp| over response tokens (NaN when the engine records none)
            row["policy/rollout_logprob_mismatch"] = recorded ? mismatch.item<float>() : double.NaN;
            var (w, wMean, wClip) = Tis.Weights(logp, logpRollout, exp.ResponseMask, cfg.TisCap > 0 ? cfg.TisCap : double.PositiveInfinity);
            row["rollout/is_weight_mean"] = wMean;
            row["rollout/is_weight_clipfrac"] = wClip;   // 0 without a cap: no ratio exceeds +∞
            if (cfg.TisCap > 0) exp.IsWeights = w; else w.Dispose();
            klPerToken.Dispose();
        }
        return exp;
    }

    /// <summary>
    /// Logits [B, A, V] of the positions that predict the response tokens: the trunk runs over the rows packed without
    /// padding (<see cref="Experience.Pack"/>), the LM head only over the response-predicting positions (with a 49k
    /// vocabulary the head is a fifth of a 135M model's matmuls, and the prompt positions' logits are never read).
    /// </summary>
    internal static Tensor ResponseLogits(LlamaForCausalLM model, Experience mb, PackedBatch packed, Tensor index) =>
        model.Logits(mb.PackedResponses(model.HiddenStates(packed), index));

    /// <summary>V(s_t) [B, A] of the states before each response token, from the packed rows.</summary>
    internal static Tensor ResponseValues(LlamaForSequenceClassification critic, Experience mb, PackedBatch packed, Tensor index) =>
        mb.PackedResponses(critic.Values(packed), index);

    /// <summary>log π, log π_ref and V over the response positions of <paramref name="exp"/>, in chunks of rows.</summary>
    static (Tensor Logp, Tensor LogpRef, Tensor Values) ForwardAll(Run run, Experience exp, double temperature, int chunk)
    {
        var logps = new List<Tensor>();
        var refs = new List<Tensor>();
        var vals = new List<Tensor>();
        for (long i = 0; i < exp.Rows; i += chunk)
        {
            using var scope = NewDisposeScope();
            using var idx = arange(i, Math.Min(exp.Rows, i + chunk), dtype: ScalarType.Int64, device: run.Device);
            using var mb = exp.Select(idx);
            var (packed, index) = mb.Pack();
            using var _ = packed;
            var lp = LogProbs.OfTokens(Temperature.Scale(ResponseLogits(run.Actor, mb, packed, index), temperature), mb.Responses);
            var lr = LogProbs.OfTokens(Temperature.Scale(ResponseLogits(run.Reference, mb, packed, index), temperature), mb.Responses);
            var v = ResponseValues(run.Critic, mb, packed, index);
            logps.Add(lp.MoveToOuterDisposeScope());
            refs.Add(lr.MoveToOuterDisposeScope());
            vals.Add(v.MoveToOuterDisposeScope());
        }
        Tensor Cat(List<Tensor> parts)
        {
            var c = cat(parts, 0);
            foreach (var p in parts) p.Dispose();
            return c;
        }
        return (Cat(logps) * exp.ResponseMask, Cat(refs) * exp.ResponseMask, Cat(vals) * exp.ResponseMask);
    }

    /// <summary>Step 6: <see cref="PpoConfig.PpoEpochs"/> passes of shuffled minibatches, clipped losses, separate actor/critic optimizers.</summary>
    static void Update(Run run, Experience exp, optim.Optimizer actorOpt, optim.Optimizer criticOpt, PtxBatches? ptx, int it,
                       PpoConfig cfg, Dictionary<string, double> row, StageSteps steps)
    {
        var stats = new Dictionary<string, List<double>>();
        void Add(string k, double v) { if (!stats.TryGetValue(k, out var l)) stats[k] = l = []; l.Add(v); }
        int mbPerEpoch = cfg.RolloutBatch / cfg.MiniBatch;
        int ptxBatch = it * cfg.PpoEpochs * mbPerEpoch;   // each minibatch of the run takes the next ptx batch
        bool stop = false;
        int update = 0;
        for (int epoch = 0; epoch < cfg.PpoEpochs && !stop; epoch++)
        {
            int[] order = SftTrainer.Permutation((int)exp.Rows, cfg.Seed * 1_000_033 + it * 97 + epoch);
            for (int m = 0; m < mbPerEpoch && !stop; m++)
            {
                if (m % cfg.GradAccum == 0) { TrainerParts.ClearGrads(actorOpt); TrainerParts.ClearGrads(criticOpt); }
                int group = GradAccumulation.GroupSize(m, mbPerEpoch, cfg.GradAccum);
                using (var scope = NewDisposeScope())
                {
                    using var idx = tensor(order.Skip(m * cfg.MiniBatch).Take(cfg.MiniBatch).Select(x => (long)x).ToArray(), device: run.Device);
                    var mb = exp.Select(idx);
                    var (packed, index) = mb.Pack();
                    using var _ = packed;
                    var logits = Temperature.Scale(ResponseLogits(run.Actor, mb, packed, index), cfg.Temperature);
                    var logp = LogProbs.OfTokens(logits, mb.Responses);
                    var (pg, clipFrac, approxKl) = PpoLosses.Policy(logp, mb.LogpOld!, mb.Advantages!, mb.ResponseMask, cfg.ClipEps, mb.IsWeights);
                    var actorLoss = pg;
                    if (cfg.EntropyCoef > 0)
                    {
                        var ent = PpoLosses.Entropy(logits, mb.ResponseMask);
                        actorLoss = actorLoss - cfg.EntropyCoef * ent;
                        Add("policy/entropy", ent.item<float>());
                    }
                    if (ptx is not null)
                    {
                        var ptxNll = ptx.Nll(run.Actor, ptxBatch++, run.Device);   // −mean log π over every token of a ptx batch
                        actorLoss = actorLoss + cfg.PtxCoef * ptxNll;
                        Add("loss/ptx", ptxNll.item<float>());
                    }
                    var values = ResponseValues(run.Critic, mb, packed, index);
                    var (vf, vfClip) = PpoLosses.Value(values, mb.ValuesOld!, mb.Returns!, mb.ResponseMask, cfg.ValueClipEps);
                    var loss = (actorLoss + cfg.VfCoef * vf) / group;
                    loss.backward();
                    double pgv = pg.item<float>(), vfv = vf.item<float>();
                    steps.CheckFinite(it, "a loss", double.IsFinite(pgv) ? vfv : pgv);
                    Add("loss/policy", pgv);
                    Add("loss/value", vfv);
                    Add("policy/clipfrac", clipFrac.item<float>());
                    Add("policy/approxkl", approxKl.item<float>());
                    Add("val/clipfrac", vfClip.item<float>());
                    if (cfg.EarlyStopKl > 0 && approxKl.item<float>() > cfg.EarlyStopKl) stop = true;
                }
                if (GradAccumulation.StepsAfter(m, mbPerEpoch, cfg.GradAccum) || stop)
                {
                    Add("grad_norm/actor", TrainerParts.ClipGradNorm(run.Actor, cfg.GradClip));
                    Add("grad_norm/critic", TrainerParts.ClipGradNorm(run.Critic, cfg.GradClip));
                    actorOpt.step();
                    criticOpt.step();
                    update++;
                }
            }
        }
        foreach (var (k, v) in stats) row[k] = v.Average();
        row["policy/updates"] = update;
    }

    /// <summary>Held-out evaluation of the current actor: gold score, RM score and KL to the SFT model of sampled responses.</summary>
    internal sealed record EvalResult(double Gold, double Score, double Kl, string[] Prompts, string[] Responses, double[] GoldPer, double[] ScorePer);

    static EvalResult Evaluate(Run run, IReadOnlyList<string> prompts, PpoConfig cfg)
    {
        var ids = prompts.Select(p => PromptFormat.PromptIds(run.Tokenizer, p)).ToArray();
        var results = Rollout(run, run.Rollouts, run.Rollouts.WeightsVersion, [.. prompts], ids, 0xE7A1, cfg).Results;
        var scored = Score(run, ([.. prompts], ids, results), cfg);
        using var exp = Experience.Build(ids, [.. results.Select(r => r.ResponseIds)], run.PadId, run.Device);
        double kl;
        using (no_grad())
        {
            var (lp, lr, v) = ForwardAll(run, exp, cfg.Temperature, cfg.MiniBatch);
            using var k = ((lp - lr) * exp.ResponseMask).sum(1);
            kl = k.mean().item<float>();
            lp.Dispose(); lr.Dispose(); v.Dispose();
        }
        double[] gold = [.. prompts.Select((p, i) => GoldScorer.Score(p, scored.Texts[i], scored.EndedWithEos[i]).Total)];
        double[] score = [.. scored.RmScores.Select(x => (double)x)];
        return new EvalResult(gold.Average(), score.Average(), kl, [.. prompts], scored.Texts, gold, score);
    }

    /// <summary>
    /// SFT vs best-of-N vs PPO on the held-out prompts: PPO's samples with their KL to SFT; N samples per prompt from
    /// the SFT model (its own rollout engine, weights version 0), of which best-of-N keeps the one the reward model scores highest
    /// (KL = log N − (N − 1)/N, Stiennon et al. 2020); N = 1 is the SFT model itself.
    /// </summary>
    static Comparison Compare(Run run, IReadOnlyList<string> prompts, PpoConfig cfg)
    {
        var ppo = Evaluate(run, prompts, cfg);
        int nMax = cfg.BestOfN.Max();
        var ids = prompts.Select(p => PromptFormat.PromptIds(run.Tokenizer, p)).ToArray();
        var rows = Enumerable.Range(0, nMax).SelectMany(n => prompts.Select((p, i) => (Prompt: p, Ids: ids[i], N: n))).ToArray();
        (string[], int[][], RolloutResult[]) rolled;
        using (var reference = InferenceServices.Sharded(InferenceServices.Rollouts(cfg.Engine, run.Reference, run.Tokenizer, cfg.SftModel,
                   Path.Combine(cfg.Out, ".reference_engine"), cfg.Threads), cfg.RolloutShardSize))
        {
            InferenceServices.Sync(reference, run.Reference, 0);
            rolled = Rollout(run, reference, 0, [.. rows.Select(r => r.Prompt)], [.. rows.Select(r => r.Ids)], 0xB0F, cfg);
        }
        var scored = Score(run, rolled, cfg);
        var bestOf = new List<BestOfNPoint>();
        foreach (int n in cfg.BestOfN.Distinct().Order())
        {
            double gold = 0, score = 0;
            int[] picked = BestOfN.Pick(scored.Scores, prompts.Count, n);
            for (int i = 0; i < prompts.Count; i++)
            {
                int best = picked[i];
                gold += GoldScorer.Score(prompts[i], scored.Texts[best], scored.EndedWithEos[best]).Total;
                score += scored.RmScores[best];
            }
            bestOf.Add(new BestOfNPoint(n, gold / prompts.Count, score / prompts.Count, BestOfN.Kl(n)));
        }
        double[] sftGold = [.. prompts.Select((p, i) => GoldScorer.Score(p, scored.Texts[i], scored.EndedWithEos[i]).Total)];
        var heldOut = PtxBatches.HeldOutRows(cfg, run.Tokenizer, run.Actor.Config.MaxPositionEmbeddings);
        var corpus = heldOut is null ? null : new CorpusPerplexity(PtxBatches.Perplexity(run.Reference, heldOut, run.Device),
            PtxBatches.Perplexity(run.Actor, heldOut, run.Device), heldOut.Length * (long)(cfg.PtxSeqLen - 1));
        return new Comparison([.. prompts], [.. scored.Texts.Take(prompts.Count)], sftGold, [.. scored.RmScores.Take(prompts.Count).Select(x => (double)x)],
            ppo.Responses, ppo.GoldPer, ppo.ScorePer, ppo.Kl, bestOf, corpus);
    }

    static IReadOnlyList<string> TrainingPrompts(PpoConfig cfg) => cfg.PromptsFile is null
        ? [.. DataSets.Prompts((ulong)cfg.Seed, DataSets.PpoPromptsName, cfg.DefaultPrompts).Select(p => p.Prompt)]
        : NonEmpty(DataFiles.ReadPrompts(cfg.PromptsFile).Records.Select(p => p.Prompt).ToList(), cfg.PromptsFile);

    static IReadOnlyList<string> EvalPrompts(PpoConfig cfg) => cfg.EvalPromptsFile is null
        ? [.. DataSets.Prompts((ulong)cfg.Seed, DataSets.PpoEvalPromptsName, cfg.EvalPrompts).Select(p => p.Prompt)]
        : NonEmpty(DataFiles.ReadPrompts(cfg.EvalPromptsFile).Records.Select(p => p.Prompt).Take(cfg.EvalPrompts).ToList(), cfg.EvalPromptsFile);

    static List<string> NonEmpty(List<string> list, string file) =>
        list.Count > 0 ? list : throw new InvalidDataException($"{file}: no prompts.");

    /// <summary>
    /// Whether the sft normalisation applies: always with reward_normalization sft; with auto, when the local scorer's
    /// scores are not already normalised (an ONNX reward model whose reward_spec.json sets no mean/std; our RM's export
    /// sets them). A remote reward endpoint scores with its own model's reward_spec.json, so auto leaves it as it is.
    /// </summary>
    internal static bool NeedsSftNormalization(PpoConfig cfg, IRewardService rewards) => cfg.RewardNormalization switch
    {
        ScoreNormalization.Sft => true,
        ScoreNormalization.Auto => rewards is RewardScorer { Spec.Normalises: false },
        _ => false,
    };

    /// <summary>
    /// The sft normalisation: one sample per training prompt (cycling, <see cref="PpoConfig.NormalizationSamples"/> in all)
    /// from the SFT model, scored by the reward model; gain = 1/σ, bias = −μ/σ (<see cref="RewardNormalization.From"/>),
    /// written to <c>reward_normalization.json</c> in the output folder.
    /// </summary>
    static RewardNormalization MeasureOnSft(Run run, IReadOnlyList<string> prompts, int[][] promptIds, PpoConfig cfg)
    {
        int n = cfg.NormalizationSamples;
        int[] rows = [.. Enumerable.Range(0, n).Select(i => i % prompts.Count)];
        var rolled = Rollout(run, run.Rollouts, run.Rollouts.WeightsVersion, [.. rows.Select(i => prompts[i])], [.. rows.Select(i => promptIds[i])], 0x5F7A11, cfg);
        string[] texts = [.. rolled.Results.Select(x => PromptFormat.ResponseText(run.Tokenizer, x.ResponseIds))];
        float[] raw = run.Rewards.Score([.. rolled.Prompts.Select((p, i) => new RewardRequest(p, texts[i]))]);
        var norm = RewardNormalization.From([.. raw.Select(x => (double)x)], unitStd: true);
        AtomicFile.WriteAllText(Path.Combine(cfg.Out, RewardNormalization.FileName), System.Text.Json.JsonSerializer.Serialize(norm, ConfigLoader.Json));
        Log($"Reward normalisation on {n} SFT samples: raw mean {norm.RawMean:F4}, std {norm.RawStd:F4} -> r' = {norm.Gain:F4}·r + {norm.Bias:F4} " +
            $"({RewardNormalization.FileName}; reward_normalization none turns it off).");
        return norm;
    }

    /// <summary>
    /// A critic built from our RM starts on the scale of the scores PPO uses: the RM's normalisation (its
    /// <c>reward_normalization.json</c>, g₁, b₁) and, when our RM is also the scorer, the sft normalisation (g₂, b₂)
    /// are folded into the value head: V = g₂·(g₁·v + b₁) + b₂ (<see cref="LlamaForSequenceClassification.FoldAffine"/>).
    /// </summary>
    internal static void FoldIntoCritic(LlamaForSequenceClassification critic, PpoConfig cfg, RewardNormalization? calibration)
    {
        string? rmFolder = cfg.RmFolder();
        if (rmFolder is null) return;
        string file = Path.Combine(rmFolder, RewardNormalization.FileName);
        var rm = File.Exists(file)
            ? System.Text.Json.JsonSerializer.Deserialize<RewardNormalization>(File.ReadAllText(file), ConfigLoader.Json)
              ?? throw new InvalidDataException($"{file}: empty normalisation.")
            : new RewardNormalization(1, 0, 0, 1);
        var (gain, bias) = Compose(rm, cfg.RewardModel is null ? calibration : null);
        critic.FoldAffine(gain, bias);
        Log($"Critic: from {rmFolder}, value head scaled to the normalised reward (V = {gain:F4}·v + {bias:F4}).");
    }

    /// <summary>The affine map "first, then second": x ↦ g₂·(g₁·x + b₁) + b₂ = (g₂·g₁)·x + (g₂·b₁ + b₂).</summary>
    internal static (double Gain, double Bias) Compose(RewardNormalization first, RewardNormalization? second) =>
        second is null ? (first.Gain, first.Bias) : (second.Gain * first.Gain, second.Gain * first.Bias + second.Bias);

    static void Log(string message) => StageLog.Info(message);

    sealed record PpoState(int Iteration, KlControllerState Kl, string ConfigJson, RunningMomentsState? Moments = null,
                           RewardNormalization? Calibration = null) : ICheckpointState;

}
