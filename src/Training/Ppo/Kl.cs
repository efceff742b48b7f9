using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>
/// Per-token estimators of KL(π_old ‖ π_ref) from a token a_t sampled from π_old
/// (J. Schulman, "Approximating KL divergence", 2020; TRL's <c>kl_estimator</c> "k1"/"k3").
/// </summary>
public enum KlEstimator
{
    /// <summary>k1 = log π(a) − log π_ref(a): unbiased, high variance, can be negative per token (InstructGPT's penalty).</summary>
    K1,

    /// <summary>k3 = (r − 1) − log r with r = π_ref(a)/π(a): unbiased, lower variance, never negative.</summary>
    K3,
}

/// <summary>Per-token KL estimates between the sampling policy and the reference policy.</summary>
public static class Kl
{
    /// <summary>
    /// Per-token KL estimate (Schulman 2020). With log r = logp_ref − logp:
    /// k1 = logp − logp_ref = −log r;  k3 = (r − 1) − log r = exp(log r) − 1 − log r.
    /// Both have expectation KL(π ‖ π_ref) when a ~ π. No masking here: multiply by the response mask downstream.
    /// </summary>
    /// <param name="logp">log π(a_t | s_t) of the sampled tokens [B, A]</param>
    /// <param name="logpRef">log π_ref(a_t | s_t) of the same tokens [B, A]</param>
    /// <returns>kl_t [B, A]</returns>
    public static Tensor Estimate(Tensor logp, Tensor logpRef, KlEstimator k)
    {
        Shapes.BA(logp, nameof(logp), (logpRef, nameof(logpRef)));
        var logR = logpRef - logp;
        return k switch
        {
            KlEstimator.K1 => -logR,
            KlEstimator.K3 => logR.exp() - 1 - logR,
            _ => throw new ArgumentOutOfRangeException(nameof(k), k, "unknown KL estimator"),
        };
    }
}
