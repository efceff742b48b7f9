namespace Rlhf.Training.Ppo;

/// <summary>
/// Which minibatches of an epoch share an optimizer step. With n minibatches accumulated g at a time the groups are
/// [0, g), [g, 2g), …, and, when g does not divide n, a shorter last group [g·⌊n/g⌋, n): the epoch's last minibatches
/// still get their step instead of being back-propagated and then zeroed. Each minibatch's loss is divided by its
/// group's size, so every step applies the mean gradient of the minibatches it accumulated.
/// </summary>
public static class GradAccumulation
{
    /// <summary>True when the optimizer steps after minibatch <paramref name="m"/> (0-based) of <paramref name="n"/>: (m + 1) mod g = 0, or m = n − 1.</summary>
    public static bool StepsAfter(int m, int n, int g)
    {
        Check(m, n, g);
        return (m + 1) % g == 0 || m == n - 1;
    }

    /// <summary>Minibatches in the group of <paramref name="m"/>: min(g, n − g·⌊m/g⌋).</summary>
    public static int GroupSize(int m, int n, int g)
    {
        Check(m, n, g);
        return Math.Min(g, n - m / g * g);
    }

    static void Check(int m, int n, int g)
    {
        if (g < 1 || n < 1 || m < 0 || m >= n)
            throw new ArgumentOutOfRangeException(nameof(m), $"need 0 ≤ m < n and g ≥ 1; got m={m}, n={n}, g={g}");
    }
}
