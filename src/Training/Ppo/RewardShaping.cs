using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>
/// Per-token PPO rewards from one scalar RM score per sequence (InstructGPT 2022, eq. 2; Ziegler et al. 2019 §2.2;
/// TRL <c>compute_rewards</c>, OpenRLHF <c>compute_reward</c>); the score itself comes from <see cref="RewardPipeline"/>.
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
}
