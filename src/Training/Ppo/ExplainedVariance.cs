using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Ppo;

/// <summary>How much of the returns' variance the critic explains (cleanrl/TRL <c>val/explained_variance</c>).</summary>
public static class ExplainedVariance
{
    /// <summary>
    /// ev = 1 − Var(R − V)/Var(R) over valid tokens (unbiased masked variances, so the n/(n − 1) factors cancel):
    /// 1 = perfect critic, 0 = no better than a constant, &lt; 0 = worse. NaN when Var(R) = 0 or fewer than two
    /// tokens are valid (a metric, so it never throws on data).
    /// </summary>
    /// <param name="values">V(s_t) [B, A]</param>
    /// <param name="returns">R_t [B, A]</param>
    /// <param name="mask">1 = response token, 0 = padding [B, A]</param>
    public static double Compute(Tensor values, Tensor returns, Tensor mask)
    {
        Shapes.BA(values, nameof(values), (returns, nameof(returns)), (mask, nameof(mask)));
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        if (mask.ne(0).sum().ToInt64() < 2) return double.NaN;
        double varR = Masked.Var(returns, mask).ToDouble();
        double varRes = Masked.Var(returns - values, mask).ToDouble();
        return varR == 0 ? double.NaN : 1 - varRes / varR;
    }
}
