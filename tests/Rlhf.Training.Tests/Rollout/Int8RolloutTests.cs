using Rlhf.Export;
using Rlhf.Export.Hf;
using Rlhf.Inference.Rollout;
using Rlhf.Training.Model;
using Rlhf.Training.OnnxExport;
using Rlhf.Training.Tests.Export;
using Rlhf.Training.Tests.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Rollout;

/// <summary>Weight-only int8 rollout graphs: what they compute, and that weight updates reach the folded int8 weights.</summary>
public sealed class Int8RolloutTests
{

    static string Export(LlamaForCausalLM m, RolloutPrecision precision)
    {
        string dir = ExportModels.TempPath("int8");
        ExportStage.ExportPolicy(m, dir, GraphKind.ContribGqa, new ExportOptions { Overwrite = true, Precision = precision }, parity: false);
        return dir;
    }

    /// <summary>
    /// The model with every projection replaced by its per-column int8 reconstruction s_n·round(W_kn / s_n),
    /// s_n = max_k |W_kn| / 127 (W as stored, [in, out]): what the int8 graph's weights mean, computed here independently.
    /// </summary>
    static void FakeQuantise(LlamaForCausalLM m)
    {
        using var noGrad = torch.no_grad();
        foreach (var (name, p) in m.named_parameters())
        {
            bool projection = name.EndsWith("_proj.weight", StringComparison.Ordinal) || name == "lm_head.weight" ||
                              (name == "model.embed_tokens.weight" && m.Config.TieWordEmbeddings);
            if (!projection) continue;
            // torch layout [out, in]: a column of the stored [in, out] matrix is a row here
            float[] w = p.data<float>().ToArray();
            long rows = p.shape[0], cols = p.shape[1];
            for (long r = 0; r < rows; r++)
            {
                float max = 0;
                for (long c = 0; c < cols; c++) max = Math.Max(max, Math.Abs(w[r * cols + c]));
                float s = Math.Max(max, 1e-12f) / 127f;
                for (long c = 0; c < cols; c++) w[r * cols + c] = MathF.Round(w[r * cols + c] / s, MidpointRounding.ToEven) * s;
            }
            p.copy_(torch.tensor(w, p.shape));
        }
    }

    static float MaxLogSoftmaxDiff(float[] a, float[] b, int v)
    {
        using var ta = torch.tensor(a).view(-1, v).log_softmax(-1);
        using var tb = torch.tensor(b).view(-1, v).log_softmax(-1);
        return (ta - tb).abs().max().item<float>();
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Int8LogitsFollowTheInt8WeightsAndStayCloseToFloat32(bool tied)
    {
        var cfg = ExportModels.Config(tied ? "tied" : "llama");   // head_dim 16: the GroupQueryAttention graph
        using var m = TinyModels.Randomized(cfg, 3);
        string fp = Export(m, RolloutPrecision.Fp32), q = Export(m, RolloutPrecision.Int8);
        try
        {
            Assert.Contains("\"precision\": \"int8\"", File.ReadAllText(Path.Combine(q, ExportManifest.FileName)));
            int[] ids = [1, 7, 3, 22, 41, 9, 12, 5];
            using var e32 = RolloutEngine.Load(fp, new RolloutEngineOptions { Threads = 1 });
            using var e8 = RolloutEngine.Load(q, new RolloutEngineOptions { Threads = 1 });
            float[] l32 = e32.Logits(ids), l8 = e8.Logits(ids);
            using var fake = TinyModels.Randomized(cfg, 3);
            FakeQuantise(fake);
            float[] lFake = TinyModels.RowLogits(fake, [.. ids.Select(x => (long)x)]).contiguous().data<float>().ToArray();

            float toFp32 = MaxLogSoftmaxDiff(l8, l32, cfg.VocabSize), toFake = MaxLogSoftmaxDiff(l8, lFake, cfg.VocabSize);
            Assert.True(toFp32 > 1e-3f, $"int8 logits equal float32 ones ({toFp32}): nothing was quantised");
            // this model's weights are N(0, 0.2²) everywhere (large activations): a bound for the run-time uint8 activations
            Assert.True(toFp32 < 0.5f, $"int8 moved log-probs by {toFp32}");
            Assert.True(toFake < 0.5f, $"int8 vs per-column fake-quantised weights: {toFake}");
        }
        finally
        {
            Directory.Delete(fp, true);
            Directory.Delete(q, true);
        }
    }

    [Fact]
    public void WeightUpdatesReachTheInt8Weights()
    {
        var cfg = ExportModels.Config("llama");
        using var a = TinyModels.Randomized(cfg, 3);
        using var b = TinyModels.Randomized(cfg, 4);
        string qa = Export(a, RolloutPrecision.Int8), qb = Export(b, RolloutPrecision.Int8);
        try
        {
            int[] ids = [1, 7, 3, 22, 41, 9];
            using var engine = RolloutEngine.Load(qa, new RolloutEngineOptions { Threads = 1 });
            using var fresh = RolloutEngine.Load(qb, new RolloutEngineOptions { Threads = 1 });
            float[] before = engine.Logits(ids);
            var w = OrtWeights.From(b, packedQkv: true, int8: true);
            Assert.Contains(w.Buffers.Values, x => x.Element == WeightElement.Int8 && x.Name == "model.layers.0.self_attn.qkv_proj.weight_int8");
            engine.UpdateWeights(w.Buffers, w);
            float[] after = engine.Logits(ids), expected = fresh.Logits(ids);
            Assert.True(before.Zip(expected).Max(p => Math.Abs(p.First - p.Second)) > 1e-2f);
            Assert.True(after.Zip(expected).Max(p => Math.Abs(p.First - p.Second)) <= 1e-5f, "the update did not reach the int8 weights");
        }
        finally
        {
            Directory.Delete(qa, true);
            Directory.Delete(qb, true);
        }
    }

    /// <summary>DynamicQuantizeLinear of x (ONNX spec): uint8 with the range widened to include 0, round half to even.</summary>
    static (byte[] Q, float Scale, byte Zero) QuantizeActivations(float[] x)
    {
        float lo = Math.Min(0f, x.Min()), hi = Math.Max(0f, x.Max());
        float scale = (hi - lo) / 255f;
        byte zero = (byte)Math.Clamp(MathF.Round(-lo / scale, MidpointRounding.ToEven), 0, 255);
        return ([.. x.Select(v => (byte)Math.Clamp(MathF.Round(v / scale, MidpointRounding.ToEven) + zero, 0, 255))], scale, zero);
    }

    [Fact]
    public void TheInt8ProductIsTheIntegerProductOfQuantisedActivationsAndWeightsRescaled()
    {
        const int m = 3, k = 40, n = 24;
        torch.manual_seed(5);
        using var weight = torch.randn(n, k) * 0.3;            // HF layout [out, in]
        using var xt = torch.randn(m, k) * 2 + 0.5;
        var b = new Rlhf.Export.Onnx.GraphBuilder("int8_matmul");
        string x = b.Input("x", Rlhf.Export.Onnx.Proto.TensorProto.Types.DataType.Float, m, k);
        Rlhf.Export.Onnx.Int8MatMul.Add(b, x, "proj.weight", weight, "y");
        b.Output("y", Rlhf.Export.Onnx.Proto.TensorProto.Types.DataType.Float, m, n);
        string dir = ExportModels.TempPath("int8op");
        try
        {
            b.Save(dir, "op.onnx");
            float[] xs = xt.data<float>().ToArray(), w = weight.data<float>().ToArray();
            using var session = new Microsoft.ML.OnnxRuntime.InferenceSession(Path.Combine(dir, "op.onnx"));
            using var input = Microsoft.ML.OnnxRuntime.OrtValue.CreateTensorValueFromMemory(xs, [m, k]);
            using var outputs = session.Run(new Microsoft.ML.OnnxRuntime.RunOptions(), ["x"], [input], ["y"]);
            float[] y = outputs[0].GetTensorDataAsSpan<float>().ToArray();

            var (xq, xScale, xZero) = QuantizeActivations(xs);
            for (int j = 0; j < n; j++)
            {
                float max = 0;
                for (int i = 0; i < k; i++) max = Math.Max(max, Math.Abs(w[j * k + i]));
                float s = max / 127f;
                for (int r = 0; r < m; r++)
                {
                    long acc = 0;
                    for (int i = 0; i < k; i++)
                        acc += (xq[r * k + i] - xZero) * (long)Math.Clamp(MathF.Round(w[j * k + i] / s, MidpointRounding.ToEven), -127, 127);
                    double expected = acc * (double)xScale * s;
                    Assert.True(Math.Abs(y[r * n + j] - expected) <= 1e-4 * (1 + Math.Abs(expected)), $"y[{r},{j}] = {y[r * n + j]}, expected {expected}");
                }
            }
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void Int8NeedsTheGroupQueryAttentionGraph()
    {
        using var m = TinyModels.Randomized(TinyModels.Config(), 3);
        var e = Assert.Throws<ArgumentException>(() => ExportStage.ExportPolicy(m, ExportModels.TempPath("int8"),
            GraphKind.Plain, new ExportOptions { Precision = RolloutPrecision.Int8 }, parity: false));
        Assert.Contains("GroupQueryAttention", e.Message);
    }
}
