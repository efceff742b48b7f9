using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>
/// The one place where logits meet the sampling temperature. Rollouts are sampled from softmax(z / T), so the old and
/// reference log-probabilities, the ratio's new log-probabilities and the entropy are all taken of z / T as well
/// (TRL and OpenRLHF divide the same way); every caller goes through <see cref="Scale"/>.
/// </summary>
public static class Temperature
{
    /// <summary>
    /// z' = z / T, computed in float32 for float16/bfloat16 logits (so tempering adds no half-precision rounding).
    /// T = 1 returns the logits unchanged (as a new handle on the same data for float32).
    /// </summary>
    /// <param name="logits">z [..., V]</param>
    /// <param name="temperature">T &gt; 0 (greedy decoding, T = 0, never reaches here: it takes the argmax of z)</param>
    public static Tensor Scale(Tensor logits, double temperature)
    {
        if (!(temperature > 0) || double.IsPositiveInfinity(temperature))
            throw new ArgumentOutOfRangeException(nameof(temperature), temperature, "temperature must be a finite number > 0");
        var z = logits.dtype is ScalarType.Float16 or ScalarType.BFloat16 ? logits.to_type(ScalarType.Float32) : logits;
        return temperature == 1.0 ? z.alias() : z / temperature;
    }
}
