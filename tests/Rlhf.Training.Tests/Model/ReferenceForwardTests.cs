using Rlhf.Export.Hf;
using Rlhf.Training.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Model;

/// <summary>The TorchSharp forward against an independent plain-loop implementation of one Llama layer.</summary>
public sealed class ReferenceForwardTests
{
    [Theory]
    [InlineData("llama", false, false)]
    [InlineData("llama", true, true)]
    [InlineData("qwen2", false, true)]
    [InlineData("llama3", false, false)]
    [InlineData("linear", false, true)]
    [InlineData("mistral_window", false, false)]
    [InlineData("head_dim", true, false)]
    public void OneLayerMatchesPlainLoops(string type, bool attentionBias, bool tied)
    {
        var cfg = TinyModels.Config(type, tied: tied, layers: 1, attentionBias: attentionBias);
        var m = TinyModels.Randomized(cfg, 7);
        long[] ids = [3, 17, 42, 5, 9, 11, 0];
        var expected = Reference(cfg, m.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.data<float>().ToArray()), ids);
        var actual = TinyModels.RowLogits(m, ids).data<float>().ToArray();
        float max = 0;
        for (int i = 0; i < expected.Length; i++) max = Math.Max(max, Math.Abs(expected[i] - actual[i]));
        Assert.True(max < 1e-4, $"max abs diff {max}");
    }

    /// <summary>A window shorter than the sequence changes the logits (the check above is not vacuous).</summary>
    [Fact]
    public void AWindowShorterThanTheSequenceBites()
    {
        var cfg = TinyModels.Config("mistral_window", layers: 1);
        var m = TinyModels.Randomized(cfg, 7);
        long[] ids = [3, 17, 42, 5, 9, 11, 0];
        var w = m.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.data<float>().ToArray());
        var windowed = Reference(cfg, w, ids);
        var full = Reference(cfg with { SlidingWindow = null }, w, ids);
        int V = cfg.VocabSize;
        Assert.Equal(windowed.AsSpan(0, 5 * V).ToArray(), full.AsSpan(0, 5 * V).ToArray());   // positions 0..4 see everything anyway
        Assert.NotEqual(windowed[5 * V], full[5 * V]);
    }

    static float[] Reference(ModelConfig c, Dictionary<string, float[]> w, long[] ids)
    {
        int S = ids.Length, H = c.HiddenSize, V = c.VocabSize, nh = c.NumAttentionHeads, nkv = c.NumKeyValueHeads, D = c.HeadDim, I = c.IntermediateSize;
        const string p = "model.layers.0.";
        var x = new float[S][];
        for (int s = 0; s < S; s++) x[s] = w["model.embed_tokens.weight"].AsSpan((int)ids[s] * H, H).ToArray();

        var q = new float[S][];
        var k = new float[S][];
        var v = new float[S][];
        for (int s = 0; s < S; s++)
        {
            var r = RmsNorm(x[s], w[p + "input_layernorm.weight"], c.RmsNormEps);
            q[s] = Linear(r, w[p + "self_attn.q_proj.weight"], w.GetValueOrDefault(p + "self_attn.q_proj.bias"), nh * D);
            k[s] = Linear(r, w[p + "self_attn.k_proj.weight"], w.GetValueOrDefault(p + "self_attn.k_proj.bias"), nkv * D);
            v[s] = Linear(r, w[p + "self_attn.v_proj.weight"], w.GetValueOrDefault(p + "self_attn.v_proj.bias"), nkv * D);
            for (int h = 0; h < nh; h++) RotateHalf(q[s], h * D, D, s, c);
            for (int h = 0; h < nkv; h++) RotateHalf(k[s], h * D, D, s, c);
        }
        // HF sliding window: query s sees key j only when s − j < W.
        int from(int s) => c.SlidingWindow is int W && c.FirstSlidingLayer == 0 ? Math.Max(0, s - W + 1) : 0;
        for (int s = 0; s < S; s++)
        {
            var attn = new float[nh * D];
            for (int h = 0; h < nh; h++)
            {
                int g = h / (nh / nkv);
                var scores = new double[s + 1];
                double mx = double.NegativeInfinity;
                for (int j = from(s); j <= s; j++)
                {
                    double dot = 0;
                    for (int d = 0; d < D; d++) dot += q[s][h * D + d] * k[j][g * D + d];
                    scores[j] = dot / Math.Sqrt(D);
                    mx = Math.Max(mx, scores[j]);
                }
                double sum = 0;
                for (int j = from(s); j <= s; j++) { scores[j] = Math.Exp(scores[j] - mx); sum += scores[j]; }
                for (int d = 0; d < D; d++)
                {
                    double acc = 0;
                    for (int j = from(s); j <= s; j++) acc += scores[j] / sum * v[j][g * D + d];
                    attn[h * D + d] = (float)acc;
                }
            }
            var o = Linear(attn, w[p + "self_attn.o_proj.weight"], w.GetValueOrDefault(p + "self_attn.o_proj.bias"), H);
            for (int i = 0; i < H; i++) x[s][i] += o[i];
        }
        var logits = new float[S * V];
        for (int s = 0; s < S; s++)
        {
            var r = RmsNorm(x[s], w[p + "post_attention_layernorm.weight"], c.RmsNormEps);
            var gate = Linear(r, w[p + "mlp.gate_proj.weight"], null, I);
            var up = Linear(r, w[p + "mlp.up_proj.weight"], null, I);
            var act = new float[I];
            for (int i = 0; i < I; i++) act[i] = (float)(gate[i] / (1 + Math.Exp(-gate[i])) * up[i]);
            var down = Linear(act, w[p + "mlp.down_proj.weight"], null, H);
            for (int i = 0; i < H; i++) x[s][i] += down[i];
            var n = RmsNorm(x[s], w["model.norm.weight"], c.RmsNormEps);
            var l = Linear(n, c.TieWordEmbeddings ? w["model.embed_tokens.weight"] : w["lm_head.weight"], null, V);
            l.CopyTo(logits, s * V);
        }
        return logits;
    }

    static float[] RmsNorm(float[] x, float[] weight, double eps)
    {
        double ms = 0;
        foreach (var a in x) ms += a * a;
        ms /= x.Length;
        double inv = 1 / Math.Sqrt(ms + eps);
        return x.Select((a, i) => (float)(a * inv * weight[i])).ToArray();
    }

    /// <summary>
    /// θ^(−2i/D); linear: divided by the factor; llama3: by wavelength 2π/f against the original context L —
    /// short (&lt; L/high) kept, long (&gt; L/low) divided by the factor, between: linear blend in L/λ.
    /// </summary>
    static double Frequency(ModelConfig c, int i, int d)
    {
        double f = Math.Exp(-2.0 * i / d * Math.Log(c.RopeTheta));
        if (c.RopeScaling is not { } r) return f;
        if (r.Type == RopeScalingType.Linear) return f / r.Factor;
        double ratio = r.OriginalMaxPositionEmbeddings * f / (2 * Math.PI);     // L / λ
        if (ratio > r.HighFreqFactor) return f;
        if (ratio < r.LowFreqFactor) return f / r.Factor;
        double t = (ratio - r.LowFreqFactor) / (r.HighFreqFactor - r.LowFreqFactor);
        return f / r.Factor + t * (f - f / r.Factor);
    }

    /// <summary>y = W x + b, W [outDim, inDim] row-major.</summary>
    static float[] Linear(float[] x, float[] weight, float[]? bias, int outDim)
    {
        var y = new float[outDim];
        for (int o = 0; o < outDim; o++)
        {
            double acc = bias?[o] ?? 0;
            for (int i = 0; i < x.Length; i++) acc += weight[o * x.Length + i] * x[i];
            y[o] = (float)acc;
        }
        return y;
    }

    /// <summary>HF rotate-half RoPE on v[off .. off+D) at position pos, with the config's rope_scaling.</summary>
    static void RotateHalf(float[] v, int off, int d, int pos, ModelConfig c)
    {
        int half = d / 2;
        for (int i = 0; i < half; i++)
        {
            double angle = pos * Frequency(c, i, d);
            double a = v[off + i], b = v[off + i + half];
            v[off + i] = (float)(a * Math.Cos(angle) - b * Math.Sin(angle));
            v[off + i + half] = (float)(b * Math.Cos(angle) + a * Math.Sin(angle));
        }
    }
}
