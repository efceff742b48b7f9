using Rlhf.Training.Ppo;
using static TorchSharp.torch;

namespace Rlhf.Training.Dpo;

/// <summary>Which preference loss DPO minimises.</summary>
public enum DpoLossType
{
    /// <summary>−log σ(r_w − r_l): DPO's own (Rafailov et al. 2023, eq. 7).</summary>
    Sigmoid,
    /// <summary>(h − 1/(2β))² with h = (r_w − r_l)/β: IPO (Azar et al. 2023, eq. 17), which does not push margins to infinity.</summary>
    Ipo,
}

/// <summary>
/// Direct Preference Optimisation's loss (Rafailov et al. 2023): the policy's implicit reward
/// r(x, y) = β·(log π_θ(y|x) − log π_ref(y|x)) of each response, and a preference loss over (chosen, rejected) pairs in
/// which each prompt counts once (its C(K,2) pairs share weight 1, as the reward model's loss).
/// </summary>
public static class DpoLoss
{
    /// <summary>r = β·(log π_θ(y|x) − log π_ref(y|x)) per sequence.</summary>
    /// <param name="logp">Σ_t log π_θ(y_t|x, y_&lt;t) over each response [N]</param>
    /// <param name="logpRef">the same under π_ref [N]</param>
    public static Tensor ImplicitRewards(Tensor logp, Tensor logpRef, double beta)
    {
        Shapes.Rank(logp, 1, nameof(logp), "[N]");
        Shapes.Same(logpRef, logp, nameof(logpRef), nameof(logp));
        return beta * (logp - logpRef.detach());
    }

    /// <summary>
    /// L = (1/P)·Σ_pairs w·ℓ(r_w − r_l), w = 1/(pairs of the pair's prompt), P prompts; ℓ(d) = −log σ(d) (sigmoid) or
    /// (d/β − 1/(2β))² (ipo).
    /// </summary>
    /// <param name="chosen">r(x, y_w) [M]</param>
    /// <param name="rejected">r(x, y_l) [M]</param>
    /// <param name="weight">1/(pairs of the prompt) [M]</param>
    public static Tensor Compute(Tensor chosen, Tensor rejected, Tensor weight, int prompts, double beta, DpoLossType type)
    {
        Shapes.Rank(chosen, 1, nameof(chosen), "[M]");
        Shapes.Same(rejected, chosen, nameof(rejected), nameof(chosen));
        Shapes.Same(weight, chosen, nameof(weight), nameof(chosen));
        if (!(beta > 0)) throw new ArgumentOutOfRangeException(nameof(beta), beta, "β must be > 0");
        var d = chosen - rejected;
        var perPair = type switch
        {
            DpoLossType.Sigmoid => -nn.functional.logsigmoid(d),
            DpoLossType.Ipo => (d / beta - 1 / (2 * beta)).square(),
            _ => throw new ArgumentOutOfRangeException(nameof(type)),
        };
        return (perPair * weight).sum() / prompts;
    }
}
