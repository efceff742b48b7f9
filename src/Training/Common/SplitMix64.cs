namespace Rlhf.Training.Common;

/// <summary>
/// SplitMix64 (Steele, Lea, Flood 2014): a tiny seeded generator whose sequence is fixed by its definition,
/// unlike System.Random's, so data orders and generated data stay reproducible across .NET versions.
/// </summary>
public sealed class SplitMix64(ulong seed)
{
    ulong _state = seed;

    /// <summary>Next 64 random bits: z = (s += 0x9E3779B97F4A7C15); z = (z ^ z≫30)·0xBF58476D1CE4E5B9; z = (z ^ z≫27)·0x94D049BB133111EB; z ^ z≫31.</summary>
    public ulong Next()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform double in [0, 1) from the top 53 bits.</summary>
    public double NextDouble() => (Next() >> 11) * (1.0 / (1UL << 53));

    /// <summary>Uniform integer in [0, n).</summary>
    public int NextInt(int n) => (int)(Next() % (ulong)n);
}
