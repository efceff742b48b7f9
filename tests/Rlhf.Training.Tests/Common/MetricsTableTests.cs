using Rlhf.Training.Common;

namespace Rlhf.Training.Tests.Common;

public sealed class MetricsTableTests
{
    [Fact]
    public void CsvRoundTripKeepsValuesAndGaps()
    {
        var t = new MetricsTable();
        t.Add(new Dictionary<string, double> { ["step"] = 1, ["loss/train"] = 0.1 + 0.2 });
        t.Add(new Dictionary<string, double> { ["step"] = 2, ["loss/train"] = 1e-300, ["loss/eval"] = 2.5 });
        string dir = Directory.CreateTempSubdirectory().FullName;
        string path = Path.Combine(dir, "m.csv");
        t.WriteCsv(path);
        Assert.Equal("step,loss/train,loss/eval", File.ReadLines(path).First());
        var back = MetricsTable.ReadCsv(path);
        Assert.Equal(2, back.Rows.Count);
        Assert.Equal(0.1 + 0.2, back.Rows[0]["loss/train"]);
        Assert.False(back.Rows[0].ContainsKey("loss/eval"));
        var (x, y) = back.Series("step", "loss/eval");
        Assert.Equal([2.0], x);
        Assert.Equal([2.5], y);
        Assert.Single(Directory.GetFiles(dir));   // no temp file left behind
    }

    [Fact]
    public void PlotIsAPng()
    {
        string path = Path.Combine(Directory.CreateTempSubdirectory().FullName, "loss.png");
        Plots.Lines(path, "t", "x", "y", [("a", [1.0, 2, 3], [3.0, 2, 1])]);
        byte[] head = File.ReadAllBytes(path)[..4];
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, head);
    }
}
