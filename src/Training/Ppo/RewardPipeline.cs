using Rlhf.Export;
using Rlhf.Inference.Reward;
using Rlhf.Inference.Rollout;
using Rlhf.Inference.Services;
using Rlhf.Inference.Tokenization;
using Rlhf.Training.Common;
using Rlhf.Training.Model;
using Rlhf.Training.RewardModel;
using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>A scored rollout batch: the rollouts with their response texts, RM scores and the scores PPO uses.</summary>
/// <param name="Rollouts">prompts and sampled responses [B]</param>
/// <param name="Texts">decoded response texts [B]</param>
/// <param name="EndedWithEos">whether each response ended with EOS [B]</param>
/// <param name="RmScores">the reward model's scores, after the sft calibration where it applies [B]</param>
/// <param name="Scores">the sequence scores PPO turns into rewards (<see cref="RewardPipeline.Scores"/>) [B]</param>
public sealed record ScoredRollouts(RolloutBatch Rollouts, string[] Texts, bool[] EndedWithEos, float[] RmScores, float[] Scores)
{
    /// <summary>Prompt texts [B].</summary>
    public string[] Prompts => Rollouts.Prompts;
}

/// <summary>
/// Every transform between the reward model and PPO's per-sequence score, in one documented order (OpenRLHF's):
/// scorer r_raw → the sft calibration r = g·r_raw + b (one affine map, measured on SFT samples, <c>reward_normalization.json</c>)
/// → missing-EOS penalty → none / running / batch normalisation → clip to ±c. Whether a scorer's output is already
/// normalised is what its reward_spec.json declares (<see cref="RewardSpec.Normalises"/>); a remote scorer scores with its
/// own model's spec and is taken as it is.
/// </summary>
public sealed class RewardPipeline(IRewardService scorer, TextTokenizer tokenizer, PpoConfig cfg)
{
    /// <summary>The sft calibration g·r + b (null when none applies).</summary>
    public RewardNormalization? Calibration { get; set; }
    /// <summary>Running score statistics (<see cref="ScoreNormalization.Running"/>), updated by every training batch.</summary>
    public RunningMoments Moments { get; set; } = new();

    /// <summary>
    /// Decodes and scores <paramref name="rollouts"/>. Training batches (<paramref name="training"/>) go through the whole
    /// pipeline and update the running moments; evaluation batches are penalised and clipped but never normalised, and
    /// leave the training statistics alone.
    /// </summary>
    public ScoredRollouts Score(RolloutBatch rollouts, bool training)
    {
        var (texts, rm) = Raw(rollouts);
        bool[] eos = [.. rollouts.Results.Select(x => x.FinishReason == RolloutFinishReason.Eos)];
        if (Calibration is { } c) rm = [.. rm.Select(x => (float)c.Apply(x))];
        using var scope = NewDisposeScope();
        var shaped = Scores(tensor(rm), tensor(eos), cfg.MissingEosPenalty, cfg.MissingEosPenaltyMode,
            training ? cfg.RewardNormalization : ScoreNormalization.None, training ? Moments : null, cfg.RewardClip);
        float[] scores = shaped.to_type(ScalarType.Float32).data<float>().ToArray();
        return new ScoredRollouts(rollouts, texts, eos, rm, scores);
    }

    /// <summary>The decoded response texts [B] and the scorer's raw scores of (prompt, text) [B].</summary>
    (string[] Texts, float[] Raw) Raw(RolloutBatch rollouts)
    {
        string[] texts = [.. rollouts.Results.Select(x => PromptFormat.ResponseText(tokenizer, x.ResponseIds))];
        return (texts, scorer.Score([.. rollouts.Prompts.Select((p, i) => new RewardRequest(p, texts[i]))]));
    }

    /// <summary>
    /// Whether the sft calibration applies: always with reward_normalization sft; with auto, when the local scorer's
    /// scores are not already normalised (an ONNX reward model whose reward_spec.json sets no mean/std; our RM's export
    /// sets them). A remote reward endpoint scores with its own model's reward_spec.json, so auto leaves it as it is.
    /// </summary>
    public static bool NeedsSftCalibration(PpoConfig cfg, IRewardService rewards) => cfg.RewardNormalization switch
    {
        ScoreNormalization.Sft => true,
        ScoreNormalization.Auto => rewards is RewardScorer { Spec.Normalises: false },
        _ => false,
    };

    /// <summary>
    /// Measures the sft calibration on <paramref name="sftSamples"/> (the SFT model's samples): gain = 1/σ, bias = −μ/σ
    /// (<see cref="RewardNormalization.From"/>), written to <c>reward_normalization.json</c> in the output folder, and
    /// applied from now on.
    /// </summary>
    public RewardNormalization Calibrate(RolloutBatch sftSamples)
    {
        var (_, raw) = Raw(sftSamples);
        var norm = RewardNormalization.From([.. raw.Select(x => (double)x)], unitStd: true, $"{raw.Length} SFT samples on PPO training prompts");
        AtomicFile.WriteAllText(Path.Combine(cfg.Out, RewardNormalization.FileName), System.Text.Json.JsonSerializer.Serialize(norm, ConfigLoader.Json));
        StageLog.Info($"Reward normalisation on {raw.Length} SFT samples: raw mean {norm.RawMean:F4}, std {norm.RawStd:F4} -> r' = {norm.Gain:F4}·r + {norm.Bias:F4} " +
            $"({RewardNormalization.FileName}; reward_normalization none turns it off).");
        Calibration = norm;
        return norm;
    }

    /// <summary>
    /// A critic built from our RM starts on the scale of the scores PPO uses: the RM's normalisation (its
    /// <c>reward_normalization.json</c>, g₁, b₁) and, when our RM is also the scorer, the sft calibration (g₂, b₂)
    /// are folded into the value head: V = g₂·(g₁·v + b₁) + b₂ (<see cref="LlamaForSequenceClassification.FoldAffine"/>).
    /// </summary>
    public static void FoldIntoCritic(LlamaForSequenceClassification critic, PpoConfig cfg, RewardNormalization? calibration)
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
        StageLog.Info($"Critic: from {rmFolder}, value head scaled to the normalised reward (V = {gain:F4}·v + {bias:F4}).");
    }

    /// <summary>The affine map "first, then second": x ↦ g₂·(g₁·x + b₁) + b₂ = (g₂·g₁)·x + (g₂·b₁ + b₂).</summary>
    public static (double Gain, double Bias) Compose(RewardNormalization first, RewardNormalization? second) =>
        second is null ? (first.Gain, first.Bias) : (second.Gain * first.Gain, second.Gain * first.Bias + second.Bias);

    /// <summary>
    /// The sequence scores PPO turns into rewards, in OpenRLHF's order: r (already calibrated where
    /// <see cref="ScoreNormalization.Sft"/> applies: gain·r_raw + bias, <see cref="RewardNormalization.Apply"/>) → missing-EOS penalty
    /// (<see cref="ApplyEosPenalty"/>: replace with p, or subtract |p|) → normalisation (<see cref="Normalise"/> with
    /// running moments, or <see cref="WhitenBatch"/>) → <see cref="Clip"/> to ±c.
    /// </summary>
    /// <param name="rm">reward-model scores [B]</param>
    /// <param name="endedWithEos">true where the response ended with EOS [B] (bool)</param>
    /// <param name="moments">running statistics, updated by this batch (required for <see cref="ScoreNormalization.Running"/>)</param>
    public static Tensor Scores(Tensor rm, Tensor endedWithEos, double? eosPenalty, EosPenaltyMode mode,
                                ScoreNormalization normalization, RunningMoments? moments, double clip)
    {
        var s = eosPenalty is double p
            ? ApplyEosPenalty(rm, endedWithEos, mode == EosPenaltyMode.Subtract ? Math.Abs(p) : p, subtract: mode == EosPenaltyMode.Subtract)
            : rm.alias();
        var n = normalization switch
        {
            ScoreNormalization.None or ScoreNormalization.Auto or ScoreNormalization.Sft => s,   // sft: applied to r before
            ScoreNormalization.Running => Normalise(s, moments ?? throw new ArgumentNullException(nameof(moments), "running normalisation needs its moments")),
            ScoreNormalization.Batch => WhitenBatch(s),
            _ => throw new ArgumentOutOfRangeException(nameof(normalization), normalization, null),
        };
        return Clip(n, clip);
    }

    /// <summary>
    /// Missing-EOS penalty (TRL <c>missing_eos_penalty</c> / InstructGPT's truncated samples): a response that did
    /// not end with EOS has its score replaced by <paramref name="penalty"/> (TRL subtracts instead; pick
    /// <paramref name="subtract"/> for that). Others keep their score.
    /// </summary>
    /// <param name="scores">RM scores [B]</param>
    /// <param name="endedWithEos">true where the response ended with EOS [B] (bool)</param>
    public static Tensor ApplyEosPenalty(Tensor scores, Tensor endedWithEos, double penalty, bool subtract = false)
    {
        Shapes.Rank(scores, 1, nameof(scores), "[B]");
        Shapes.Same(endedWithEos, scores, nameof(endedWithEos), nameof(scores));
        var ended = endedWithEos.to_type(ScalarType.Bool);
        var penalised = subtract ? scores - penalty : full_like(scores, penalty);
        return where(ended, scores, penalised);
    }

    /// <summary>Clips scores to [−c, c] (OpenRLHF <c>reward_clip_range</c>); c ≤ 0 or ∞ leaves them unchanged.</summary>
    /// <param name="scores">RM scores [B]</param>
    public static Tensor Clip(Tensor scores, double c)
    {
        Shapes.Rank(scores, 1, nameof(scores), "[B]");
        return c <= 0 || double.IsPositiveInfinity(c) ? scores.alias() : scores.clamp(-c, c);
    }

    /// <summary>
    /// Scales scores by running statistics (TRL/OpenRLHF <c>RunningMoments</c>, "reward scaling" of Engstrom et al. 2020):
    /// first updates <paramref name="moments"/> with this batch, then returns (s − μ)/σ, or s/σ when
    /// <paramref name="shiftMean"/> is false.
    /// </summary>
    /// <param name="scores">RM scores [B]</param>
    public static Tensor Normalise(Tensor scores, RunningMoments moments, bool shiftMean = true)
    {
        Shapes.Rank(scores, 1, nameof(scores), "[B]");
        moments.Update(scores.to_type(ScalarType.Float64).cpu().data<double>().ToArray());
        double std = Math.Max(moments.Std, 1e-8);
        return shiftMean ? (scores - moments.Mean) / std : scores / std;
    }

    /// <summary>
    /// Whitens scores over the batch (TRL <c>whiten</c>): (s − μ_b)/√(σ_b² + 1e-8) with μ_b the mean and σ_b² the
    /// unbiased variance of the batch.
    /// </summary>
    /// <param name="scores">RM scores [B], B ≥ 2</param>
    public static Tensor WhitenBatch(Tensor scores)
    {
        Shapes.Rank(scores, 1, nameof(scores), "[B]");
        if (scores.shape[0] < 2) throw new ArgumentException($"batch whitening needs at least 2 scores, got {Shapes.Of(scores)}", nameof(scores));
        var mean = scores.mean();
        var variance = scores.var();   // unbiased
        return (scores - mean) * (variance + 1e-8).rsqrt();
    }
}
