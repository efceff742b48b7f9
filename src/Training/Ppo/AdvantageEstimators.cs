using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>How advantages are estimated (OpenRLHF's <c>--advantage_estimator</c>).</summary>
public enum AdvantageEstimator
{
    /// <summary>PPO with a critic: GAE over KL-shaped per-token rewards (<see cref="Gae"/>), whitened.</summary>
    Gae,
    /// <summary>REINFORCE leave-one-out (Ahmadian et al. 2024): the score minus the mean of the group's other scores, KL in the reward.</summary>
    Rloo,
    /// <summary>GRPO (Shao et al. 2024): group-normalised scores for every token, KL (k3) in the loss, per-sequence token means.</summary>
    Grpo,
    /// <summary>Dr. GRPO (Liu et al. 2025): GRPO without the std division and without per-sequence length normalisation.</summary>
    DrGrpo,
    /// <summary>REINFORCE++ (Hu 2025): returns of the KL-shaped rewards, normalised over the whole batch.</summary>
    ReinforcePp,
}

/// <summary>
/// The critic-free advantage estimators, over a batch whose rows come in consecutive groups of k samples of the same
/// prompt (rows g·k … g·k + k − 1 answer prompt g).
/// </summary>
public static class AdvantageEstimators
{
    /// <summary>Whether <paramref name="e"/> learns a value function (only GAE does).</summary>
    public static bool NeedsCritic(this AdvantageEstimator e) => e == AdvantageEstimator.Gae;

    /// <summary>Whether the KL penalty enters the loss (k3 against π_ref, GRPO and Dr. GRPO) instead of the per-token rewards.</summary>
    public static bool KlInLoss(this AdvantageEstimator e) => e is AdvantageEstimator.Grpo or AdvantageEstimator.DrGrpo;

    /// <summary>
    /// RLOO's baselined scores (Ahmadian et al. 2024, eq. 4): s_i − (1/(k−1))·Σ_{j≠i} s_j over i's group, which equals
    /// (k/(k−1))·(s_i − mean_group). A group of one has no baseline: its advantage is 0.
    /// </summary>
    /// <param name="scores">sequence scores [B], B a multiple of k</param>
    public static Tensor LeaveOneOut(Tensor scores, int k)
    {
        var g = Groups(scores, k);                                    // [B/k, k]
        if (k == 1) return zeros_like(scores);
        var others = (g.sum(1, keepdim: true) - g) / (k - 1);
        return (g - others).reshape(-1);
    }

    /// <summary>
    /// GRPO's group-normalised scores (Shao et al. 2024, §4.1.2): (s_i − mean_group)/(std_group + ε), std unbiased as
    /// TRL's; with <paramref name="divideByStd"/> false (Dr. GRPO, Liu et al. 2025 §3.2) s_i − mean_group. A group of one gives 0.
    /// </summary>
    /// <param name="scores">sequence scores [B], B a multiple of k</param>
    public static Tensor GroupNormalised(Tensor scores, int k, bool divideByStd, double eps = 1e-4)
    {
        var g = Groups(scores, k);                                    // [B/k, k]
        if (k == 1) return zeros_like(scores);
        var centred = g - g.mean([1], keepdim: true);
        return (divideByStd ? centred / (g.std(1, unbiased: true, keepdim: true) + eps) : centred).reshape(-1);
    }

    /// <summary>One sequence advantage per row spread over its response tokens: A[b, t] = a_b where mask = 1, else 0.</summary>
    /// <param name="perSequence">[B]</param>
    /// <param name="mask">1 = response token [B, A]</param>
    public static Tensor PerToken(Tensor perSequence, Tensor mask)
    {
        Shapes.Rank(perSequence, 1, nameof(perSequence), "[B]");
        return Masked.Fill(perSequence.unsqueeze(1).to_type(mask.dtype).expand(mask.shape), mask);
    }

    /// <summary>Returns-to-go G_t = Σ_{t' ≥ t} r_t' over each row's response tokens (γ = 1, the REINFORCE return), 0 at padding.</summary>
    /// <param name="rewards">per-token rewards [B, A]</param>
    /// <param name="mask">1 = response token, right-padded [B, A]</param>
    public static Tensor ReturnsToGo(Tensor rewards, Tensor mask)
    {
        Shapes.BA(rewards, nameof(rewards), (mask, nameof(mask)));
        var r = Masked.Fill(rewards, mask);
        return Masked.Fill(r.flip(1).cumsum(1).flip(1), mask);
    }

    static Tensor Groups(Tensor scores, int k)
    {
        Shapes.Rank(scores, 1, nameof(scores), "[B]");
        if (k < 1 || scores.shape[0] % k != 0) throw new ArgumentException($"{scores.shape[0]} scores do not form groups of {k}", nameof(k));
        return scores.reshape(-1, k);
    }
}
