namespace Rlhf.Training.Common;

/// <summary>SplitMix64 (Steele, Lea, Flood 2014; the seeding generator of xoshiro) as a stream of data-generation
/// draws, not System.Random, so data and data orders are the same on every .NET version and machine. The step itself is
/// <see cref="Inference.Rollout.Rng.SplitMix64"/>, the project's one copy (the rollout engine seeds xoshiro256** with it;
/// seeds of streams come from <see cref="Inference.Rollout.Rng.Derive"/> and <see cref="Inference.Rollout.Rng.Mix"/>).</summary>
public sealed class SplitMixRandom
{
    ulong _state;

    public SplitMixRandom(ulong seed) => _state = seed;

    /// <summary>Next 64 bits: x ← x + γ, return mix(x).</summary>
    public ulong NextU64() => Inference.Rollout.Rng.SplitMix64(ref _state);

    /// <summary>Uniform in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => (NextU64() >> 11) * (1.0 / (1UL << 53));

    /// <summary>Uniform integer in [0, n) (Lemire's multiply-shift; bias below 2^-32 for the n used here).</summary>
    public int Next(int n)
    {
        if (n <= 0) throw new ArgumentOutOfRangeException(nameof(n), n, "n must be positive");
        return (int)(((NextU64() >> 32) * (ulong)n) >> 32);
    }

    /// <summary>Uniform integer in [lo, hi] inclusive.</summary>
    public int Between(int lo, int hi) => lo + Next(hi - lo + 1);

    public bool Chance(double p) => NextDouble() < p;

    public T Pick<T>(IReadOnlyList<T> items) => items[Next(items.Count)];

    /// <summary>Standard normal by Box–Muller (one of the pair; simple and reproducible).</summary>
    public double NextGaussian()
    {
        double u1 = 1.0 - NextDouble(); // (0, 1]
        double u2 = NextDouble();
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2);
    }

    /// <summary>Fisher–Yates permutation of 0..n−1 from a generator seeded with <paramref name="seed"/> (stable across .NET
    /// versions): the data order of SFT, RM, DPO and PPO minibatches, PPO prompt passes and ptx batches.</summary>
    public static int[] Permutation(int n, long seed)
    {
        int[] p = Enumerable.Range(0, n).ToArray();
        var rng = new SplitMixRandom((ulong)seed);
        for (int i = n - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (p[i], p[j]) = (p[j], p[i]);
        }
        return p;
    }
}
