using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>
/// The PPO objective's terms (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"; InstructGPT 2022 eq. 2
/// for PPO-ptx; names as in cleanrl/TRL). Means are over valid tokens of the whole minibatch (token-level, like TRL).
/// </summary>
public static class PpoLosses
{
    /// <summary>
    /// Clipped surrogate (PPO eq. 7): ratio_t = exp(logp_t − logp_old_t),
    /// L = −mean_masked(min(ratio·A, clip(ratio, 1−ε, 1+ε)·A)); written as cleanrl's
    /// max(−A·ratio, −A·clip(ratio)), so where the clipped branch is chosen the token's gradient is exactly 0.
    /// clipFrac = share of valid tokens where the clipped branch is strictly the larger loss (TRL's
    /// <c>pg_losses2 &gt; pg_losses</c>): ratio outside [1−ε, 1+ε] on the side that A's sign would push further.
    /// approxKl = mean_masked(½·(logp − logp_old)²) (cleanrl's/TRL's <c>approxkl</c>, k2 of Schulman's blog).
    /// </summary>
    /// <param name="logp">log π(a_t|s_t) under the current policy, with grad [B, A]</param>
    /// <param name="logpOld">log π_old(a_t|s_t) at rollout [B, A]</param>
    /// <param name="advantages">A_t (usually whitened) [B, A]</param>
    /// <param name="mask">1 = response token, 0 = padding [B, A]</param>
    /// <param name="isWeights">optional per-token importance weights w_t ≥ 0 [B, A] (<see cref="Tis.Weights"/>): each token's
    /// term becomes w_t·max(−A·ratio, −A·clip(ratio)); clipFrac and approxKl are unweighted</param>
    /// <returns>scalar loss, and clipFrac, approxKl as scalar tensors without grad</returns>
    /// <param name="aggregation">how token terms become the loss (<see cref="Aggregate"/>); token mean by default</param>
    /// <param name="maxTokens">L_max for <see cref="LossAggregation.SequenceMeanTokenSumNorm"/></param>
    public static (Tensor Loss, Tensor ClipFrac, Tensor ApproxKl) Policy(
        Tensor logp, Tensor logpOld, Tensor advantages, Tensor mask, double clipEps, Tensor? isWeights = null,
        LossAggregation aggregation = LossAggregation.TokenMean, int maxTokens = 0)
    {
        Shapes.BA(logp, nameof(logp), (logpOld, nameof(logpOld)), (advantages, nameof(advantages)), (mask, nameof(mask)));
        if (isWeights is not null) Shapes.BA(logp, nameof(logp), (isWeights, nameof(isWeights)));
        if (clipEps <= 0) throw new ArgumentOutOfRangeException(nameof(clipEps), clipEps, "ε must be > 0");

        // padding is filled before exp so that garbage there cannot turn into Inf·0 = NaN gradients
        var logRatio = Masked.Fill(logp - logpOld.detach(), mask);
        var ratio = logRatio.exp();
        var adv = Masked.Fill(advantages.detach(), mask);
        var pgLosses = -adv * ratio;
        var pgLosses2 = -adv * ratio.clamp(1 - clipEps, 1 + clipEps);
        var perToken = maximum(pgLosses, pgLosses2);
        if (isWeights is not null) perToken = perToken * Masked.Fill(isWeights.detach(), mask);
        var loss = Aggregate(perToken, mask, aggregation, maxTokens);
        using var _ = no_grad();
        var clipFrac = Masked.Mean(pgLosses2.gt(pgLosses).to_type(logp.dtype), mask);
        var approxKl = Masked.Mean(0.5 * logRatio.square(), mask);
        return (loss, clipFrac, approxKl);
    }

    /// <summary>
    /// Clipped value loss (PPO2 baselines; TRL/cleanrl): V_clip = V_old + clip(V − V_old, −ε_v, ε_v),
    /// L = ½·mean_masked(max((V − R)², (V_clip − R)²)). Where the clipped term is strictly larger the token's
    /// gradient is 0. clipFrac = share of valid tokens where it is (TRL's <c>vf_clipfrac</c>, counting only tokens with
    /// |V − V_old| > ε_v so that float rounding inside the range is not counted).
    /// </summary>
    /// <param name="values">V(s_t) of the current critic, with grad [B, A]</param>
    /// <param name="valuesOld">V_old(s_t) at rollout [B, A]</param>
    /// <param name="returns">R_t = A_t + V_old(s_t) from <see cref="Gae.Compute"/> [B, A]</param>
    /// <param name="mask">1 = response token, 0 = padding [B, A]</param>
    public static (Tensor Loss, Tensor ClipFrac) Value(Tensor values, Tensor valuesOld, Tensor returns, Tensor mask, double clipEpsV)
    {
        Shapes.BA(values, nameof(values), (valuesOld, nameof(valuesOld)), (returns, nameof(returns)), (mask, nameof(mask)));
        if (clipEpsV <= 0) throw new ArgumentOutOfRangeException(nameof(clipEpsV), clipEpsV, "ε_v must be > 0");

        var vOld = Masked.Fill(valuesOld.detach(), mask);
        var r = Masked.Fill(returns.detach(), mask);
        var diff = values - vOld;
        var vClip = vOld + diff.clamp(-clipEpsV, clipEpsV);
        var vfLosses1 = (values - r).square();
        var vfLosses2 = (vClip - r).square();
        var loss = 0.5 * Masked.Mean(maximum(vfLosses1, vfLosses2), mask);
        using var _ = no_grad();
        // |V − V_old| > ε_v as well: inside the range V_old + (V − V_old) can differ from V by an ulp in float32
        var clipFrac = Masked.Mean(vfLosses2.gt(vfLosses1).logical_and(diff.abs().gt(clipEpsV)).to_type(values.dtype), mask);
        return (loss, clipFrac);
    }

    /// <summary>
    /// Mean policy entropy over valid tokens: H_t = −Σ_v p_v log p_v with p = softmax(logits_t)
    /// (= logsumexp(z) − Σ_v p_v z_v, TRL's <c>entropy_from_logits</c>). Pass tempered logits
    /// (<see cref="Model.Temperature.Scale"/>), the same the ratio's log-probabilities are taken of. Subtract c_ent·H from the loss for an entropy bonus.
    /// </summary>
    /// <param name="logits">response-position logits [B, A, V]</param>
    /// <param name="mask">1 = response token, 0 = padding [B, A]</param>
    public static Tensor Entropy(Tensor logits, Tensor mask)
    {
        Shapes.Rank(logits, 3, nameof(logits), "[B, A, V]");
        Shapes.Rank(mask, 2, nameof(mask), "[B, A]");
        if (logits.shape[0] != mask.shape[0] || logits.shape[1] != mask.shape[1])
            throw new ArgumentException($"logits {Shapes.Of(logits)} must be [B, A, V] for mask {Shapes.Of(mask)}", nameof(logits));
        var logProbs = nn.functional.log_softmax(logits, -1);
        var h = -(logProbs.exp() * logProbs).sum(-1);     // [B, A]
        return Masked.Mean(h, mask);
    }

    /// <summary>
    /// PPO-ptx term (InstructGPT eq. 2, γ·E_{x~D_pretrain}[log π(x)]): loss = −γ_ptx·mean_masked(log π(x_t)).
    /// </summary>
    /// <param name="logpPretrain">log π of pretraining/SFT tokens [B, S]</param>
    /// <param name="maskPretrain">1 = token counts, 0 = padding/prompt [B, S]</param>
    public static Tensor Ptx(Tensor logpPretrain, Tensor maskPretrain, double gammaPtx)
    {
        Shapes.BA(logpPretrain, nameof(logpPretrain), (maskPretrain, nameof(maskPretrain)));
        return -gammaPtx * Masked.Mean(logpPretrain, maskPretrain);
    }

    /// <summary>
    /// The KL penalty inside the loss (GRPO, Shao et al. 2024 eq. 3): β·agg(k3_t) with k3 = π_ref/π − log(π_ref/π) − 1
    /// per token (<see cref="Kl.Estimate"/>), unbiased for KL(π ‖ π_ref) and ≥ 0; its gradient flows through log π.
    /// </summary>
    /// <param name="logp">log π(a_t|s_t), with grad [B, A]</param>
    /// <param name="logpRef">log π_ref(a_t|s_t) [B, A]</param>
    /// <param name="mask">1 = response token, 0 = padding [B, A]</param>
    public static Tensor KlPenalty(Tensor logp, Tensor logpRef, Tensor mask, double beta, LossAggregation aggregation, int maxTokens)
    {
        Shapes.BA(logp, nameof(logp), (logpRef, nameof(logpRef)), (mask, nameof(mask)));
        var k3 = Masked.Fill(Kl.Estimate(logp, Masked.Fill(logpRef.detach(), mask), KlEstimator.K3), mask);
        return beta * Aggregate(k3, mask, aggregation, maxTokens);
    }

    /// <summary>
    /// Token terms x [B, A] → one loss: <see cref="LossAggregation.TokenMean"/> Σ x·m / Σ m (TRL, OpenRLHF PPO);
    /// <see cref="LossAggregation.SequenceMeanTokenMean"/> mean_b(Σ_t x·m / Σ_t m) (GRPO's 1/|o_i|);
    /// <see cref="LossAggregation.SequenceMeanTokenSumNorm"/> mean_b(Σ_t x·m) / L_max (Dr. GRPO: one constant for every
    /// length, so long wrong answers are not favoured).
    /// </summary>
    public static Tensor Aggregate(Tensor x, Tensor mask, LossAggregation aggregation, int maxTokens) => aggregation switch
    {
        LossAggregation.TokenMean => Masked.Mean(x, mask),
        LossAggregation.SequenceMeanTokenMean => (Masked.Fill(x, mask).sum(1) / mask.sum(1).clamp_min(1)).mean(),
        LossAggregation.SequenceMeanTokenSumNorm => maxTokens >= 1
            ? Masked.Fill(x, mask).sum(1).mean() / maxTokens
            : throw new ArgumentOutOfRangeException(nameof(maxTokens), maxTokens, "L_max must be ≥ 1"),
        _ => throw new ArgumentOutOfRangeException(nameof(aggregation)),
    };
}

/// <summary>How per-token loss terms are reduced to one number (<see cref="PpoLosses.Aggregate"/>).</summary>
public enum LossAggregation
{
    /// <summary>Mean over every response token of the minibatch.</summary>
    TokenMean,
    /// <summary>Mean over sequences of each sequence's token mean (GRPO).</summary>
    SequenceMeanTokenMean,
    /// <summary>Mean over sequences of each sequence's token sum, divided by the longest possible response (Dr. GRPO).</summary>
    SequenceMeanTokenSumNorm,
}
