using Rlhf.Export.Hf;

namespace Rlhf.Export.Tests.Hf;

/// <summary><see cref="RopeFrequencies.Inverse"/> against values computed by hand (python3, double precision).</summary>
public sealed class RopeFrequenciesTests
{
    static readonly RopeScaling Llama32 = new() { Type = RopeScalingType.Llama3, Factor = 32, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 8192 };

    /// <summary>
    /// θ = 500000, D = 64, llama3 factor 32, low 1, high 4, original 8192 (Llama 3.2): λ_i = 2π·θ^(2i/32). i = 14
    /// (λ 1956.5 &lt; 2048) is kept; i = 15, 16, 17 (λ 2948, 4443, 6695) are blended with smooth 0.592849, 0.281283,
    /// 0.074527; i ≥ 18 (λ 10089 &gt; 8192) are divided by 32.
    /// </summary>
    [Theory]
    [InlineData(0, 1.0)]
    [InlineData(14, 0.0032114459947525913)]
    [InlineData(15, 0.001290547928209264)]
    [InlineData(16, 0.00042955679655936815)]
    [InlineData(17, 9.70828780262767e-05)]
    [InlineData(18, 1.9461638184831125e-05)]
    [InlineData(31, 9.418306725434909e-08)]
    public void Llama3MatchesHandComputedValues(int i, double expected)
    {
        float[] inv = RopeFrequencies.Inverse(64, 500000, Llama32);
        Assert.Equal(32, inv.Length);
        Assert.Equal(expected, inv[i], expected * 1e-6);
    }

    [Fact]
    public void LinearDividesEveryFrequencyAndPlainIsThetaPower()
    {
        float[] plain = RopeFrequencies.Inverse(8, 10000, null);
        Assert.Equal([1f, 0.1f, 0.01f, 0.001f], plain);
        float[] linear = RopeFrequencies.Inverse(8, 10000, new RopeScaling { Type = RopeScalingType.Linear, Factor = 4 });
        Assert.Equal([0.25f, 0.025f, 0.0025f, 0.00025f], linear);
    }
}
