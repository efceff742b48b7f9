namespace Rlhf.Inference.Rollout;

/// <summary>
/// Per-request random numbers: xoshiro256** (Blackman &amp; Vigna 2018) seeded through SplitMix64. Written out here
/// (not <see cref="System.Random"/>) so a seed gives the same stream on every .NET version and machine. Each request
/// owns one instance, so its tokens do not depend on which other requests share the batch. Not thread-safe.
/// Its SplitMix64 step is the project's one copy, also behind the seed derivations (<see cref="Mix"/>, <see cref="Derive"/>)
/// and the default task's data stream (Rlhf.Training.Common.SplitMixRandom).
/// </summary>
public sealed class Rng
{
    ulong _s0, _s1, _s2, _s3;

    /// <summary>Stream <paramref name="stream"/> of seed <paramref name="seed"/> (use the stream for the n-th sample
    /// of one prompt, so several responses per prompt are independent yet reproducible).</summary>
    public Rng(ulong seed, ulong stream = 0)
    {
        ulong x = seed ^ (stream * 0xD1B54A32D192ED03UL);
        if (stream != 0) SplitMix64(ref x);
        _s0 = SplitMix64(ref x);
        _s1 = SplitMix64(ref x);
        _s2 = SplitMix64(ref x);
        _s3 = SplitMix64(ref x);
    }

    /// <summary>SplitMix64 step (Steele, Lea &amp; Flood 2014): advances <paramref name="x"/> and returns a mixed value.</summary>
    public static ulong SplitMix64(ref ulong x)
    {
        ulong z = x += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>One SplitMix64 output for state <paramref name="x"/>: mix(x + γ), a bijective hash of a 64-bit seed.</summary>
    public static ulong Mix(ulong x) => SplitMix64(ref x);

    /// <summary>A seed for an independent stream named <paramref name="name"/> derived from <paramref name="seed"/>
    /// (FNV-1a of the name mixed through SplitMix64), e.g. one per data split.</summary>
    public static ulong Derive(ulong seed, string name)
    {
        ulong h = 0xCBF29CE484222325UL;
        foreach (char c in name)
        {
            h ^= c;
            h *= 0x100000001B3UL;
        }
        return Mix(seed ^ Mix(h));
    }

    /// <summary>Next 64 random bits (xoshiro256**).</summary>
    public ulong NextUInt64()
    {
        ulong result = ulong.RotateLeft(_s1 * 5, 7) * 9;
        ulong t = _s1 << 17;
        _s2 ^= _s0;
        _s3 ^= _s1;
        _s1 ^= _s2;
        _s0 ^= _s3;
        _s2 ^= t;
        _s3 = ulong.RotateLeft(_s3, 45);
        return result;
    }

    /// <summary>Uniform double in [0, 1) from the top 53 bits.</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));
}
