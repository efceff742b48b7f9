using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>
/// Truncated importance sampling between the rollout engine and the trainer (Yao et al. 2025, "Your Efficient RL
/// Framework Secretly Brings You Off-Policy RL Training"; Espeholt et al. 2018 for the truncation). The tokens were
/// sampled from π_rollout (the ONNX engine: int8 or float32, its own kernels) while PPO's ratio is taken against
/// π_old (the trainer's log-probabilities of the same tokens at rollout time). The policy-gradient term of each token is
/// multiplied by
/// <code>w_t = min(π_old(a_t|s_t) / π_rollout(a_t|s_t), C) = min(exp(logp_old_t − logp_rollout_t), C)</code>
/// which corrects the expectation back to π_old up to the truncation at C.
/// </summary>
public static class Tis
{
    /// <summary>
    /// Per-token weights w [B, A] (1 at padding; no gradient), their mean over valid tokens, and the share of valid tokens
    /// where the ratio exceeded <paramref name="cap"/> (truncated). <paramref name="cap"/> = +∞ gives the plain ratio.
    /// </summary>
    /// <param name="logpOld">log π_old(a_t|s_t) from the trainer [B, A]</param>
    /// <param name="logpRollout">log π_rollout(a_t|s_t) recorded by the engine [B, A]</param>
    /// <param name="mask">1 = response token [B, A]</param>
    /// <param name="cap">C &gt; 0</param>
    public static (Tensor Weights, double Mean, double ClipFrac) Weights(Tensor logpOld, Tensor logpRollout, Tensor mask, double cap)
    {
        Shapes.BA(logpOld, nameof(logpOld), (logpRollout, nameof(logpRollout)), (mask, nameof(mask)));
        if (!(cap > 0)) throw new ArgumentOutOfRangeException(nameof(cap), cap, "C must be > 0");
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var ratio = Masked.Fill(logpOld - logpRollout, mask).exp();                // exp(0) = 1 at padding
        var truncated = ratio.gt(cap).to_type(mask.dtype);
        var w = ratio.clamp_max(cap);
        double mean = Masked.Mean(w, mask).item<float>();
        double clipFrac = Masked.Mean(truncated, mask).item<float>();
        return (w.MoveToOuterDisposeScope(), mean, clipFrac);
    }

    /// <summary>
    /// The engine's per-token log-probabilities as [B, A] (row i's response right-padded with 0), and whether every row
    /// has them. Where an engine records none (NaN), the row takes
    /// <paramref name="logpOld"/>'s values, so its weights are 1.
    /// </summary>
    /// <param name="rollout">per row, one log-probability per response token</param>
    /// <param name="logpOld">log π_old [B, A], for rows without engine log-probabilities</param>
    public static (Tensor LogProbs, bool AllRecorded) RolloutLogProbs(IReadOnlyList<float[]> rollout, Tensor logpOld)
    {
        long b = logpOld.shape[0], a = logpOld.shape[1];
        if (rollout.Count != b) throw new ArgumentException($"{rollout.Count} rows of rollout log-probabilities for a batch of {b}.");
        float[] old = logpOld.to(CPU).data<float>().ToArray();
        var flat = new float[b * a];
        bool all = true;
        for (int i = 0; i < b; i++)
        {
            var row = rollout[i];
            if (row.Length > a) throw new ArgumentException($"Row {i} has {row.Length} rollout log-probabilities for {a} response positions.");
            bool known = row.All(x => !float.IsNaN(x));
            all &= known;
            for (int t = 0; t < a; t++) flat[i * a + t] = !known ? old[i * a + t] : t < row.Length ? row[t] : 0f;
        }
        return (tensor(flat, [b, a], device: logpOld.device), all);
    }
}
