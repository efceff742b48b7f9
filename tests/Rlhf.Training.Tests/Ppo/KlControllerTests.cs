using Rlhf.Training.Ppo;

namespace Rlhf.Training.Tests.Ppo;

public sealed class KlControllerTests
{
    [Fact]
    public void AdaptiveUpdateMatchesZieglerByHand()
    {
        var c = new AdaptiveKlController(initBeta: 0.1, target: 6, horizon: 10_000);
        // KL 9: e = clip(9/6 − 1 = 0.5, ±0.2) = 0.2; β = 0.1·(1 + 0.2·256/10000) = 0.1·1.00512 = 0.100512
        c.Update(9, 256);
        Assert.Equal(0.100512, c.Beta, 12);
        // KL 5.7: e = 5.7/6 − 1 = −0.05; β = 0.100512·(1 − 0.05·256/10000) = 0.100512·0.99872 = 0.100383344640
        c.Update(5.7, 256);
        Assert.Equal(0.10038334464, c.Beta, 12);
        // KL 0: e = clip(−1) = −0.2; β ·= 1 − 0.2·10000/10000 = 0.8
        c.Update(0, 10_000);
        Assert.Equal(0.10038334464 * 0.8, c.Beta, 12);
    }

    [Fact]
    public void FixedNeverMovesAndStateRoundTrips()
    {
        KlController f = new FixedKlController(0.02);
        f.Update(100, 512);
        Assert.Equal(0.02, f.Beta);

        var a = new AdaptiveKlController(0.2, 3, 1000);
        a.Update(4, 64);
        var json = System.Text.Json.JsonSerializer.Serialize(a.State);
        var b = new AdaptiveKlController(0.2, 3, 1000);
        b.Restore(System.Text.Json.JsonSerializer.Deserialize<KlControllerState>(json)!);
        Assert.Equal(a.State, b.State);
        a.Update(1, 64); b.Update(1, 64);
        Assert.Equal(a.Beta, b.Beta);
        Assert.Throws<ArgumentOutOfRangeException>(() => new AdaptiveKlController(0.1, 0, 1000));
    }
}
