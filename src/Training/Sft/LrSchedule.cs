namespace Rlhf.Training.Sft;

/// <summary>Learning-rate decay shape after warm-up.</summary>
public enum LrDecay
{
    /// <summary>η_t = η_min + ½(η_max − η_min)(1 + cos(π·p)), p = progress in [0, 1].</summary>
    Cosine,
    /// <summary>η_t = η_max − (η_max − η_min)·p.</summary>
    Linear,
    /// <summary>η_t = η_max.</summary>
    Constant,
}

/// <summary>Learning-rate schedules (pure functions of the step).</summary>
public static class LrSchedule
{
    /// <summary>
    /// Learning rate for optimizer step <paramref name="step"/> (0-based) of <paramref name="totalSteps"/>:
    /// linear warm-up η_max·(step+1)/warmup for step &lt; warmup, then <paramref name="decay"/> from η_max down to
    /// η_min = <paramref name="minRatio"/>·η_max at the last step, with p = (step − warmup)/(total − warmup − 1).
    /// InstructGPT's SFT used cosine decay with no warm-up.
    /// </summary>
    public static double At(int step, int totalSteps, double maxLr, LrDecay decay, int warmupSteps = 0, double minRatio = 0.0)
    {
        if (totalSteps <= 0) throw new ArgumentOutOfRangeException(nameof(totalSteps));
        if (step < warmupSteps) return maxLr * (step + 1) / warmupSteps;
        double minLr = maxLr * minRatio;
        int span = totalSteps - warmupSteps - 1;
        double p = span <= 0 ? 1.0 : Math.Clamp((step - warmupSteps) / (double)span, 0.0, 1.0);
        return decay switch
        {
            LrDecay.Cosine => minLr + 0.5 * (maxLr - minLr) * (1 + Math.Cos(Math.PI * p)),
            LrDecay.Linear => maxLr - (maxLr - minLr) * p,
            LrDecay.Constant => maxLr,
            _ => throw new ArgumentOutOfRangeException(nameof(decay)),
        };
    }
}
