namespace Rlhf.Training.Ppo;

/// <summary>Best-of-N sampling (rejection sampling against the reward model), the baseline PPO is compared with.</summary>
public static class BestOfN
{
    /// <summary>
    /// KL(π_N ‖ π) = log N − (N − 1)/N of the best-of-N policy to the sampling policy (Stiennon et al. 2020, app. G;
    /// exact in the limit of many distinct outcomes, an upper bound otherwise).
    /// </summary>
    public static double Kl(int n) => n >= 1 ? Math.Log(n) - (n - 1.0) / n : throw new ArgumentOutOfRangeException(nameof(n), n, "N must be ≥ 1");

    /// <summary>
    /// For each of <paramref name="prompts"/> prompts i, the index of the highest score among its first
    /// <paramref name="n"/> samples k·P + i (k &lt; n; samples are laid out sample-major); ties keep the earliest.
    /// </summary>
    /// <param name="scores">one score per sample, at least n·P of them</param>
    public static int[] Pick(IReadOnlyList<float> scores, int prompts, int n)
    {
        if (prompts < 1 || n < 1 || scores.Count < n * prompts)
            throw new ArgumentException($"{scores.Count} scores cannot hold {n} samples of {prompts} prompts.", nameof(scores));
        var best = new int[prompts];
        for (int i = 0; i < prompts; i++)
        {
            best[i] = i;
            for (int k = 1; k < n; k++)
                if (scores[k * prompts + i] > scores[best[i]]) best[i] = k * prompts + i;
        }
        return best;
    }
}
