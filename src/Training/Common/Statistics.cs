namespace Rlhf.Training.Common;

/// <summary>Summary statistics of plain samples.</summary>
public static class Statistics
{
    /// <summary>Mean and sample standard deviation.</summary>
    public static (double Mean, double Std) MeanStd(IReadOnlyCollection<double> xs)
    {
        if (xs.Count == 0) return (double.NaN, double.NaN);
        double mean = xs.Average();
        double std = Math.Sqrt(xs.Sum(x => (x - mean) * (x - mean)) / Math.Max(1, xs.Count - 1));
        return (mean, std);
    }
}
