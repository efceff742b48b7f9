namespace Rlhf.Training.Ppo;

/// <summary>Checkpointable state of <see cref="RunningMoments"/>: count, mean and M2 = Σ (x − mean)².</summary>
public sealed record RunningMomentsState(long Count, double Mean, double M2);

/// <summary>
/// Running mean and standard deviation of a stream of scalars (TRL/OpenRLHF <c>RunningMoments</c> for reward
/// scaling), updated per batch with Welford's algorithm in Chan et al.'s parallel form:
/// δ = μ_b − μ, n' = n + n_b, μ' = μ + δ·n_b/n', M2' = M2 + M2_b + δ²·n·n_b/n'.
/// </summary>
public sealed class RunningMoments
{
    long count;
    double mean, m2;

    public RunningMoments() { }

    public RunningMoments(RunningMomentsState state)
    {
        if (state.Count < 0 || state.M2 < 0) throw new ArgumentException("invalid RunningMoments state", nameof(state));
        (count, mean, m2) = (state.Count, state.Mean, state.M2);
    }

    /// <summary>Number of values seen.</summary>
    public long Count => count;

    /// <summary>Running mean (0 before any value).</summary>
    public double Mean => mean;

    /// <summary>Unbiased running variance M2/(n − 1) (1 while fewer than two values were seen, so scaling is a no-op).</summary>
    public double Var => count < 2 ? 1 : m2 / (count - 1);

    /// <summary>√Var.</summary>
    public double Std => Math.Sqrt(Var);

    /// <summary>Adds one batch of values.</summary>
    public void Update(ReadOnlySpan<double> xs)
    {
        if (xs.Length == 0) return;
        double bMean = 0;
        foreach (double x in xs) bMean += x;
        bMean /= xs.Length;
        double bM2 = 0;
        foreach (double x in xs) bM2 += (x - bMean) * (x - bMean);

        long n = count, nb = xs.Length, total = n + nb;
        double delta = bMean - mean;
        mean += delta * nb / total;
        m2 += bM2 + delta * delta * n * nb / total;
        count = total;
    }

    /// <summary>State for checkpoints; <c>new RunningMoments(State)</c> restores it exactly.</summary>
    public RunningMomentsState State => new(count, mean, m2);
}
