using System.Diagnostics;
using System.Text.Json;
using Rlhf.Export;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Data;
using Rlhf.Inference.Reward;
using Rlhf.Inference.Rollout;
using Rlhf.Training.Model;
using Rlhf.Training.OnnxExport;
using Rlhf.Training.Sft;
using TorchSharp;
using Rlhf.Training.Engines;
using static TorchSharp.torch;

namespace Rlhf.Training.RewardModel;

/// <summary>Headline figures of an RM run (<c>summary.json</c>; keys in docs/outputs.md).</summary>
public sealed record RmSummary
{
    /// <summary>Always "rm".</summary>
    public string Stage { get; init; } = "rm";
    /// <summary>Optimizer steps.</summary>
    public int Steps { get; init; }
    /// <summary>Prompts (groups) and comparisons trained on per epoch.</summary>
    public int TrainPrompts { get; init; }
    /// <summary>Comparisons per epoch.</summary>
    public int TrainPairs { get; init; }
    /// <summary>Held-out pairwise accuracy against the reference ranking (gold for the default task), ties excluded.</summary>
    public double PairwiseAccuracy { get; init; }
    /// <summary>Spearman correlation of RM scores with gold scores on held-out SFT samples (default task).</summary>
    public double? GoldSpearman { get; init; }
    /// <summary>Final mean training loss over the last 10% of steps.</summary>
    public double FinalTrainLoss { get; init; }
    /// <summary>Normalisation constants applied to raw rewards, with the responses they were measured on.</summary>
    public required RewardNormalization Normalization { get; init; }
    /// <summary>Seconds spent sampling and labelling responses.</summary>
    public double LabelSeconds { get; init; }
    /// <summary>Seconds spent training (optimizer steps with their periodic held-out evaluations and checkpoints).</summary>
    public double TrainSeconds { get; init; }
    /// <summary>Seconds of the whole stage.</summary>
    public double Seconds { get; init; }
}

/// <summary>
/// The reward-model stage: a scalar head on the SFT model reads the last real token; −log σ(r_w − r_l) over all
/// C(K,2) comparisons of each prompt in the same batch, each prompt weighted once; LR decays to 0; dropout off;
/// then normalisation on SFT samples, held-out accuracy, plots, checkpoints and exact resume.
/// </summary>
public static class RmTrainer
{
    const string CheckpointName = "checkpoint";

    /// <summary>Runs the stage end to end.</summary>
    public static RmSummary Run(RmConfig cfg, RunControl control)
    {
        cfg.Validate();
        using var log = StageLog.Use(control.Logger);
        return OutputFolder.CleanOnFailure(cfg.Out, () => RunStage(cfg, control));
    }

    static RmSummary RunStage(RmConfig cfg, RunControl control)
    {
        var clock = Stopwatch.StartNew();
        Device device = DeviceSelector.Resolve(DeviceSelector.Parse(cfg.Device));
        DeviceSelector.SetThreads(cfg.Threads);
        var tokenizer = TextTokenizer.Load(cfg.SftModel);   // a bad SFT folder fails before the output folder is touched
        if (cfg.InitModel is not null && !File.Exists(Path.Combine(cfg.InitModel, "config.json")))
            throw new DirectoryNotFoundException($"{cfg.InitModel}: no reward-model folder (config.json) to continue from (init_model).");
        string? resumeFrom = OutputFolder.Prepare(cfg.Out, control.Resume, control.Overwrite, CheckpointName);

        var labelClock = Stopwatch.StartNew();
        RmData data = resumeFrom is not null ? Reload(cfg) : LabelFresh(cfg, tokenizer, device);
        double labelSeconds = labelClock.Elapsed.TotalSeconds;
        Log($"RM data: {data.Train.Count} training prompts ({data.Train.Sum(g => g.Pairs.Count)} comparisons), {data.Eval.Count} held-out prompts, in {labelSeconds:F1}s.");

        using var model = resumeFrom is not null
            ? LlamaForSequenceClassification.FromPretrained(resumeFrom, device, ScalarType.Float32)
            : cfg.InitModel is not null
                ? LlamaForSequenceClassification.FromPretrained(cfg.InitModel, device, ScalarType.Float32)
                : LlamaForSequenceClassification.FromPretrained(cfg.SftModel, device, ScalarType.Float32, newHeadSeed: cfg.Seed, keepLayers: cfg.NumLayers > 0 ? cfg.NumLayers : null);
        model.Precision = cfg.Precision.Resolve(device);
        model.GradientCheckpointing = cfg.GradientCheckpointing;
        if (cfg.Lora().Enabled)   // adapters on the trunk, the head trained fully; a checkpoint holds the base and adapter/
            model.AttachLora(cfg.Lora(), cfg.Seed, cfg.InitModel ?? cfg.SftModel, from: resumeFrom);
        int padId = tokenizer.PaddingId;
        var train = data.Train.Select(g => Tokenize(tokenizer, g, cfg.MaxSeqLen)).ToArray();
        var eval = data.Eval.Select(g => Tokenize(tokenizer, g, cfg.MaxSeqLen)).ToArray();
        int stepsPerEpoch = (train.Length + cfg.PromptsPerBatch - 1) / cfg.PromptsPerBatch;
        int totalSteps = cfg.Epochs * stepsPerEpoch;

        using var optimizer = Optimization.AdamW(model, new AdamWSettings(cfg.Lr, cfg.WeightDecay, cfg.Beta1, cfg.Beta2, cfg.AdamEps));
        var metrics = new MetricsTable();
        int startStep = 0;
        if (resumeFrom is not null)
        {
            (var state, metrics) = Checkpoints.Load<RmState>(resumeFrom, Optimizers(optimizer), ConfigLoader.ToJson(cfg));
            startStep = state.Step;
            Log($"Resuming from step {startStep} of {totalSteps}.");
        }
        var steps = new StageSteps("rm", cfg.Out, totalSteps, startStep, cfg.CheckpointEvery, resumeFrom, control);

        void TrainSteps()
        {
            model.eval();   // the RM trains with dropout off
            for (int step = startStep; step < totalSteps; step++)
            {
                double lr = LrSchedule.At(step, totalSteps, cfg.Lr, cfg.Decay, cfg.WarmupSteps, 0.0);
                Optimization.SetLr(optimizer, lr);
                Optimization.ClearGrads(optimizer);
                var groups = BatchGroups(train, step, stepsPerEpoch, cfg);
                double loss, acc, margin;
                using (var scope = NewDisposeScope())
                {
                    var (l, chosen, rejected) = BatchLoss(model, groups, padId, device, cfg.Margin);
                    l.backward();
                    loss = l.item<float>();
                    using var diff = (chosen - rejected).detach();
                    acc = (diff > 0).to(ScalarType.Float32).mean().item<float>();
                    margin = diff.mean().item<float>();
                }
                double gradNorm = Optimization.ClipGradNorm(model, cfg.GradClip);
                steps.CheckFinite(step, "the training loss", loss);
                steps.CheckFinite(step, "the gradient norm", gradNorm);
                optimizer.step();

                var row = new Dictionary<string, double>
                {
                    ["step"] = step + 1, ["epoch"] = (step + 1) / (double)stepsPerEpoch, ["lr"] = lr, ["loss/train"] = loss,
                    ["accuracy/train"] = acc, ["margin/train"] = margin, ["grad_norm"] = gradNorm,
                };
                bool last = step + 1 == totalSteps;
                if (eval.Length > 0 && ((step + 1) % cfg.EvalEvery == 0 || last))
                {
                    double a = Accuracy(ScoreAll(model, eval, padId, device), eval);
                    row["accuracy/eval"] = a;
                    Log($"step {step + 1}/{totalSteps}  loss {loss:F4}  train acc {acc:P0}  held-out acc {a:P1}  lr {lr:E2}");
                }
                steps.EndStep(step + 1, row, metrics, () => Checkpoints.Save(Path.Combine(cfg.Out, CheckpointName), tmp =>
                {
                    model.SavePretrained(tmp, ScalarType.Float32, merged: false);
                    TokenizerFiles.Copy(cfg.SftModel, tmp);
                }, Optimizers(optimizer), metrics, new RmState(step + 1, ConfigLoader.ToJson(cfg))));
            }
        }

        var trainClock = Stopwatch.StartNew();
        steps.Run("RM", TrainSteps);
        double trainSeconds = trainClock.Elapsed.TotalSeconds;

        // Normalise on SFT samples, then report. Scored in float32: the exported reward graph that PPO reads computes in
        // float32 whatever precision trained the weights. The default task's held-out groups are SFT samples already; a
        // data file's responses were written by someone else, so the SFT model answers its prompts once each first.
        model.Precision = Precision.Fp32;
        double[][] evalScores = ScoreAll(model, eval, padId, device);
        double[][] sftScores = eval.Length > 0 ? evalScores : ScoreAll(model, train, padId, device);
        var norm = data.IsDefaultTask
            ? RewardNormalization.From(sftScores.SelectMany(r => r).ToList(), cfg.NormalizeStd,
                $"{sftScores.Sum(r => r.Length)} SFT samples on {sftScores.Length} {(eval.Length > 0 ? "held-out" : "training")} prompts (default task)")
            : NormalizeOnSftSamples(cfg, model, tokenizer, data, padId, device);
        double accuracy = eval.Length > 0 ? Accuracy(evalScores, eval) : double.NaN;
        double? spearman = data.IsDefaultTask && eval.Length > 0
            ? PairwiseLoss.Spearman(evalScores.SelectMany(r => r).ToList(), eval.SelectMany(g => g.Group.Gold).ToList())
            : null;

        model.SavePretrained(cfg.Out, ScalarType.Float32);
        TokenizerFiles.Copy(cfg.SftModel, cfg.Out);
        AtomicFile.WriteAllText(Path.Combine(cfg.Out, RewardNormalization.FileName), JsonSerializer.Serialize(norm, ConfigLoader.Json));
        var export = ExportStage.AfterStage(model, cfg.Out, "rm");
        // the ONNX scorer applies the same normalisation, (raw − mean) / std = gain·raw + bias
        AtomicFile.WriteAllText(Path.Combine(export.Folder, RewardSpec.FileName),
            new RewardSpec { Output = "rewards", MaxLength = cfg.MaxSeqLen, Mean = -norm.Bias / norm.Gain, Std = 1 / norm.Gain }.ToJson());
        AtomicFile.WriteAllText(Path.Combine(cfg.Out, "rm_config.json"), ConfigLoader.ToJson(cfg));
        metrics.WriteCsv(Path.Combine(cfg.Out, "metrics.csv"));
        Plots.Lines(Path.Combine(cfg.Out, "loss.png"), "RM loss and accuracy", "step", "value",
            [Plots.Series("loss (train)", metrics, "loss/train"), Plots.Series("accuracy (held-out)", metrics, "accuracy/eval")]);
        if (eval.Length > 0)
        {
            var chosen = new List<double>();
            var rejected = new List<double>();
            for (int g = 0; g < eval.Length; g++)
                foreach (var (w, l) in eval[g].Group.Pairs)
                    if (eval[g].Group.Gold[w] != eval[g].Group.Gold[l])
                    {
                        chosen.Add(norm.Apply(evalScores[g][w]));
                        rejected.Add(norm.Apply(evalScores[g][l]));
                    }
            Plots.Histograms(Path.Combine(cfg.Out, "rewards.png"), "Normalised reward on held-out comparisons", "reward",
                [("preferred", chosen.ToArray()), ("rejected", rejected.ToArray())]);
        }
        var (_, lossY) = metrics.Series("step", "loss/train");
        var summary = new RmSummary
        {
            Steps = totalSteps, TrainPrompts = train.Length, TrainPairs = train.Sum(g => g.Group.Pairs.Count),
            PairwiseAccuracy = accuracy, GoldSpearman = spearman, Normalization = norm,
            FinalTrainLoss = lossY.Length == 0 ? double.NaN : lossY.Skip(lossY.Length - Math.Max(1, lossY.Length / 10)).Average(),
            LabelSeconds = labelSeconds, TrainSeconds = trainSeconds, Seconds = clock.Elapsed.TotalSeconds,
        };
        AtomicFile.WriteAllText(Path.Combine(cfg.Out, "summary.json"), JsonSerializer.Serialize(summary, ConfigLoader.Json));
        return summary;
    }

    /// <summary>A group with its tokenized sequences (<see cref="PromptFormat.JoinedIds"/>, as the ONNX scorer reads them).</summary>
    internal sealed record TokenizedGroup(RmGroup Group, int[][] Sequences);

    internal static TokenizedGroup Tokenize(TextTokenizer tokenizer, RmGroup g, int maxLen) =>
        new(g, [.. g.Responses.Select(r => PromptFormat.JoinedIds(tokenizer, g.Prompt, r, maxLen))]);

    /// <summary>
    /// <see cref="ScoreGroups"/>'s layout: 0 = every sequence packed end to end into rows (<see cref="PackedBatch"/>),
    /// what the trainer uses (`rlhf bench rm`, tiny model, 4 prompts × K=8: 139 ms per step packed, 157 ms in
    /// length-sorted chunks of 16, 194 ms as one padded batch); n > 0 = length-sorted chunks of n sequences.
    /// </summary>
    internal const int ScoreChunk = 0;

    /// <summary>
    /// Scores every sequence of the groups: [Σ K] in group order, in <paramref name="chunk"/>'s layout
    /// (<see cref="ScoreChunk"/>): packed rows, or the sequences shortest first in chunks each right-padded only to its
    /// own longest sequence. The scores (and their gradients) are the same as from one padded batch up to float rounding.
    /// </summary>
    internal static Tensor ScoreGroups(LlamaForSequenceClassification model, IReadOnlyList<TokenizedGroup> groups, int padId, Device device, int chunk = ScoreChunk)
    {
        int[][] seqs = [.. groups.SelectMany(g => g.Sequences)];
        if (chunk == 0) return ScorePacked(model, seqs, device);
        int[] order = [.. Enumerable.Range(0, seqs.Length).OrderBy(i => seqs[i].Length)];
        var chunks = new List<Tensor>();
        for (int c = 0; c < order.Length; c += chunk)
            chunks.Add(ScorePadded(model, [.. order.Skip(c).Take(chunk).Select(i => seqs[i])], padId, device));
        var inverse = new long[order.Length];
        for (int r = 0; r < order.Length; r++) inverse[order[r]] = r;
        using var sorted = cat(chunks, 0);
        foreach (var t in chunks) t.Dispose();
        using var inv = tensor(inverse, device: device);
        return sorted.index_select(0, inv);
    }

    /// <summary>Scores [n] of n sequences packed end to end without padding (<see cref="PackedBatch"/>): the value at each one's last token.</summary>
    static Tensor ScorePacked(LlamaForSequenceClassification model, int[][] seqs, Device device)
    {
        using var packed = PackedBatch.Pack([.. seqs.Select(x => x.Select(t => (long)t).ToArray())], 0, device);
        using var scope = NewDisposeScope();
        var last = tensor(seqs.Select((x, i) => packed.Starts[i] + x.Length - 1).ToArray(), device: device);
        return scope.MoveToOuter(model.Values(packed).reshape(-1).index_select(0, last));
    }

    /// <summary>Scores [n] of n sequences right-padded to the longest of them.</summary>
    static Tensor ScorePadded(LlamaForSequenceClassification model, int[][] seqs, int padId, Device device)
    {
        int n = seqs.Length, s = seqs.Max(x => x.Length);
        var ids = new long[n * s];
        var mask = new long[n * s];
        for (int i = 0; i < n; i++)
            for (int t = 0; t < s; t++)
            {
                bool real = t < seqs[i].Length;
                ids[i * s + t] = real ? seqs[i][t] : padId;
                mask[i * s + t] = real ? 1 : 0;
            }
        using var idsT = tensor(ids, [n, s], device: device);
        using var maskT = tensor(mask, [n, s], device: device);
        return model.Scores(idsT, maskT);
    }

    /// <summary>The pairwise loss of one batch of groups (<see cref="PairwiseLoss.Compute"/>) with r_w and r_l per comparison.</summary>
    internal static (Tensor Loss, Tensor Chosen, Tensor Rejected) BatchLoss(LlamaForSequenceClassification model, IReadOnlyList<TokenizedGroup> groups,
                                                                       int padId, Device device, double margin, int chunk = ScoreChunk)
    {
        var scores = ScoreGroups(model, groups, padId, device, chunk);
        var (chosen, rejected, weight) = PairTensors(scores, [.. groups.Select(g => g.Group)], device);
        return (PairwiseLoss.Compute(chosen, rejected, weight, groups.Count, margin), chosen, rejected);
    }

    /// <summary>(r_w, r_l, 1/pairs-of-prompt) per comparison, gathered from the flat scores [Σ K] (group order, K = each group's responses); the RM's and DPO's.</summary>
    internal static (Tensor Chosen, Tensor Rejected, Tensor Weight) PairTensors(Tensor scores, IReadOnlyList<RmGroup> groups, Device device)
    {
        var w = new List<long>();
        var l = new List<long>();
        var weight = new List<float>();
        int offset = 0;
        foreach (var g in groups)
        {
            foreach (var (win, lose) in g.Pairs)
            {
                w.Add(offset + win);
                l.Add(offset + lose);
                weight.Add(1f / g.Pairs.Count);
            }
            offset += g.Responses.Count;
        }
        using var wi = tensor(w.ToArray(), device: device);
        using var li = tensor(l.ToArray(), device: device);
        return (scores.index_select(0, wi), scores.index_select(0, li), tensor(weight.ToArray(), device: device));
    }

    /// <summary>Raw scores per group (no gradients, no dropout).</summary>
    internal static double[][] ScoreAll(LlamaForSequenceClassification model, IReadOnlyList<TokenizedGroup> groups, int padId, Device device, int groupsPerBatch = 16)
    {
        using var noGrad = no_grad();
        model.eval();
        var result = new List<double[]>();
        for (int i = 0; i < groups.Count; i += groupsPerBatch)
        {
            using var scope = NewDisposeScope();
            var batch = groups.Skip(i).Take(groupsPerBatch).ToList();
            float[] flat = ScoreGroups(model, batch, padId, device).to(CPU).data<float>().ToArray();
            int o = 0;
            foreach (var g in batch)
            {
                result.Add(flat.Skip(o).Take(g.Sequences.Length).Select(x => (double)x).ToArray());
                o += g.Sequences.Length;
            }
        }
        return result.ToArray();
    }

    /// <summary>Held-out pairwise accuracy over every group's comparisons, against the group's reference utilities.</summary>
    internal static double Accuracy(double[][] scores, IReadOnlyList<TokenizedGroup> groups) => Accuracy(scores, [.. groups.Select(g => g.Group)]);

    /// <summary>Pairwise accuracy of per-response scores (one array per group) against each group's reference utilities, ties in the reference skipped; the RM's and DPO's.</summary>
    internal static double Accuracy(double[][] scores, IReadOnlyList<RmGroup> groups)
    {
        var s = new List<double>();
        var gold = new List<double>();
        var pairs = new List<(int, int)>();
        for (int g = 0; g < groups.Count; g++)
        {
            int o = s.Count;
            s.AddRange(scores[g]);
            gold.AddRange(groups[g].Gold);
            pairs.AddRange(groups[g].Pairs.Select(p => (o + p.W, o + p.L)));
        }
        return PairwiseLoss.PairwiseAccuracy(s, gold, pairs);
    }

    static TokenizedGroup[] BatchGroups(TokenizedGroup[] train, int step, int stepsPerEpoch, RmConfig cfg) =>
        [.. BatchIndices(train.Length, step, stepsPerEpoch, cfg.PromptsPerBatch, cfg.Seed).Select(i => train[i])];

    /// <summary>The groups of step <paramref name="step"/>: consecutive slices of a seeded permutation per epoch (the RM's and DPO's order).</summary>
    internal static int[] BatchIndices(int count, int step, int stepsPerEpoch, int perBatch, long seed)
    {
        int epoch = step / stepsPerEpoch, within = step % stepsPerEpoch;
        int[] order = SplitMixRandom.Permutation(count, seed * 7919 + epoch);
        return [.. order.Skip(within * perBatch).Take(perBatch)];
    }

    /// <summary>
    /// The normalisation of a reward model trained on a data file: one response sampled from the SFT model (temperature
    /// <c>sample_temperature</c>) for each of up to <c>eval_prompts</c> distinct prompts — the held-out file's when given,
    /// else the training file's — scored by the trained RM. PPO's rollouts come from that model, so this is the
    /// distribution the normalised scores should have mean 0 (and std 1) on.
    /// </summary>
    static RewardNormalization NormalizeOnSftSamples(RmConfig cfg, LlamaForSequenceClassification model, TextTokenizer tokenizer, RmData data, int padId, Device device)
    {
        bool heldOut = data.Eval.Count > 0;
        var prompts = (heldOut ? data.Eval : data.Train).Select(g => g.Prompt).Distinct().Take(Math.Max(1, cfg.EvalPrompts)).ToList();
        IReadOnlyList<(string Text, bool EndedWithEos)[]> samples;
        using (var policy = LlamaForCausalLM.FromPretrained(cfg.SftModel, device, ScalarType.Float32))
        using (var rollouts = PolicyRollouts.ForActor(cfg.Engine, policy, tokenizer, cfg.SftModel, Path.Combine(cfg.Out, ".rollout_engine"), cfg.Threads, cfg.RolloutPrecision))
            samples = InferenceServices.Sample(rollouts, tokenizer, prompts, 1,
                new SamplingOptions { Temperature = (float)cfg.SampleTemperature, MaxNewTokens = cfg.MaxNewTokens, Seed = (ulong)cfg.Seed + 2 });
        var groups = prompts.Select((p, i) => Tokenize(tokenizer, new RmGroup(p, [samples[i][0].Text], [], [0]), cfg.MaxSeqLen)).ToArray();
        var raw = ScoreAll(model, groups, padId, device).SelectMany(r => r).ToList();
        return RewardNormalization.From(raw, cfg.NormalizeStd,
            $"{raw.Count} SFT samples on {(heldOut ? "held-out" : "training")} prompts of {(heldOut ? cfg.EvalFile : cfg.RankingsFile ?? cfg.PairsFile)}");
    }

    internal static RmData LabelFresh(RmConfig cfg, TextTokenizer tokenizer, Device device)
    {
        if (cfg.RankingsFile is not null || cfg.PairsFile is not null) return RmData.Load(cfg, (_, _, _) => []);
        using var policy = LlamaForCausalLM.FromPretrained(cfg.SftModel, device, ScalarType.Float32);
        using var rollouts = PolicyRollouts.ForActor(cfg.Engine, policy, tokenizer, cfg.SftModel, Path.Combine(cfg.Out, ".rollout_engine"), cfg.Threads, cfg.RolloutPrecision);
        var data = RmData.Load(cfg, (prompts, k, seed) => InferenceServices.Sample(rollouts, tokenizer, prompts, k,
            new SamplingOptions { Temperature = (float)cfg.SampleTemperature, MaxNewTokens = cfg.MaxNewTokens, Seed = (ulong)seed }));
        AtomicFile.WriteAllText(Path.Combine(cfg.Out, "eval_gold.json"), JsonSerializer.Serialize(data.Eval.Select(g => g.Gold).ToList()));
        return data;
    }

    /// <summary>On resume, the labelled data written by the first run (the same comparisons, no re-sampling).</summary>
    internal static RmData Reload(RmConfig cfg)
    {
        if (cfg.RankingsFile is not null || cfg.PairsFile is not null) return RmData.Load(cfg, (_, _, _) => []);
        var train = DataFiles.ReadRanked(Path.Combine(cfg.Out, "rankings.jsonl")).Records.Select(RmGroup.FromRanked).ToList();
        var gold = JsonSerializer.Deserialize<List<double[]>>(File.ReadAllText(Path.Combine(cfg.Out, "eval_gold.json")))!;
        var eval = DataFiles.ReadRanked(Path.Combine(cfg.Out, "eval_rankings.jsonl")).Records
            .Select((r, i) => RmGroup.FromRanked(r) with { Gold = gold[i] }).ToList();
        return new RmData(train, eval, 0, true);
    }

    static Dictionary<string, optim.Optimizer> Optimizers(optim.Optimizer optimizer) => new() { ["optimizer"] = optimizer };

    static void Log(string message) => StageLog.Info(message);

    sealed record RmState(int Step, string ConfigJson) : ICheckpointState;

}
