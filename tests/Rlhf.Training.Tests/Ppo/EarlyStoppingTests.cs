using Rlhf.Training.Common;
using Rlhf.Training.Ppo;
using Rlhf.Training.Tests.Common;

namespace Rlhf.Training.Tests.Ppo;

/// <summary>The plateau rule by hand, and PPO runs that stop on it (and stay stopped when resumed).</summary>
public sealed class EarlyStoppingTests
{
    [Theory]
    // patience 2, δ 0.05: the last two must not beat the best before them (1.00) by more than 0.05
    [InlineData(new[] { 0.2, 1.0, 1.04, 1.05 }, 2, 0.05, true)]    // 1.05 ≤ 1.00 + 0.05
    [InlineData(new[] { 0.2, 1.0, 1.04, 1.06 }, 2, 0.05, false)]   // 1.06 > 1.05: still improving
    [InlineData(new[] { 0.2, 1.0, 0.5, 0.9 }, 2, 0.05, true)]      // both worse than the best before them
    [InlineData(new[] { 1.0, 0.5, 0.9 }, 2, 0.05, true)]           // the best may be the first
    [InlineData(new[] { 1.0, 0.5 }, 2, 0.05, false)]               // n ≤ P: too early to tell
    [InlineData(new[] { 1.0, 0.5, 0.4 }, 0, 0.05, false)]          // P = 0: never
    [InlineData(new[] { 1.0, 1.0 }, 1, 0.0, true)]                 // no gain at δ = 0
    [InlineData(new[] { 1.0, 1.0000001 }, 1, 0.0, false)]          // any gain at δ = 0
    public void StopsWhenTheLastPatienceEvaluationsDoNotBeatTheBestBefore(double[] v, int patience, double minDelta, bool stop) =>
        Assert.Equal(stop, EarlyStopping.Plateaued(v, patience, minDelta));

    [Fact]
    public void PpoStopsAtThePlateauWithACheckpointAndAResumedRunStaysStopped()
    {
        // every iteration evaluated; a gain of 100 RM-score units is never reached, so the second evaluation stops the run
        var a = PpoTrainerTests.Tiny() with { Iterations = 6, EvalEvery = 1, CheckpointEvery = 4, EarlyStopPatience = 1, EarlyStopMinDelta = 100, BestOfN = [1] };
        var s = PpoTrainer.Train(a, new RunControl { Progress = false });
        Assert.Equal(2, s.Iterations);
        var m = MetricsTable.ReadCsv(Path.Combine(a.Out, "metrics.csv"));
        Assert.Equal([1.0, 2.0], m.Rows.Select(r => r["iteration"]));
        Assert.Equal(2, System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(a.Out, "checkpoint", "trainer_state.json")))!["iteration"]!.GetValue<int>());

        // killed after iteration 1 and resumed: the same stop, the same weights
        var b = a with { Out = Path.Combine(Directory.CreateTempSubdirectory().FullName, "ppo") };
        StopAfter.Step(1, c => PpoTrainer.Train(b, c));
        Assert.Equal(2, PpoTrainer.Train(b, new RunControl { Progress = false, Resume = true }).Iterations);
        Assert.Equal(File.ReadAllBytes(Path.Combine(a.Out, "model.safetensors")), File.ReadAllBytes(Path.Combine(b.Out, "model.safetensors")));

        // resumed from the checkpoint written at the stop: no further iteration
        File.Delete(Path.Combine(b.Out, "summary.json"));
        Assert.Equal(2, PpoTrainer.Train(b, new RunControl { Progress = false, Resume = true }).Iterations);
        Assert.Equal(File.ReadAllBytes(Path.Combine(a.Out, "model.safetensors")), File.ReadAllBytes(Path.Combine(b.Out, "model.safetensors")));

        // off (patience 0): every iteration runs
        Assert.Equal(6, PpoTrainer.Train(a with { Out = Path.Combine(Directory.CreateTempSubdirectory().FullName, "ppo"), EarlyStopPatience = 0 },
                                         new RunControl { Progress = false }).Iterations);
    }
}
