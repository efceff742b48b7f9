using Rlhf.Training.Cli;
using Rlhf.Training.Tests.Model;

namespace Rlhf.Training.Tests.Rollout;

/// <summary>Smoke run of <c>rlhf bench rollout</c> on a tiny config.</summary>
public sealed class RolloutBenchTests
{
    [Fact]
    public void PrintsTheSideBySideTable()
    {
        var w = new StringWriter();
        var figures = new Dictionary<string, double>();
        RolloutBenchCommand.RunRollout([("tiny-test", TinyModels.Config())], [1, 2], newTokens: 4, promptLen: 4, threads: 1, torchToo: true, w, figures: figures);
        string text = w.ToString();
        Assert.Contains("ORT MatMul peak", text);
        Assert.Contains("ORT/torch", text);
        Assert.Contains("weight sync: in-memory", text);
        Assert.Contains("padding, plain graph (batch 2", text);
        Assert.Contains("peak RSS", text);
        Assert.Contains("engines (generated tokens/s", text);
        Assert.Contains("weight sync: GenAI fed", text);
        foreach (string engine in new[] { "ort", "genai" })
            foreach (string mode in new[] { "greedy", "sample" })
                foreach (int b in new[] { 1, 2 })
                    Assert.True(figures[$"tokens_per_s.{engine}.{mode}.{b}"] > 0, $"{engine}.{mode}.{b}");
        Assert.True(figures["tokens_per_s.genai_inputs.sample.2"] > 0);
        Assert.True(figures["sync_seconds.ort"] > 0 && figures["sync_seconds.genai"] > 0 && figures["sync_seconds.genai_rebuild"] > 0);
        Assert.Equal(4, text.Split('\n').Count(l => l.TrimStart().StartsWith("1 |", StringComparison.Ordinal) || l.TrimStart().StartsWith("2 |", StringComparison.Ordinal)));   // both tables
    }
}
