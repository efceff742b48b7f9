using Rlhf.Training.Model;
using Rlhf.Training.Sft;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Model;

/// <summary>bf16 mixed precision: what runs in bfloat16, what stays float32, and how far bf16 moves the numbers.</summary>
public sealed class MixedPrecisionTests
{
    /// <summary>Round-to-nearest-even of a float32 to bfloat16 (the top 16 bits), written out on the bits.</summary>
    static float RoundBf16(float x)
    {
        uint bits = BitConverter.SingleToUInt32Bits(x);
        uint lsb = (bits >> 16) & 1;
        bits = (bits + 0x7FFF + lsb) & 0xFFFF0000;
        return BitConverter.UInt32BitsToSingle(bits);
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public void Projections_fused_into_one_product_give_each_layers_output_and_gradients(bool bias, bool bf16)
    {
        // the fused q/k/v and gate/up products against the layers one at a time: the same outputs side by side, and each
        // weight's and bias's own gradient (in float32) from a loss that weighs every output differently
        using var scope = NewDisposeScope();
        torch.manual_seed(5);
        Linear[] layers = [nn.Linear(32, 24, hasBias: bias), nn.Linear(32, 8, hasBias: bias), nn.Linear(32, 8, hasBias: bias)];
        var x = torch.randn(2, 3, 32);
        var weigh = torch.randn(2, 3, 40);
        ScalarType? compute = bf16 ? ScalarType.BFloat16 : null;

        var fused = MixedPrecision.FusedLinear(layers, x, compute);
        Assert.Equal(new long[] { 2, 3, 40 }, fused.shape);
        (fused.to(ScalarType.Float32) * weigh).sum().backward();
        var fusedGrads = layers.SelectMany(l => new[] { l.weight!.grad!.clone() }.Concat(bias ? [l.bias!.grad!.clone()] : [])).ToArray();
        foreach (var l in layers) l.zero_grad();

        var separate = torch.cat([.. layers.Select(l => MixedPrecision.Linear(l, x, compute))], -1);
        (separate.to(ScalarType.Float32) * weigh).sum().backward();
        var separateGrads = layers.SelectMany(l => new[] { l.weight!.grad! }.Concat(bias ? [l.bias!.grad!] : [])).ToArray();

        // float32: the same sums in another order; bf16: each output rounded to bfloat16 (8 bits), so one unit in its last place
        double outTol = bf16 ? 1e-2 : 1e-5, gradTol = bf16 ? 1e-2 : 1e-5;
        float outDiff = (fused.to(ScalarType.Float32) - separate.to(ScalarType.Float32)).abs().max().item<float>();
        Assert.True(outDiff <= outTol, $"outputs differ by {outDiff}");
        for (int i = 0; i < fusedGrads.Length; i++)
        {
            Assert.Equal(ScalarType.Float32, fusedGrads[i].dtype);
            float d = (fusedGrads[i] - separateGrads[i]).abs().max().item<float>();
            Assert.True(d <= gradTol * Math.Max(1, separateGrads[i].abs().max().item<float>()), $"gradient {i} differs by {d}");
        }
    }

    [Fact]
    public void A_bf16_linear_is_the_product_of_bf16_rounded_operands_rounded_to_bf16_plus_the_rounded_bias_rounded_again()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(11);
        var layer = nn.Linear(64, 48, hasBias: true);
        using (torch.no_grad()) layer.bias!.normal_(0, 0.5);
        var x = torch.randn(3, 5, 64);
        var y = MixedPrecision.Linear(layer, x, ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, y.dtype);
        Assert.Equal(new long[] { 3, 5, 48 }, y.shape);

        float[] xs = x.data<float>().ToArray(), w = layer.weight!.data<float>().ToArray(), b = layer.bias!.data<float>().ToArray();
        float[] got = y.to(ScalarType.Float32).data<float>().ToArray();
        int rows = 15, n = 48, k = 64, misses = 0;
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < n; j++)
            {
                double acc = 0;   // independent: double accumulation of bf16-rounded operands; libtorch rounds x·Wᵀ, then adds the bias
                for (int i = 0; i < k; i++) acc += (double)RoundBf16(xs[r * k + i]) * RoundBf16(w[j * k + i]);
                float expected = RoundBf16(RoundBf16((float)acc) + RoundBf16(b[j]));
                float actual = got[r * n + j];
                // one bf16 ulp (2^-7 relative) covers a different accumulation order before the final rounding
                if (Math.Abs(actual - expected) > Math.Abs(expected) * (1.0 / 128) + 1e-6) misses++;
            }
        Assert.True(misses == 0, $"{misses} of {rows * n} outside one ulp");
        // and it is not the float32 product: bf16 rounding is visible
        var fp32 = layer.forward(x);
        Assert.True((fp32 - y.to(ScalarType.Float32)).abs().max().item<float>() > 1e-4f);
    }

    [Fact]
    public void Bf16_forward_returns_float32_logits_close_to_the_fp32_forward()
    {
        using var scope = NewDisposeScope();
        foreach (bool tied in new[] { false, true })
        {
            using var m = TinyModels.Randomized(TinyModels.Config(tied: tied), 5);
            long[] ids = [3, 17, 42, 5, 9, 11, 4, 8];
            var lp32 = TinyModels.RowLogits(m, ids).log_softmax(-1);
            m.Precision = Precision.Bf16;
            var logits16 = TinyModels.RowLogits(m, ids);
            Assert.Equal(ScalarType.Float32, logits16.dtype);
            var lp16 = logits16.log_softmax(-1);
            float maxDiff = (lp32 - lp16).abs().max().item<float>();
            float spread = lp32.abs().max().item<float>();
            // bf16 keeps 8 significant bits: differences of a few 1e-2 nats on log-probs of this size, never 0
            Assert.True(maxDiff > 1e-4f, $"tied={tied}: bf16 changed nothing ({maxDiff})");
            Assert.True(maxDiff < 0.02f * (1 + spread), $"tied={tied}: max |Δ log p| {maxDiff} for log-probs up to {spread}");
            Assert.All(m.parameters(), p => Assert.Equal(ScalarType.Float32, p.dtype));
        }
    }

    [Fact]
    public void Bf16_gradients_reach_the_float32_weights_and_point_where_fp32_gradients_point()
    {
        using var scope = NewDisposeScope();
        var grads = new List<Tensor>();
        foreach (var precision in new[] { Precision.Fp32, Precision.Bf16 })
        {
            using var m = TinyModels.Randomized(TinyModels.Config(), 9);
            m.Precision = precision;
            var ids = TinyModels.Ids([3, 17, 42, 5, 9, 11], [8, 4, 33, 21, 7, 2]);
            var mask = torch.ones_like(ids);
            var targets = torch.cat([ids[.., 1..], torch.full([2, 1], SftBatch.Ignore, ScalarType.Int64)], 1);
            SftLoss.SummedNll(m.Forward(ids, mask, PositionIds.FromAttentionMask(mask)), targets).backward();
            Assert.All(m.parameters(), p => Assert.Equal(ScalarType.Float32, p.grad!.dtype));
            grads.Add(torch.cat(m.parameters().Select(p => p.grad!.flatten()).ToList(), 0).detach().clone());
        }
        double cos = (grads[0] * grads[1]).sum().item<float>() / (grads[0].norm().item<float>() * grads[1].norm().item<float>());
        Assert.True(cos > 0.99, $"cosine(fp32 grad, bf16 grad) = {cos}");
        Assert.True((grads[0] - grads[1]).abs().max().item<float>() > 0, "bf16 gradients equal fp32 ones: nothing ran in bf16");
    }

    /// <summary>auto reads /proc/cpuinfo's flags lines: avx512_bf16 or amx_bf16 (whole words) mean native bfloat16.</summary>
    [Fact]
    public void AutoPrecisionReadsTheCpuFlags()
    {
        const string epyc = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu vme avx512f avx512_bf16 avx512_vnni\n\nprocessor\t: 1\n";
        const string sapphire = "flags\t\t: fpu avx512f amx_tile amx_bf16 amx_int8\n";
        const string avx2 = "flags\t\t: fpu vme avx2 fma avx512f avx512_vnni\nbugs\t\t: avx512_bf16_fake\n";   // not a flags line, not the word
        Assert.True(MixedPrecision.CpuFlagsHaveBf16(epyc));
        Assert.True(MixedPrecision.CpuFlagsHaveBf16(sapphire));
        Assert.False(MixedPrecision.CpuFlagsHaveBf16(avx2));
        Assert.False(MixedPrecision.CpuFlagsHaveBf16(""));
        Assert.Equal(Precision.Fp32, Precision.Fp32.Resolve(CPU));   // explicit settings are kept
        Assert.Equal(Precision.Bf16, Precision.Bf16.Resolve(CPU));
        Assert.NotEqual(Precision.Auto, Precision.Auto.Resolve(CPU));
    }
}
