using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>
/// Per-token PPO rewards from one scalar RM score per sequence (InstructGPT 2022, eq. 2; Ziegler et al. 2019 §2.2;
/// TRL <c>compute_rewards</c>, OpenRLHF <c>compute_reward</c>), and the score adjustments made before shaping.
/// </summary>
public static class RewardShaping
{
    /// <summary>
    /// r_t = −β·kl_t on every valid response token, and on the last valid token T additionally r_T += score:
    /// R(x, y) = r_ψ(x, y) − β·log(π_old(y|x)/π_ref(y|x)) spread over tokens. Invalid positions are 0.
    /// The last valid token of a row is the last index with mask = 1 (masks are right-padded; a row with no valid
    /// token gets no score).
    /// </summary>
    /// <param name="scores">RM score per sequence, after any EOS penalty/clip/normalisation [B]</param>
    /// <param name="logpOld">log π_old(a_t | s_t) at rollout [B, A]</param>
    /// <param name="logpRef">log π_ref(a_t | s_t) [B, A]</param>
    /// <param name="mask">1 = response token, 0 = padding [B, A]</param>
    /// <returns>rewards [B, A] and the masked per-token kl [B, A] (for objective/kl = mean over rows of Σ_t kl_t)</returns>
    public static (Tensor Rewards, Tensor Kl) PerToken(
        Tensor scores, Tensor logpOld, Tensor logpRef, Tensor mask, double beta, KlEstimator estimator)
    {
        Shapes.BA(logpOld, nameof(logpOld), (logpRef, nameof(logpRef)), (mask, nameof(mask)));
        Shapes.Rank(scores, 1, nameof(scores), "[B]");
        if (scores.shape[0] != logpOld.shape[0])
            throw new ArgumentException($"scores {Shapes.Of(scores)} must have one entry per row of logpOld {Shapes.Of(logpOld)}", nameof(scores));

        var kl = Masked.Fill(Kl.Estimate(logpOld, logpRef, estimator), mask);
        var rewards = -beta * kl;
        var last = LastValidOneHot(mask);                                   // [B, A]
        rewards = rewards + last * scores.to_type(rewards.dtype).unsqueeze(1);
        return (rewards, kl);
    }

    /// <summary>One-hot [B, A] of each row's last valid position (all zeros for an empty row).</summary>
    /// <param name="mask">1 = valid, 0 = padding [B, A]</param>
    public static Tensor LastValidOneHot(Tensor mask)
    {
        Shapes.Rank(mask, 2, nameof(mask), "[B, A]");
        long a = mask.shape[1];
        var valid = mask.ne(0);
        // index of the last valid token: max over (position+1)·valid, minus 1; −1 for empty rows
        var pos = arange(1, a + 1, dtype: ScalarType.Int64, device: mask.device).unsqueeze(0);
        var lastIdx = (pos * valid.to_type(ScalarType.Int64)).amax(new long[] { 1 }) - 1;   // [B]
        var hit = pos.sub(1).eq(lastIdx.unsqueeze(1));
        return hit.to_type(mask.dtype);
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

    /// <summary>
    /// The sequence scores PPO turns into rewards, in OpenRLHF's order: r (already on the normalised scale where
    /// <see cref="ScoreNormalization.Sft"/> applies: gain·r_raw + bias, <see cref="RewardModel.RewardNormalization.Apply"/>) → missing-EOS penalty
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
}
