using ScottPlot;
using Rlhf.Export;

namespace Rlhf.Training.Common;

/// <summary>PNG charts of metric curves (ScottPlot), written atomically.</summary>
public static class Plots
{
    /// <summary>One line per (label, x, y) series on shared axes.</summary>
    public static void Lines(string path, string title, string xLabel, string yLabel,
                             IEnumerable<(string Label, double[] X, double[] Y)> series, int width = 900, int height = 500)
    {
        var plt = new Plot();
        bool any = false;
        foreach (var (label, x, y) in series)
        {
            if (x.Length == 0) continue;
            var s = plt.Add.Scatter(x, y);
            s.LegendText = label;
            s.MarkerSize = x.Length > 50 ? 0 : 4;
            s.LineWidth = 2;
            any = true;
        }
        plt.Title(title);
        plt.XLabel(xLabel);
        plt.YLabel(yLabel);
        if (any) plt.ShowLegend(Alignment.UpperRight);
        AtomicFile.Write(path, tmp => plt.SavePng(tmp, width, height));
    }

    /// <summary>Panels side by side in one PNG (ScottPlot's <see cref="Multiplot"/> in columns), written atomically.</summary>
    public static void SideBySide(string path, int width, int height, Plot first, params Plot[] more)
    {
        var multiplot = new Multiplot(first);
        foreach (var p in more) multiplot.AddPlot(p);
        multiplot.Layout = new ScottPlot.MultiplotLayouts.Columns();
        AtomicFile.Write(path, tmp => multiplot.SavePng(tmp, width, height));
    }

    /// <summary>Puts <paramref name="plt"/>'s legend below its data, in rows that wrap tightly, so it covers nothing.</summary>
    public static void LegendBelow(Plot plt)
    {
        plt.ShowLegend(Edge.Bottom);
        plt.Legend.Orientation = Orientation.Horizontal;
        plt.Legend.TightHorizontalWrapping = true;
    }

    /// <summary>Overlaid histograms of several samples (e.g. gold scores), with <paramref name="bins"/> bins over their joint range.</summary>
    public static void Histograms(string path, string title, string xLabel,
                                  IEnumerable<(string Label, double[] Values)> samples, int bins = 30, int width = 900, int height = 500)
    {
        var list = samples.Where(s => s.Values.Length > 0).ToList();
        var plt = new Plot();
        if (list.Count > 0)
        {
            double lo = list.Min(s => s.Values.Min()), hi = list.Max(s => s.Values.Max());
            if (hi <= lo) hi = lo + 1;
            double w = (hi - lo) / bins;
            foreach (var (label, values) in list)
            {
                double[] counts = new double[bins];
                foreach (double v in values) counts[Math.Min(bins - 1, (int)((v - lo) / w))]++;
                double[] centers = Enumerable.Range(0, bins).Select(i => lo + (i + 0.5) * w).ToArray();
                var bars = plt.Add.Bars(centers, counts);
                foreach (var b in bars.Bars) { b.Size = w * 0.9; }
                bars.LegendText = label;
                var color = bars.Bars.First().FillColor.WithAlpha(0.55);
                foreach (var b in bars.Bars) b.FillColor = color;
            }
            plt.ShowLegend(Alignment.UpperLeft);
        }
        plt.Title(title);
        plt.XLabel(xLabel);
        plt.YLabel("count");
        AtomicFile.Write(path, tmp => plt.SavePng(tmp, width, height));
    }

    /// <summary>(label, x, y = column) for <see cref="Plots.Lines"/>; x is the <paramref name="xColumn"/> column.</summary>
    public static (string, double[], double[]) Series(string label, MetricsTable m, string column, string xColumn = "step")
    {
        var (x, y) = m.Series(xColumn, column);
        return (label, x, y);
    }
}
