using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using Rlhf.Export.Hf;
using Rlhf.Export.Onnx;
using Rlhf.Export.Onnx.Proto;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Rlhf.Export.Tests.Onnx;

/// <summary>ONNX Runtime on the exported decoder/reward graphs vs. the plain TorchSharp reference forward.</summary>
public class LlamaGraphTests(ITestOutputHelper output)
{
    const float Tolerance = 1e-4f;
    const long Pad = 0;

    /// <summary>Three rows of real lengths 7, 4, 2 in width 7, padded on the given side.</summary>
    static (long[,] Ids, long[,] Mask) Batch(bool leftPad, int seed, int width = 7, int[]? lengths = null)
    {
        lengths ??= [7, 4, 2];
        var rng = new Random(seed);
        int B = lengths.Length;
        var ids = new long[B, width];
        var mask = new long[B, width];
        for (int b = 0; b < B; b++)
            for (int i = 0; i < lengths[b]; i++)
            {
                int s = leftPad ? width - lengths[b] + i : i;
                ids[b, s] = rng.Next(1, 50);
                mask[b, s] = 1;
            }
        for (int b = 0; b < B; b++) for (int s = 0; s < width; s++) if (mask[b, s] == 0) ids[b, s] = Pad;
        return (ids, mask);
    }

    static long[,] Arange(int B, int S)
    {
        var p = new long[B, S];
        for (int b = 0; b < B; b++) for (int s = 0; s < S; s++) p[b, s] = s;
        return p;
    }

    static Dictionary<string, OrtValue> DecoderInputs(ModelConfig cfg, long[,] ids, long[,] mask, long[,] pos,
        Dictionary<string, (float[] Data, long[] Shape)>? present)
    {
        int B = ids.GetLength(0);
        var inputs = new Dictionary<string, OrtValue>
        {
            ["input_ids"] = OrtModel.I64(ids), ["attention_mask"] = OrtModel.I64(mask), ["position_ids"] = OrtModel.I64(pos),
        };
        for (int i = 0; i < cfg.NumHiddenLayers; i++)
            foreach (string kv in new[] { "key", "value" })
                inputs[$"past_key_values.{i}.{kv}"] = present is null
                    ? OrtModel.F32([], [B, cfg.NumKeyValueHeads, 0, cfg.HeadDim])
                    : OrtModel.F32(present[$"present.{i}.{kv}"].Data, present[$"present.{i}.{kv}"].Shape);
        return inputs;
    }

    /// <summary>Max |ort − ref| over positions where <paramref name="mask"/> is 1 (queries of real tokens); all ORT values must be finite.</summary>
    static float MaxDiffAtReal(float[] ort, long[] ortShape, Tensor reference, long[,] mask, int maskOffset)
    {
        Assert.All(ort, v => Assert.True(float.IsFinite(v)));
        float[] r = reference.contiguous().data<float>().ToArray();
        Assert.Equal(reference.shape, ortShape);
        int B = (int)ortShape[0], S = (int)ortShape[1];
        int inner = (int)(ort.Length / (B * S));
        float max = 0;
        for (int b = 0; b < B; b++)
            for (int s = 0; s < S; s++)
                if (mask[b, maskOffset + s] == 1)
                    for (int j = 0; j < inner; j++)
                    {
                        int at = (b * S + s) * inner + j;
                        max = Math.Max(max, Math.Abs(ort[at] - r[at]));
                    }
        return max;
    }

    static (string Dir, Dictionary<string, Tensor> Weights, OnnxSaveResult Saved) ExportDecoder(ModelConfig cfg, int seed, int opset = GraphBuilder.DefaultOpset)
    {
        var w = TinyModel.Weights(cfg, LlamaGraph.ExpectedShapes(cfg), seed);
        string dir = TinyModel.TempFolder("llama");
        var saved = LlamaGraph.Export(cfg, w, dir, opset: opset);
        return (dir, w, saved);
    }

    [Theory]
    [InlineData("llama", false)]
    [InlineData("llama", true)]
    [InlineData("qwen2", false)]
    [InlineData("qwen2", true)]
    [InlineData("llama_bias", true)]
    [InlineData("tied", false)]
    [InlineData("tied", true)]
    [InlineData("mha", true)]
    [InlineData("llama3", false)]
    [InlineData("llama3", true)]
    [InlineData("linear", true)]
    [InlineData("mistral_window", false)]
    [InlineData("mistral_window", true)]
    [InlineData("qwen2_window", true)]
    [InlineData("head_dim", true)]
    public void PrefillLogitsMatchReference(string variant, bool leftPad)
    {
        var cfg = TinyModel.Config(variant);
        var (dir, w, _) = ExportDecoder(cfg, seed: 11);
        try
        {
            var (ids, mask) = Batch(leftPad, seed: 5);
            var pos = leftPad ? TinyModel.PositionsFromMask(mask) : Arange(ids.GetLength(0), ids.GetLength(1));
            using var ort = new OrtModel(Path.Combine(dir, "model.onnx"));
            var outs = ort.Run(DecoderInputs(cfg, ids, mask, pos, present: null));
            using var scope = NewDisposeScope();
            var reference = ReferenceLlama.Logits(cfg, w, ids, mask, pos);
            float diff = MaxDiffAtReal(outs["logits"].Data, outs["logits"].Shape, reference, mask, 0);
            output.WriteLine($"{variant} {(leftPad ? "left" : "right")} padding: max |logits diff| = {diff:E2} (max |logit| {reference.abs().max().item<float>():F3})");
            Assert.True(diff <= Tolerance, $"max abs diff {diff}");
            Assert.Equal([3L, cfg.NumKeyValueHeads, 7, cfg.HeadDim], outs["present.1.value"].Shape);
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>
    /// Prefill a padded prompt, then a 2-token chunk, then single tokens, feeding present back as past; each step's
    /// logits equal the reference forward over the whole sequence at those positions.
    /// </summary>
    [Theory]
    [InlineData("llama", true, 17)]
    [InlineData("llama", false, 17)]
    [InlineData("qwen2", true, 17)]
    [InlineData("tied", false, 17)]
    [InlineData("llama", false, 18)]
    [InlineData("qwen2", true, 21)]
    [InlineData("llama3", true, 17)]
    [InlineData("linear", false, 17)]
    [InlineData("mistral_window", true, 17)]
    [InlineData("mistral_window", false, 17)]
    [InlineData("qwen2_window", false, 17)]
    [InlineData("head_dim", false, 17)]
    public void DecodingThroughKvCacheMatchesFullForward(string variant, bool leftPad, int opset)
    {
        var cfg = TinyModel.Config(variant);
        var (dir, w, _) = ExportDecoder(cfg, seed: 23, opset);
        try
        {
            const int prompt = 6, total = 11;
            var (promptIds, promptMask) = Batch(leftPad, seed: 9, width: prompt, lengths: [4, 6]);
            var rng = new Random(3);
            var ids = new long[2, total];
            var mask = new long[2, total];
            for (int b = 0; b < 2; b++)
                for (int s = 0; s < total; s++)
                {
                    ids[b, s] = s < prompt ? promptIds[b, s] : rng.Next(1, 50);
                    mask[b, s] = s < prompt ? promptMask[b, s] : 1;
                }
            var pos = TinyModel.PositionsFromMask(mask);
            using var scope = NewDisposeScope();
            var reference = ReferenceLlama.Logits(cfg, w, ids, mask, pos);

            using var ort = new OrtModel(Path.Combine(dir, "model.onnx"));
            Dictionary<string, (float[] Data, long[] Shape)>? present = null;
            int[] bounds = [0, prompt, prompt + 2, prompt + 3, prompt + 4, total];
            float worst = 0;
            for (int step = 0; step + 1 < bounds.Length; step++)
            {
                int from = bounds[step], to = bounds[step + 1];
                var outs = ort.Run(DecoderInputs(cfg, TinyModel.Slice(ids, from, to), TinyModel.Slice(mask, 0, to),
                                                 TinyModel.Slice(pos, from, to), present));
                var refStep = reference.narrow(1, from, to - from);
                float diff = MaxDiffAtReal(outs["logits"].Data, outs["logits"].Shape, refStep, mask, from);
                worst = Math.Max(worst, diff);
                Assert.True(diff <= Tolerance, $"step {step} (tokens {from}..{to}): max abs diff {diff}");
                Assert.Equal(to, (int)outs["present.0.key"].Shape[2]);
                present = outs;
            }
            output.WriteLine($"{variant} {(leftPad ? "left" : "right")} padding, opset {opset}, 5 cached steps: max |logits diff| = {worst:E2}");
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>
    /// The GroupQueryAttention graph (head_dim 16) against the oracle: a right-padded prefill of rows 7 and 4 tokens long,
    /// then 4 single-token steps through the concatenated KV cache (row b's mask: its n_b + t ones, then zeros). Covers
    /// the cos/sin caches under rope_scaling and local_window_size against HF's sliding-window rule.
    /// </summary>
    [Theory]
    [InlineData("llama")]
    [InlineData("llama3")]
    [InlineData("linear")]
    [InlineData("mistral_window")]
    [InlineData("qwen2_window")]
    [InlineData("head_dim")]
    public void GqaGraphMatchesReference(string variant)
    {
        var cfg = Rlhf.Tests.Shared.TinyLlama.Config(variant, headDim: 16, maxPositions: 64);
        var w = TinyModel.Weights(cfg, LlamaGraph.ExpectedShapes(cfg), seed: 13);
        string dir = TinyModel.TempFolder("gqa");
        try
        {
            LlamaContribGraph.Export(cfg, w, dir);
            const int width = 7, steps = 4, total = width + steps;
            int[] n = [7, 4];
            var rng = new Random(4);
            var ids = new long[2, total];
            var mask = new long[2, total];
            for (int b = 0; b < 2; b++)
                for (int s = 0; s < n[b] + steps; s++) { ids[b, s] = rng.Next(1, 50); mask[b, s] = 1; }
            using var scope = NewDisposeScope();
            var reference = ReferenceLlama.Logits(cfg, w, ids, mask, Arange(2, total)).contiguous();   // rows contiguous from slot 0
            var r = reference.data<float>().ToArray();
            int V = cfg.VocabSize;
            using var ort = new OrtModel(Path.Combine(dir, "model.onnx"));
            Dictionary<string, (float[] Data, long[] Shape)>? present = null;
            float worst = 0;
            for (int t = 0; t <= steps; t++)
            {
                int seq = t == 0 ? width : 1, T = t == 0 ? width : n.Max() + t;
                var stepIds = new long[2, seq];
                var stepMask = new long[2, T];
                for (int b = 0; b < 2; b++)
                {
                    for (int s = 0; s < seq; s++) stepIds[b, s] = t == 0 ? (s < n[b] ? ids[b, s] : Pad) : ids[b, n[b] + t - 1];
                    for (int s = 0; s < (t == 0 ? n[b] : n[b] + t); s++) stepMask[b, s] = 1;
                }
                var inputs = new Dictionary<string, OrtValue> { ["input_ids"] = OrtModel.I64(stepIds), ["attention_mask"] = OrtModel.I64(stepMask) };
                for (int i = 0; i < cfg.NumHiddenLayers; i++)
                    foreach (string kv in new[] { "key", "value" })
                        inputs[$"past_key_values.{i}.{kv}"] = present is null
                            ? OrtModel.F32([], [2, cfg.NumKeyValueHeads, 0, cfg.HeadDim])
                            : OrtModel.F32(present[$"present.{i}.{kv}"].Data, present[$"present.{i}.{kv}"].Shape);
                var outs = ort.Run(inputs);
                var logits = outs["logits"].Data;                                   // [2, seq, V]
                for (int b = 0; b < 2; b++)
                    for (int s = 0; s < seq; s++)
                    {
                        int slot = t == 0 ? s : n[b] + t - 1;                       // the token's position in its row
                        if (t == 0 && s >= n[b]) continue;                          // padding query
                        for (int v = 0; v < V; v++)
                        {
                            float got = logits[(b * seq + s) * V + v];
                            Assert.True(float.IsFinite(got));
                            worst = Math.Max(worst, Math.Abs(got - r[(b * total + slot) * V + v]));
                        }
                    }
                present = outs;
            }
            output.WriteLine($"gqa {variant}: prefill + {steps} decode steps, max |logits diff| = {worst:E2}");
            Assert.True(worst <= Tolerance, $"max abs diff {worst}");
        }
        finally { Directory.Delete(dir, true); }
    }

    [Theory]
    [InlineData("llama", false, false, 17)]
    [InlineData("llama", true, true, 17)]
    [InlineData("qwen2", false, true, 17)]
    [InlineData("tied", true, false, 21)]
    [InlineData("mistral_window", true, false, 17)]
    [InlineData("llama3", false, true, 17)]
    public void RewardGraphMatchesReferenceAtLastRealToken(string variant, bool leftPad, bool withBias, int opset)
    {
        var cfg = TinyModel.Config(variant);
        var shapes = RewardGraph.ExpectedShapes(cfg);
        if (withBias) shapes["score.bias"] = [1];
        var w = TinyModel.Weights(cfg, shapes, seed: 31);
        string dir = TinyModel.TempFolder("reward");
        try
        {
            RewardGraph.Export(cfg, w, dir, opset: opset);
            var (ids, mask) = Batch(leftPad, seed: 17);
            using var ort = new OrtModel(Path.Combine(dir, "model.onnx"));
            Assert.Equal(["input_ids", "attention_mask"], ort.InputNames);
            var outs = ort.Run(new Dictionary<string, OrtValue> { ["input_ids"] = OrtModel.I64(ids), ["attention_mask"] = OrtModel.I64(mask) });

            using var scope = NewDisposeScope();
            var values = ReferenceLlama.Values(cfg, w, ids, mask, TinyModel.PositionsFromMask(mask)); // [B, S]
            float valueDiff = MaxDiffAtReal(outs["values"].Data, outs["values"].Shape, values, mask, 0);
            var v = values.data<float>().ToArray();
            int B = ids.GetLength(0), S = ids.GetLength(1);
            float rewardDiff = 0;
            for (int b = 0; b < B; b++)
            {
                int last = Enumerable.Range(0, S).Last(s => mask[b, s] == 1);
                rewardDiff = Math.Max(rewardDiff, Math.Abs(outs["rewards"].Data[b] - v[b * S + last]));
            }
            output.WriteLine($"reward {variant} {(leftPad ? "left" : "right")} bias={withBias}: values diff {valueDiff:E2}, rewards diff {rewardDiff:E2}");
            Assert.Equal([(long)B], outs["rewards"].Shape);
            Assert.True(valueDiff <= Tolerance, $"values diff {valueDiff}");
            Assert.True(rewardDiff <= Tolerance, $"rewards diff {rewardDiff}");
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void ExportWritesExternalDataThatOrtLoads()
    {
        var cfg = TinyModel.Config("llama");
        var w = TinyModel.Weights(cfg, LlamaGraph.ExpectedShapes(cfg), seed: 1);
        string dir = TinyModel.TempFolder("external");
        try
        {
            var sw = Stopwatch.StartNew();
            var saved = LlamaGraph.Export(cfg, w, dir);
            sw.Stop();
            output.WriteLine($"tiny export: {sw.ElapsedMilliseconds} ms, model.onnx {saved.ModelBytes} B, model.onnx.data {saved.DataBytes} B, {saved.ExternalInitializers} external initializers");
            Assert.Equal(Path.Combine(dir, "model.onnx.data"), saved.DataPath);
            Assert.True(new FileInfo(saved.DataPath!).Length > 0);

            var model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(saved.ModelPath));
            Assert.Empty(OnnxChecker.Check(model));
            var external = model.Graph.Initializer.Where(t => t.DataLocation == TensorProto.Types.DataLocation.External).ToList();
            Assert.Equal(saved.ExternalInitializers, external.Count);
            Assert.Contains(external, t => t.Name == "model.embed_tokens.weight");
            Assert.All(external, t => Assert.Equal("0", (long.Parse(t.ExternalData.Single(e => e.Key == "offset").Value) % 4096).ToString()));

            // The model loads from its folder (ORT resolves model.onnx.data next to it) with the documented signature.
            using var ort = new OrtModel(saved.ModelPath);
            Assert.Equal(["input_ids", "attention_mask", "position_ids", "past_key_values.0.key", "past_key_values.0.value",
                          "past_key_values.1.key", "past_key_values.1.value"], ort.InputNames);
            Assert.Equal(["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"], ort.OutputNames);

            // Initializer names are the HF names; projection weights are stored [in, out].
            var q = model.Graph.Initializer.Single(t => t.Name == "model.layers.0.self_attn.q_proj.weight");
            Assert.Equal([(long)cfg.HiddenSize, cfg.NumAttentionHeads * cfg.HeadDim], q.Dims);
            Assert.True(LlamaGraph.IsStoredTransposed(q.Name));
            Assert.False(LlamaGraph.IsStoredTransposed("model.embed_tokens.weight"));

            // The weights really come from the data file: without it the model does not load.
            File.Move(saved.DataPath!, saved.DataPath + ".moved");
            var missing = Assert.ThrowsAny<Microsoft.ML.OnnxRuntime.OnnxRuntimeException>(() => new OrtModel(saved.ModelPath).Dispose());
            Assert.Contains(Path.GetFileName(saved.DataPath!), missing.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void ExpectedWeightNamesFollowHuggingFace()
    {
        var qwen = TinyModel.Config("qwen2");
        var s = LlamaGraph.ExpectedShapes(qwen);
        Assert.Equal([16L, 32], s["model.layers.1.self_attn.k_proj.weight"]);
        Assert.Equal([16L], s["model.layers.1.self_attn.k_proj.bias"]);
        Assert.False(s.ContainsKey("model.layers.0.self_attn.o_proj.bias"));
        Assert.Equal([50L, 32], s["lm_head.weight"]);
        Assert.False(LlamaGraph.ExpectedShapes(TinyModel.Config("tied")).ContainsKey("lm_head.weight"));
        Assert.Equal(2 + 2 * 9 + 1, LlamaGraph.ExpectedShapes(TinyModel.Config("llama")).Count);
        Assert.Equal([1L, 32], RewardGraph.ExpectedShapes(qwen)["score.weight"]);
    }

    [Fact]
    public void MissingOrMisshapedWeightsAreReportedByName()
    {
        var cfg = TinyModel.Config("llama");
        var w = TinyModel.Weights(cfg, LlamaGraph.ExpectedShapes(cfg), seed: 2);
        w.Remove("model.layers.1.mlp.up_proj.weight");
        w["model.norm.weight"] = zeros(31);
        var e = Assert.Throws<ArgumentException>(() => LlamaGraph.Build(cfg, w));
        Assert.Contains("model.layers.1.mlp.up_proj.weight", e.Message);
        Assert.Contains("'model.norm.weight' has shape [31]", e.Message);
    }
}
