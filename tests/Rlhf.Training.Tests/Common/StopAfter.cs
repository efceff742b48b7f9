using Rlhf.Training.Common;

namespace Rlhf.Training.Tests.Common;

/// <summary>Stops a stage at a step boundary through its cancellation token, as a cancel request (or a kill right after the checkpoint) would.</summary>
internal static class StopAfter
{
    /// <summary>Runs <paramref name="run"/> with a control that cancels after step <paramref name="step"/>; the stage must stop there.</summary>
    public static void Step(int step, Action<RunControl> run)
    {
        using var cts = new CancellationTokenSource();
        var control = new RunControl { Progress = false, Cancel = cts.Token, OnStep = e => { if (e.Step == step) cts.Cancel(); } };
        var e = Assert.Throws<StageCancelledException>(() => run(control));
        Assert.Equal(step, e.Step);
    }
}
