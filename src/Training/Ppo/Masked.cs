using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>
/// Statistics over the valid (mask = 1) positions of a tensor, as TRL's <c>masked_mean/masked_var/masked_whiten</c>.
/// Invalid positions never contribute, even when they hold NaN or ±Inf (they are filled with 0 before any arithmetic,
/// so their gradient is exactly 0). <c>mask</c> is a float 0/1 tensor with the shape of <c>x</c> (usually [B, A]).
/// </summary>
public static class Masked
{
    /// <summary>Σ_{mask=1} x, over all elements or along <paramref name="dim"/>.</summary>
    /// <param name="x">values [B, A] (any shape)</param>
    /// <param name="mask">1 = valid, 0 = padding; shape of x</param>
    public static Tensor Sum(Tensor x, Tensor mask, long? dim = null)
    {
        Shapes.Same(mask, x, nameof(mask), nameof(x));
        var filled = Fill(x, mask);
        return dim is long d ? filled.sum(d) : filled.sum();
    }

    /// <summary>Σ_{mask=1} x / Σ mask (TRL <c>masked_mean</c>), over all elements or along <paramref name="dim"/>.</summary>
    /// <param name="x">values [B, A] (any shape)</param>
    /// <param name="mask">1 = valid, 0 = padding; shape of x</param>
    public static Tensor Mean(Tensor x, Tensor mask, long? dim = null)
    {
        Shapes.Same(mask, x, nameof(mask), nameof(x));
        var filled = Fill(x, mask);
        return dim is long d ? filled.sum(d) / mask.sum(d) : filled.sum() / mask.sum();
    }

    /// <summary>
    /// Variance over valid elements (TRL <c>masked_var</c>): μ = Mean(x), v = Mean((x − μ)²), and with
    /// <paramref name="unbiased"/> Bessel's correction v·n/(n − 1), n = Σ mask. Scalar.
    /// </summary>
    /// <param name="x">values [B, A] (any shape)</param>
    /// <param name="mask">1 = valid, 0 = padding; shape of x</param>
    public static Tensor Var(Tensor x, Tensor mask, bool unbiased = true)
    {
        Shapes.Same(mask, x, nameof(mask), nameof(x));
        double n = mask.sum().ToDouble();
        if (n == 0) throw new ArgumentException("mask has no valid positions; the variance is undefined", nameof(mask));
        if (unbiased && n < 2) throw new ArgumentException("the unbiased variance needs at least 2 valid positions", nameof(mask));
        var mu = Mean(x, mask);
        var v = Mean((x - mu).square(), mask);
        return unbiased ? v * (n / (n - 1)) : v;
    }

    /// <summary>
    /// Whitening over valid tokens (TRL <c>masked_whiten</c>): x̂ = (x − μ)/√(σ² + 1e-8) with μ, σ² the masked mean and
    /// unbiased variance; with <paramref name="shiftMean"/> = false the mean is added back (only the scale changes,
    /// as TRL does for rewards). Invalid positions are 0 in the result. Used on advantages (Schulman et al. 2017 baselines).
    /// </summary>
    /// <param name="x">values [B, A] (any shape)</param>
    /// <param name="mask">1 = valid, 0 = padding; shape of x</param>
    public static Tensor Whiten(Tensor x, Tensor mask, bool shiftMean = true)
    {
        Shapes.Same(mask, x, nameof(mask), nameof(x));
        var mu = Mean(x, mask);
        var v = Var(x, mask, unbiased: true);
        var w = (x - mu) * (v + 1e-8).rsqrt();
        if (!shiftMean) w = w + mu;
        return Fill(w, mask);
    }

    /// <summary>x where mask ≠ 0, else 0 (NaN-safe, unlike x·mask).</summary>
    internal static Tensor Fill(Tensor x, Tensor mask)
    {
        // The zero Scalar is held by `using` until the native calls return: an implicit temporary Scalar can be finalized
        // by the GC while libtorch still reads it (seen once in a full test run: masked_fill failing in Scalar::toFloat).
        using var zero = 0f.ToScalar();
        using var padding = mask.eq(zero);
        return x.masked_fill(padding, zero);
    }
}
