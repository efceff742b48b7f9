using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>Generalized Advantage Estimation (Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE").</summary>
public static class Gae
{
    /// <summary>
    /// δ_t = r_t + γ·V(s_{t+1}) − V(s_t), with V(s_{t+1}) = 0 after the last valid token of the row (episode end);
    /// A_t = Σ_l (γλ)^l δ_{t+l}, computed backwards as A_t = δ_t + γλ·A_{t+1} (cleanrl/TRL <c>lastgaelam</c>);
    /// returns R_t = A_t + V(s_t) (the value targets). λ = 0 gives one-step TD, λ = γ = 1 Monte-Carlo returns minus V.
    /// Masks are right-padded (a row's valid tokens come first); padded positions carry no reward, no value and no
    /// advantage, so both outputs are 0 there. No gradient flows (values are the rollout-time V_old).
    /// </summary>
    /// <param name="rewards">per-token rewards r_t [B, A]</param>
    /// <param name="values">V_old(s_t) at rollout [B, A]</param>
    /// <param name="mask">1 = response token, 0 = padding [B, A]</param>
    /// <returns>advantages A_t [B, A] and returns R_t [B, A]</returns>
    public static (Tensor Advantages, Tensor Returns) Compute(Tensor rewards, Tensor values, Tensor mask, double gamma, double lambda)
    {
        Shapes.BA(rewards, nameof(rewards), (values, nameof(values)), (mask, nameof(mask)));
        if (gamma is < 0 or > 1) throw new ArgumentOutOfRangeException(nameof(gamma), gamma, "γ must be in [0, 1]");
        if (lambda is < 0 or > 1) throw new ArgumentOutOfRangeException(nameof(lambda), lambda, "λ must be in [0, 1]");

        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var m = mask.ne(0).to_type(rewards.dtype);
        var r = Masked.Fill(rewards, mask).detach();
        var v = Masked.Fill(values, mask).detach();
        long a = r.shape[1];
        var columns = new Tensor[a];
        var lastGaeLam = zeros_like(r[.., 0]);     // A_{t+1}  [B]
        var nextValue = zeros_like(r[.., 0]);      // V(s_{t+1}), 0 past the end  [B]
        for (long t = a - 1; t >= 0; t--)
        {
            var mt = m[.., t];
            var delta = r[.., t] + gamma * nextValue - v[.., t];
            // on padding mt = 0 resets the recursion, so the next valid token to the left starts from A = 0, V = 0
            lastGaeLam = (delta + gamma * lambda * lastGaeLam) * mt;
            nextValue = v[.., t];
            columns[t] = lastGaeLam;
        }
        var advantages = stack(columns, 1);
        var returns = (advantages + v) * m;
        return (advantages.MoveToOuterDisposeScope(), returns.MoveToOuterDisposeScope());
    }
}
