using Rlhf.Training.Common;

namespace Rlhf.Training.RewardModel;

/// <summary>
/// Reward normalisation r' = gain·r + bias, chosen so the SFT model's samples score mean 0 (and std 1 when asked):
/// InstructGPT normalises its RM so that "the labeler demonstrations achieve a mean score of 0"; we measure on what PPO
/// will actually sample from, the SFT policy. <see cref="Source"/> records which responses were measured.
/// </summary>
/// <param name="Gain">g = 1/σ (or 1 without std normalisation)</param>
/// <param name="Bias">b = −μ·g</param>
/// <param name="RawMean">μ, mean raw score of the measured responses</param>
/// <param name="RawStd">σ, their standard deviation</param>
/// <param name="Source">the responses μ and σ were measured on (null in files written before it was recorded)</param>
public sealed record RewardNormalization(double Gain, double Bias, double RawMean, double RawStd, string? Source = null)
{
    /// <summary>File name next to the RM weights.</summary>
    public const string FileName = "reward_normalization.json";

    /// <summary>gain = 1/σ (or 1), bias = −μ·gain, over <paramref name="raw"/> scores of the responses <paramref name="source"/> names.</summary>
    public static RewardNormalization From(IReadOnlyCollection<double> raw, bool unitStd, string? source = null)
    {
        var (mean, std) = Statistics.MeanStd(raw);
        double gain = unitStd && std > 1e-12 ? 1.0 / std : 1.0;
        return new RewardNormalization(gain, -mean * gain, mean, std, source);
    }

    /// <summary>The normalised reward.</summary>
    public double Apply(double raw) => Gain * raw + Bias;
}
