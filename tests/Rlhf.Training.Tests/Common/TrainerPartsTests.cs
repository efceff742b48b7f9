using Rlhf.Training.Common;
using Rlhf.Training.Tests.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Common;

/// <summary>The optimizer and gradient clipping every trainer uses, against the update rules written out by hand.</summary>
public sealed class TrainerPartsTests
{
    /// <summary>Sets every parameter's gradient to <paramref name="value"/>(name, parameter).</summary>
    static void SetGrads(nn.Module m, Func<string, Tensor, Tensor> value)
    {
        foreach (var (_, p) in m.named_parameters()) p.grad = null;
        using (var loss = m.parameters().Select(p => p.sum() * 0).Aggregate((a, b) => a + b)) loss.backward();   // creates the grads
        using var noGrad = torch.no_grad();
        foreach (var (name, p) in m.named_parameters()) p.grad!.copy_(value(name, p));
    }

    static Dictionary<string, Tensor> Snapshot(nn.Module m) =>
        m.named_parameters().ToDictionary(x => x.name, x => x.parameter.detach().clone());

    [Fact]
    public void AdamWDecaysMatricesOnlyAndTakesTheHandComputedFirstStep()
    {
        // qwen2 has q/k/v biases; attention_bias adds none. Norm weights and biases are 1-D, the rest 2-D.
        using var m = TinyModels.Randomized(TinyModels.Config("qwen2"), 4);
        m.train();
        const double Lr = 0.1, Wd = 0.5, Eps = 1e-8;
        using var opt = TrainerParts.AdamW(m, new AdamWSettings(Lr, Wd, 0.9, 0.999, Eps));
        var before = Snapshot(m);
        var names = before.Keys.ToList();
        Assert.Contains(names, n => n.EndsWith(".bias", StringComparison.Ordinal));
        Assert.Contains(names, n => n.EndsWith("norm.weight", StringComparison.Ordinal));

        // Step 1 with zero gradients: Adam's part is 0, so only decoupled decay moves a weight: p <- p (1 - lr·wd).
        SetGrads(m, (_, p) => torch.zeros_like(p));
        opt.step();
        foreach (var (name, p) in m.named_parameters())
        {
            bool decayed = !(name.EndsWith(".bias", StringComparison.Ordinal) || name.EndsWith("norm.weight", StringComparison.Ordinal));
            var expected = decayed ? before[name] * (1 - Lr * Wd) : before[name];
            Assert.True(TinyModels.MaxAbsDiff(expected, p) < 1e-7f, $"{name}: {(decayed ? "decayed" : "not decayed")} expected");
        }
    }

    [Fact]
    public void AdamWFirstStepWithAGradientIsSignLikeAndDecoupled()
    {
        // A fresh optimizer's first step: m̂ = g, v̂ = g², so p <- p (1 - lr·wd) - lr · g / (|g| + eps).
        using var m = TinyModels.Randomized(TinyModels.Config("qwen2"), 5);
        const double Lr = 0.01, Wd = 0.1, Eps = 1e-8;
        using var opt = TrainerParts.AdamW(m, new AdamWSettings(Lr, Wd, 0.9, 0.95, Eps));
        var before = Snapshot(m);
        SetGrads(m, (_, p) => torch.randn_like(p) * 3);
        var grads = m.named_parameters().ToDictionary(x => x.name, x => x.parameter.grad!.clone());
        opt.step();
        foreach (var (name, p) in m.named_parameters())
        {
            double wd = name.EndsWith(".bias", StringComparison.Ordinal) || name.EndsWith("norm.weight", StringComparison.Ordinal) ? 0 : Wd;
            var g = grads[name];
            var expected = before[name] * (1 - Lr * wd) - Lr * g / (g.abs() + Eps);
            Assert.True(TinyModels.MaxAbsDiff(expected, p) < 1e-6f, name);
        }
    }

    [Fact]
    public void ClipGradNormScalesToTheLimitAndReturnsTheNormBefore()
    {
        using var m = TinyModels.Randomized(TinyModels.Config(), 6);
        long n = m.parameters().Sum(p => p.numel());
        // every gradient element 0.5: global L2 norm = 0.5 · sqrt(n)
        double norm = 0.5 * Math.Sqrt(n);

        SetGrads(m, (_, p) => torch.full_like(p, 0.5));
        Assert.Equal(norm, TrainerParts.ClipGradNorm(m, 0), 3);                        // 0 = measure only
        Assert.All(m.parameters(), p => Assert.Equal(0.5f, p.grad!.max().item<float>()));

        Assert.Equal(norm, TrainerParts.ClipGradNorm(m, norm * 2), 3);                 // under the limit: unchanged
        Assert.All(m.parameters(), p => Assert.Equal(0.5f, p.grad!.min().item<float>(), 6));

        Assert.Equal(norm, TrainerParts.ClipGradNorm(m, 1.0), 3);                      // over: scaled by 1 / norm
        float scaled = (float)(0.5 / norm);
        foreach (var p in m.parameters())
        {
            Assert.Equal(scaled, p.grad!.max().item<float>(), 6);
            Assert.Equal(scaled, p.grad!.min().item<float>(), 6);
        }
        Assert.Equal(1.0, TrainerParts.ClipGradNorm(m, 0), 4);                         // the clipped global norm is the limit
    }
}
