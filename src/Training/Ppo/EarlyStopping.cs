namespace Rlhf.Training.Ppo;

/// <summary>
/// When PPO stops before its last iteration: the held-out evaluations have plateaued.
/// <para>
/// With evaluations v_1 … v_n (one every <c>eval_every</c> iterations) and patience P ≥ 1, the run stops after
/// evaluation n when n > P and none of the last P evaluations beats the best one before them by more than δ:
/// <c>max(v_{n−P+1} … v_n) ≤ max(v_1 … v_{n−P}) + δ</c> (the rule of Keras' and Hugging Face's early-stopping
/// callbacks, applied to the policy's held-out evaluation instead of a validation loss). P = 0 never stops.
/// </para>
/// The rule reads only the evaluation history, which the metrics table (and so every checkpoint) holds: a resumed run
/// decides exactly as the uninterrupted one.
/// </summary>
public static class EarlyStopping
{
    /// <summary>Whether the run stops after the last of <paramref name="evaluations"/> (oldest first).</summary>
    public static bool Plateaued(IReadOnlyList<double> evaluations, int patience, double minDelta)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(patience);
        int n = evaluations.Count;
        if (patience == 0 || n <= patience) return false;
        double best = evaluations.Take(n - patience).Max();
        return evaluations.Skip(n - patience).Max() <= best + minDelta;
    }
}
