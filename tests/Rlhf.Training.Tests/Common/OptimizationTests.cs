using Rlhf.Training.Common;
using Rlhf.Training.Tests.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Common;

/// <summary>The optimizer and gradient clipping every trainer uses, against the update rules written out by hand.</summary>
public sealed class OptimizationTests
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
        using var opt = Optimization.AdamW(m, new AdamWSettings(Lr, Wd, 0.9, 0.999, Eps));
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
        using var opt = Optimization.AdamW(m, new AdamWSettings(Lr, Wd, 0.9, 0.95, Eps));
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
        Assert.Equal(norm, Optimization.ClipGradNorm(m, 0), 3);                        // 0 = measure only
        Assert.All(m.parameters(), p => Assert.Equal(0.5f, p.grad!.max().item<float>()));

        Assert.Equal(norm, Optimization.ClipGradNorm(m, norm * 2), 3);                 // under the limit: unchanged
        Assert.All(m.parameters(), p => Assert.Equal(0.5f, p.grad!.min().item<float>(), 6));

        Assert.Equal(norm, Optimization.ClipGradNorm(m, 1.0), 3);                      // over: scaled by 1 / norm
        float scaled = (float)(0.5 / norm);
        foreach (var p in m.parameters())
        {
            Assert.Equal(scaled, p.grad!.max().item<float>(), 6);
            Assert.Equal(scaled, p.grad!.min().item<float>(), 6);
        }
        Assert.Equal(1.0, Optimization.ClipGradNorm(m, 0), 4);                         // the clipped global norm is the limit
    }

    [Fact]
    public void ClearingGradientsTrainsBitForBitLikeZeroFillingThem()
    {
        // Three AdamW steps, each over two accumulated micro-batches with clipping, once with TorchSharp's zero_grad
        // (zero-filled gradients, backward adds into them) and once with ClearGrads (gradients dropped, backward stores).
        using var scope = NewDisposeScope();
        var runs = new List<Dictionary<string, Tensor>>();
        foreach (bool clear in new[] { false, true })
        {
            using var m = TinyModels.Randomized(TinyModels.Config(tied: true), 8);
            m.train();
            using var opt = Optimization.AdamW(m, new AdamWSettings(1e-2, 0.1, 0.9, 0.95, 1e-8));
            for (int step = 0; step < 3; step++)
            {
                if (clear)
                {
                    Optimization.ClearGrads(opt);
                    Assert.All(m.parameters(), p => Assert.Null(p.grad));
                }
                else opt.zero_grad();
                for (int micro = 0; micro < 2; micro++)
                {
                    torch.manual_seed(100 * step + micro);                                    // the same dropout masks both runs
                    var ids = TinyModels.Ids([3 + step, 17, 42 + micro, 5, 9], [8, 4 + micro, 33, 21, 7]);
                    var mask = torch.ones_like(ids);
                    var targets = torch.cat([ids[.., 1..], torch.full([2, 1], Rlhf.Training.Sft.SftBatch.Ignore, ScalarType.Int64)], 1);
                    using var loss = Rlhf.Training.Sft.SftLoss.SummedNll(m.Forward(ids, mask, Rlhf.Training.Model.PositionIds.FromAttentionMask(mask)), targets);
                    loss.backward();
                }
                Optimization.ClipGradNorm(m, 1.0);
                opt.step();
            }
            runs.Add(Snapshot(m));
        }
        Assert.All(runs[0], kv => Assert.True(TinyModels.Same(kv.Value, runs[1][kv.Key]), $"{kv.Key} differs"));
        using var initial = TinyModels.Randomized(TinyModels.Config(tied: true), 8);
        Assert.All(Snapshot(initial), kv => Assert.True(TinyModels.MaxAbsDiff(kv.Value, runs[0][kv.Key]) > 1e-5f, $"{kv.Key} did not move"));
    }
}
