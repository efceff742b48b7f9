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
        RolloutBenchCommand.RunRollout([("tiny-test", TinyModels.Config())], [1, 2], newTokens: 4, promptLen: 4, threads: 1, torchToo: true, w);
        string text = w.ToString();
        Assert.Contains("ORT MatMul peak", text);
        Assert.Contains("ORT/torch", text);
        Assert.Contains("weight sync: in-memory", text);
        Assert.Contains("padding, plain graph (batch 2", text);
        Assert.Contains("peak RSS", text);
        Assert.Equal(2, text.Split('\n').Count(l => l.TrimStart().StartsWith("1 |", StringComparison.Ordinal) || l.TrimStart().StartsWith("2 |", StringComparison.Ordinal)));
    }
}
