using Rlhf.Training.Sft;

namespace Rlhf.Training.Tests.Sft;

public sealed class LrScheduleTests
{
    [Fact]
    public void CosineWithoutWarmupGoesFromPeakToFloor()
    {
        // 5 steps, peak 1, floor 0.1: p = 0, .25, .5, .75, 1 -> 0.1 + 0.45(1 + cos(pi p))
        double[] expected = [1.0, 0.1 + 0.45 * (1 + Math.Sqrt(0.5)), 0.55, 0.1 + 0.45 * (1 - Math.Sqrt(0.5)), 0.1];
        for (int s = 0; s < 5; s++)
            Assert.Equal(expected[s], LrSchedule.At(s, 5, 1.0, LrDecay.Cosine, 0, 0.1), 12);
    }

    [Fact]
    public void WarmupIsLinearThenLinearDecay()
    {
        // warm-up 2 of 6 steps: 0.5, 1.0; then p = 0, 1/3, 2/3, 1 -> 1 - p
        double[] expected = [0.5, 1.0, 1.0, 2.0 / 3, 1.0 / 3, 0.0];
        for (int s = 0; s < 6; s++)
            Assert.Equal(expected[s], LrSchedule.At(s, 6, 1.0, LrDecay.Linear, 2, 0.0), 12);
    }

    [Fact]
    public void ConstantStaysAtPeak() => Assert.Equal(3e-4, LrSchedule.At(7, 10, 3e-4, LrDecay.Constant));
}
