using Rlhf.Export.Hf;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Export.Tests.Onnx;

/// <summary>
/// Test oracle: the Hugging Face Llama forward (eager attention, fp32) written out plainly with TorchSharp ops on
/// the HF-layout weights ([out, in]), over a whole sequence without a cache. Rotary angles and the attention mask
/// are computed with plain loops, including rope_scaling (linear, llama3) and sliding windows (from the config's
/// fields, with this file's own arithmetic). Independent of the graph code under test.
/// </summary>
static class ReferenceLlama
{
    /// <summary>Final-normed hidden states [B, S, H].</summary>
    public static Tensor Hidden(ModelConfig cfg, IReadOnlyDictionary<string, Tensor> w, long[,] ids, long[,] mask, long[,] pos)
    {
        int B = ids.GetLength(0), S = ids.GetLength(1), H = cfg.HiddenSize;
        int nH = cfg.NumAttentionHeads, nKv = cfg.NumKeyValueHeads, D = cfg.HeadDim, G = nH / nKv;

        var idsT = tensor(Flatten(ids), [B, S]);
        var x = w["model.embed_tokens.weight"].index_select(0, idsT.reshape(-1)).reshape(B, S, H);

        // RoPE tables [B, 1, S, D]: angle = pos · f_i, f_i = θ^(−2i/D) rescaled, the same angle for i and i + D/2.
        var cos = new float[B * S * D];
        var sin = new float[B * S * D];
        for (int b = 0; b < B; b++)
            for (int s = 0; s < S; s++)
                for (int i = 0; i < D; i++)
                {
                    float invFreq = (float)InverseFrequency(cfg, i % (D / 2));
                    float angle = pos[b, s] * invFreq;
                    cos[(b * S + s) * D + i] = (float)Math.Cos(angle);
                    sin[(b * S + s) * D + i] = (float)Math.Sin(angle);
                }
        var cosT = tensor(cos, [B, 1, S, D]);
        var sinT = tensor(sin, [B, 1, S, D]);

        // Additive masks [B, 1, S, S]: query j may see key k iff k ≤ j and mask[b, k] == 1; in sliding layers also
        // pos[b, j] − pos[b, k] < W (HF: key masked when i − j ≥ sliding_window).
        Tensor Mask(int? window)
        {
            var m = new float[B * S * S];
            for (int b = 0; b < B; b++)
                for (int j = 0; j < S; j++)
                    for (int k = 0; k < S; k++)
                    {
                        bool inWindow = window is not int W || pos[b, j] - pos[b, k] < W;
                        m[(b * S + j) * S + k] = k <= j && mask[b, k] == 1 && inWindow ? 0f : float.MinValue;
                    }
            return tensor(m, [B, 1, S, S]);
        }
        var fullMask = Mask(null);
        var windowMask = cfg.SlidingWindow is int sw ? Mask(sw) : fullMask;

        for (int l = 0; l < cfg.NumHiddenLayers; l++)
        {
            string p = $"model.layers.{l}.";
            var maskT = cfg.SlidingWindow is not null && l >= cfg.FirstSlidingLayer ? windowMask : fullMask;
            var h = RmsNorm(x, w[p + "input_layernorm.weight"], cfg.RmsNormEps);
            var q = Linear(h, w, p + "self_attn.q_proj").view(B, S, nH, D).transpose(1, 2);
            var k = Linear(h, w, p + "self_attn.k_proj").view(B, S, nKv, D).transpose(1, 2);
            var v = Linear(h, w, p + "self_attn.v_proj").view(B, S, nKv, D).transpose(1, 2);
            q = q * cosT + RotateHalf(q) * sinT;
            k = k * cosT + RotateHalf(k) * sinT;
            k = k.repeat_interleave(G, 1);
            v = v.repeat_interleave(G, 1);
            var scores = q.matmul(k.transpose(2, 3)) * (1.0 / Math.Sqrt(D)) + maskT;
            var ctx = scores.softmax(-1).matmul(v).transpose(1, 2).reshape(B, S, nH * D);
            x = x + Linear(ctx, w, p + "self_attn.o_proj");
            h = RmsNorm(x, w[p + "post_attention_layernorm.weight"], cfg.RmsNormEps);
            var act = nn.functional.silu(Linear(h, w, p + "mlp.gate_proj")) * Linear(h, w, p + "mlp.up_proj");
            x = x + Linear(act, w, p + "mlp.down_proj");
        }
        return RmsNorm(x, w["model.norm.weight"], cfg.RmsNormEps);
    }

    /// <summary>Logits [B, S, V].</summary>
    public static Tensor Logits(ModelConfig cfg, IReadOnlyDictionary<string, Tensor> w, long[,] ids, long[,] mask, long[,] pos)
    {
        var head = cfg.TieWordEmbeddings ? w["model.embed_tokens.weight"] : w["lm_head.weight"];
        return Hidden(cfg, w, ids, mask, pos).matmul(head.t());
    }

    /// <summary>Values [B, S] of the scalar head.</summary>
    public static Tensor Values(ModelConfig cfg, IReadOnlyDictionary<string, Tensor> w, long[,] ids, long[,] mask, long[,] pos)
    {
        var v = Hidden(cfg, w, ids, mask, pos).matmul(w["score.weight"].t());
        if (w.TryGetValue("score.bias", out var bias)) v = v + bias;
        return v.squeeze(-1);
    }

    /// <summary>
    /// f_i = θ^(−2i/D), then rope_scaling: linear f/s; llama3 (Llama 3.1 paper code / HF): wavelength λ = 2π/f, kept when
    /// λ &lt; L/high, f/s when λ &gt; L/low, else blended with t = (L/λ − low)/(high − low): (1 − t)·f/s + t·f.
    /// </summary>
    public static double InverseFrequency(ModelConfig cfg, int i)
    {
        double f = Math.Pow(cfg.RopeTheta, -2.0 * i / cfg.HeadDim);
        var r = cfg.RopeScaling;
        if (r is null) return f;
        if (r.Type == RopeScalingType.Linear) return f / r.Factor;
        double lambda = 2 * Math.PI / f, L = r.OriginalMaxPositionEmbeddings;
        if (lambda < L / r.HighFreqFactor) return f;
        if (lambda > L / r.LowFreqFactor) return f / r.Factor;
        double t = (L / lambda - r.LowFreqFactor) / (r.HighFreqFactor - r.LowFreqFactor);
        return (1 - t) * (f / r.Factor) + t * f;
    }

    static Tensor RmsNorm(Tensor x, Tensor weight, double eps) =>
        weight * (x * rsqrt(x.pow(2).mean([-1L], keepdim: true) + eps));

    static Tensor Linear(Tensor x, IReadOnlyDictionary<string, Tensor> w, string name) =>
        w.TryGetValue(name + ".bias", out var bias) ? x.matmul(w[name + ".weight"].t()) + bias : x.matmul(w[name + ".weight"].t());

    static Tensor RotateHalf(Tensor x)
    {
        long half = x.shape[^1] / 2;
        return cat([-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);
    }

    public static long[] Flatten(long[,] a)
    {
        var r = new long[a.Length];
        int n = 0;
        foreach (long v in a) r[n++] = v;
        return r;
    }
}
