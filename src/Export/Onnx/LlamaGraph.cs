using Rlhf.Export.Hf;
using TorchSharp;
using DataType = Rlhf.Export.Onnx.Proto.TensorProto.Types.DataType;

namespace Rlhf.Export.Onnx;

/// <summary>
/// The Llama-family causal LM as a plain-ONNX-ops graph with a KV cache (no contrib ops), equal to the
/// Hugging Face <c>LlamaForCausalLM</c> forward in eager fp32:
/// <list type="bullet">
/// <item>inputs <c>input_ids</c> [batch, seq] int64, <c>attention_mask</c> [batch, total_seq] int64,
/// <c>position_ids</c> [batch, seq] int64, <c>past_key_values.{i}.key|value</c> [batch, kv_heads, past_seq, head_dim] float;</item>
/// <item>outputs <c>logits</c> [batch, seq, vocab] float, <c>present.{i}.key|value</c> [batch, kv_heads, total_seq, head_dim].</item>
/// </list>
/// Query j of the new tokens sits at absolute position past_seq + j and may attend key k iff
/// k ≤ past_seq + j and <c>attention_mask[b, k] == 1</c>. Masked scores get float.MinValue added (HF's convention),
/// so a fully masked row (a padding query) is a finite uniform average, never NaN.
/// Initializers carry the Hugging Face weight names; 2-D projection weights (<c>*_proj.weight</c>, <c>lm_head.weight</c>,
/// <c>score.weight</c>) are stored transposed, [in, out], see <see cref="IsStoredTransposed"/>.
/// </summary>
public static class LlamaGraph
{
    /// <summary>Symbolic dimension names (those ONNX Runtime GenAI's exporter uses).</summary>
    public const string Batch = "batch_size", Seq = "sequence_length", PastSeq = "past_sequence_length", TotalSeq = "total_sequence_length";

    /// <summary>Builds the decoder graph. <paramref name="weights"/> (HF names) must stay alive until the model is written.</summary>
    public static GraphBuilder Build(ModelConfig cfg, IReadOnlyDictionary<string, torch.Tensor> weights, int opset = GraphBuilder.DefaultOpset)
    {
        cfg.Validate();
        LlamaTrunk.CheckWeights(cfg, weights, ExpectedShapes(cfg));
        var b = new GraphBuilder("llama_decoder", opset) { DocString = $"Rlhf {cfg.ModelType} decoder with KV cache (plain ONNX ops)" };
        b.Metadata["rlhf.graph"] = "decoder";
        b.Metadata["rlhf.transposed_weights"] = "2-D projection weights are stored as [in, out]";
        int nKv = cfg.NumKeyValueHeads, d = cfg.HeadDim;

        string ids = b.Input("input_ids", DataType.Int64, Batch, Seq);
        string mask = b.Input("attention_mask", DataType.Int64, Batch, TotalSeq);
        string pos = b.Input("position_ids", DataType.Int64, Batch, Seq);
        var past = new (string Key, string Value)[cfg.NumHiddenLayers];
        for (int i = 0; i < cfg.NumHiddenLayers; i++)
            past[i] = (b.Input($"past_key_values.{i}.key", DataType.Float, Batch, nKv, PastSeq, d),
                       b.Input($"past_key_values.{i}.value", DataType.Float, Batch, nKv, PastSeq, d));

        var trunk = new LlamaTrunk(b, cfg, weights);
        string hidden = trunk.Forward(ids, mask, pos, past);

        b.Prefix = "lm_head";
        if (cfg.TieWordEmbeddings)
        {
            // Share the [V, H] embedding: Gemm(transB) reads it as is, so no transposed copy is stored.
            string flat = b.Node("Reshape", [hidden, b.ConstI64(-1, cfg.HiddenSize)]);
            string gemm = b.Node("Gemm", [flat, trunk.Embedding], Attr.Int("transB", 1));
            string outShape = b.Node("Concat", [b.Node("Shape", [ids]), b.ConstI64(cfg.VocabSize)], Attr.Int("axis", 0));
            b.AddNode("Reshape", [gemm, outShape], ["logits"]);
        }
        else
        {
            string w = b.Initializer("lm_head.weight", weights["lm_head.weight"], transpose: true);
            b.AddNode("MatMul", [hidden, w], ["logits"]);
        }
        b.Prefix = "";
        b.Output("logits", DataType.Float, Batch, Seq, cfg.VocabSize);
        for (int i = 0; i < cfg.NumHiddenLayers; i++)
        {
            b.Output($"present.{i}.key", DataType.Float, Batch, nKv, TotalSeq, d);
            b.Output($"present.{i}.value", DataType.Float, Batch, nKv, TotalSeq, d);
        }
        return b;
    }

    /// <summary>Builds the decoder graph and saves <c>model.onnx</c> + <c>model.onnx.data</c> into <paramref name="folder"/>.</summary>
    public static OnnxSaveResult Export(ModelConfig cfg, IReadOnlyDictionary<string, torch.Tensor> weights, string folder,
        string fileName = "model.onnx", int opset = GraphBuilder.DefaultOpset) =>
        Build(cfg, weights, opset).Save(folder, fileName);

    /// <summary>The HF weight names the decoder graph reads, with their HF shapes ([out, in] for projections).</summary>
    public static IReadOnlyDictionary<string, long[]> ExpectedShapes(ModelConfig cfg)
    {
        var s = LlamaTrunk.TrunkShapes(cfg);
        if (!cfg.TieWordEmbeddings) s["lm_head.weight"] = [cfg.VocabSize, cfg.HiddenSize];
        return s;
    }

    /// <summary>
    /// Whether the initializer named <paramref name="hfName"/> holds the transpose of the HF tensor
    /// (true for 2-D <c>*_proj.weight</c>, <c>lm_head.weight</c> and <c>score.weight</c>; the embedding is not transposed).
    /// Callers that override initializers at run time must pass the transposed data for these.
    /// </summary>
    public static bool IsStoredTransposed(string hfName) =>
        hfName.EndsWith("_proj.weight", StringComparison.Ordinal) || hfName is "lm_head.weight" or "score.weight";
}

/// <summary>
/// The reward/value model as a plain-ONNX-ops graph: the Llama trunk without lm_head and a scalar head
/// <c>score.weight</c> [1, H] (optional <c>score.bias</c> [1]).
/// Inputs <c>input_ids</c> [batch, seq] and <c>attention_mask</c> [batch, seq] int64 (no KV cache); position ids are
/// computed in the graph as <c>max(cumsum(mask) - 1, 0)</c>, which is 0..n-1 over the real tokens for both left and right padding.
/// Outputs <c>values</c> [batch, seq] (the head at every position) and <c>rewards</c> [batch], the value at the last
/// position where <c>attention_mask == 1</c> (sum(mask) - 1 under right padding; index 0 when a row has no real token).
/// </summary>
public static class RewardGraph
{
    /// <summary>Builds the reward graph. <paramref name="weights"/> (HF names) must stay alive until the model is written.</summary>
    public static GraphBuilder Build(ModelConfig cfg, IReadOnlyDictionary<string, torch.Tensor> weights, int opset = GraphBuilder.DefaultOpset)
    {
        cfg.Validate();
        var expected = ExpectedShapes(cfg);
        if (weights.ContainsKey("score.bias")) expected["score.bias"] = [1];
        LlamaTrunk.CheckWeights(cfg, weights, expected);
        var b = new GraphBuilder("llama_reward", opset) { DocString = $"Rlhf {cfg.ModelType} reward/value model (plain ONNX ops)" };
        b.Metadata["rlhf.graph"] = "reward";
        b.Metadata["rlhf.transposed_weights"] = "2-D projection weights are stored as [in, out]";

        string ids = b.Input("input_ids", DataType.Int64, LlamaGraph.Batch, LlamaGraph.Seq);
        string mask = b.Input("attention_mask", DataType.Int64, LlamaGraph.Batch, LlamaGraph.Seq);
        b.Prefix = "position_ids";
        string one = b.ScalarI64(1);
        string cum = b.Node("CumSum", [mask, one]);
        string pos = b.Node("Max", [b.Node("Sub", [cum, one]), b.ScalarI64(0)]);
        b.Prefix = "";

        var trunk = new LlamaTrunk(b, cfg, weights);
        string hidden = trunk.Forward(ids, mask, pos, past: null);

        b.Prefix = "score";
        string w = b.Initializer("score.weight", weights["score.weight"], transpose: true);
        string v = b.Node("MatMul", [hidden, w]);                                  // [B, S, 1]
        if (weights.ContainsKey("score.bias")) v = b.Node("Add", [v, b.Initializer("score.bias", weights["score.bias"])]);
        b.AddNode("Squeeze", [v, b.ConstI64(2)], ["values"]);                       // [B, S]

        // Last real position: max over k of (k + 1)·mask[b, k], minus 1, clamped at 0.
        string s = b.Node("Gather", [b.Node("Shape", [ids]), one], Attr.Int("axis", 0));
        string kPlus1 = b.Node("Range", [one, b.Node("Add", [s, one]), one]);      // [S]: 1..S
        string last = LlamaTrunk.Reduce(b, "ReduceMax", b.Node("Mul", [mask, kPlus1]), [1], keepDims: true); // [B, 1]
        string idx = b.Node("Max", [b.Node("Sub", [last, one]), b.ScalarI64(0)]);
        string picked = b.Node("GatherElements", ["values", idx], Attr.Int("axis", 1)); // [B, 1]
        b.AddNode("Squeeze", [picked, b.ConstI64(1)], ["rewards"]);
        b.Prefix = "";

        b.Output("rewards", DataType.Float, LlamaGraph.Batch);
        b.Output("values", DataType.Float, LlamaGraph.Batch, LlamaGraph.Seq);
        return b;
    }

    /// <summary>Builds the reward graph and saves it into <paramref name="folder"/>.</summary>
    public static OnnxSaveResult Export(ModelConfig cfg, IReadOnlyDictionary<string, torch.Tensor> weights, string folder,
        string fileName = "model.onnx", int opset = GraphBuilder.DefaultOpset) =>
        Build(cfg, weights, opset).Save(folder, fileName);

    /// <summary>The HF weight names the reward graph reads, with their HF shapes.</summary>
    public static Dictionary<string, long[]> ExpectedShapes(ModelConfig cfg)
    {
        var s = LlamaTrunk.TrunkShapes(cfg);
        s["score.weight"] = [1, cfg.HiddenSize];
        return s;
    }
}

/// <summary>The shared decoder trunk: embedding, layers (RMSNorm, RoPE attention with GQA, SwiGLU MLP), final norm.</summary>
sealed class LlamaTrunk(GraphBuilder b, ModelConfig cfg, IReadOnlyDictionary<string, torch.Tensor> weights)
{
    public string Embedding { get; private set; } = "";

    internal static Dictionary<string, long[]> TrunkShapes(ModelConfig cfg)
    {
        long h = cfg.HiddenSize, q = (long)cfg.NumAttentionHeads * cfg.HeadDim, kv = (long)cfg.NumKeyValueHeads * cfg.HeadDim, f = cfg.IntermediateSize;
        var s = new Dictionary<string, long[]>(StringComparer.Ordinal) { ["model.embed_tokens.weight"] = [cfg.VocabSize, h], ["model.norm.weight"] = [h] };
        for (int i = 0; i < cfg.NumHiddenLayers; i++)
        {
            string p = $"model.layers.{i}.";
            s[p + "input_layernorm.weight"] = [h];
            s[p + "post_attention_layernorm.weight"] = [h];
            s[p + "self_attn.q_proj.weight"] = [q, h];
            s[p + "self_attn.k_proj.weight"] = [kv, h];
            s[p + "self_attn.v_proj.weight"] = [kv, h];
            s[p + "self_attn.o_proj.weight"] = [h, q];
            if (cfg.QkvBias)
            {
                s[p + "self_attn.q_proj.bias"] = [q];
                s[p + "self_attn.k_proj.bias"] = [kv];
                s[p + "self_attn.v_proj.bias"] = [kv];
            }
            if (cfg.OutputBias) s[p + "self_attn.o_proj.bias"] = [h];
            s[p + "mlp.gate_proj.weight"] = [f, h];
            s[p + "mlp.up_proj.weight"] = [f, h];
            s[p + "mlp.down_proj.weight"] = [h, f];
        }
        return s;
    }

    internal static void CheckWeights(ModelConfig cfg, IReadOnlyDictionary<string, torch.Tensor> weights, IReadOnlyDictionary<string, long[]> expected)
    {
        var errors = new List<string>();
        foreach (var (name, shape) in expected)
        {
            if (!weights.TryGetValue(name, out var t)) errors.Add($"missing '{name}' [{string.Join(", ", shape)}]");
            else if (!t.shape.SequenceEqual(shape)) errors.Add($"'{name}' has shape [{string.Join(", ", t.shape)}], expected [{string.Join(", ", shape)}]");
            else if (!t.is_floating_point()) errors.Add($"'{name}' has dtype {t.dtype}, expected a floating-point type");
        }
        if (errors.Count > 0)
            throw new ArgumentException($"Weights do not match the {cfg.ModelType} config (layers {cfg.NumHiddenLayers}, hidden {cfg.HiddenSize}): " +
                                        string.Join("; ", errors.Take(20)) + (errors.Count > 20 ? $"; and {errors.Count - 20} more" : "") + ".");
    }

    /// <summary>A Reduce* node over <paramref name="axes"/> (attribute before opset 18, input from 18 on).</summary>
    internal static string Reduce(GraphBuilder b, string op, string x, long[] axes, bool keepDims)
    {
        bool axesAsInput = op == "ReduceSum" ? b.Opset >= 13 : b.Opset >= 18;
        return axesAsInput
            ? b.Node(op, [x, b.ConstI64(axes)], Attr.Int("keepdims", keepDims ? 1 : 0))
            : b.Node(op, [x], Attr.Ints("axes", axes), Attr.Int("keepdims", keepDims ? 1 : 0));
    }

    /// <summary>
    /// Runs the trunk and returns the final-normed hidden states [B, S, H]. With <paramref name="past"/> the layer
    /// keys/values are concatenated to the past ones and emitted as <c>present.{i}.key|value</c>.
    /// </summary>
    public string Forward(string ids, string mask, string positionIds, (string Key, string Value)[]? past)
    {
        b.Prefix = "embed";
        Embedding = b.Initializer("model.embed_tokens.weight", weights["model.embed_tokens.weight"]);
        string x = b.Node("Gather", [Embedding, ids], Attr.Int("axis", 0));       // [B, S, H]

        b.Prefix = "mask";
        var (bias, windowBias) = AttentionBias(ids, mask, positionIds);              // [B, 1, 1, S, T] each
        b.Prefix = "rope";
        var (cos, sin) = Rotary(positionIds);                                         // [B, 1, S, D]

        for (int i = 0; i < cfg.NumHiddenLayers; i++)
        {
            string p = $"model.layers.{i}.";
            b.Prefix = $"layers.{i}/attn";
            string h = RmsNorm(x, p + "input_layernorm.weight");
            string attn = Attention(i, h, cfg.WindowOf(i) is null ? bias : windowBias!, cos, sin, past?[i]);
            x = b.Node("Add", [x, attn]);
            b.Prefix = $"layers.{i}/mlp";
            h = RmsNorm(x, p + "post_attention_layernorm.weight");
            string gate = Linear(h, p + "mlp.gate_proj");
            string up = Linear(h, p + "mlp.up_proj");
            string act = b.Node("Mul", [b.Node("Mul", [gate, b.Node("Sigmoid", [gate])]), up]); // silu(gate)·up
            x = b.Node("Add", [x, Linear(act, p + "mlp.down_proj")]);
        }
        b.Prefix = "final_norm";
        string y = RmsNorm(x, "model.norm.weight");
        b.Prefix = "";
        return y;
    }

    /// <summary>x · rsqrt(mean(x², -1) + ε) · w, in float32 as HF's LlamaRMSNorm.</summary>
    string RmsNorm(string x, string weightName)
    {
        string w = b.Initializer(weightName, weights[weightName]);
        string variance = Reduce(b, "ReduceMean", b.Node("Mul", [x, x]), [-1], keepDims: true);
        string inv = b.Node("Reciprocal", [b.Node("Sqrt", [b.Node("Add", [variance, b.ScalarF32((float)cfg.RmsNormEps)])])]);
        return b.Node("Mul", [w, b.Node("Mul", [x, inv])]);
    }

    /// <summary>x · Wᵀ (+ bias), with Wᵀ stored as the initializer.</summary>
    string Linear(string x, string hfPrefix)
    {
        string y = b.Node("MatMul", [x, b.Initializer(hfPrefix + ".weight", weights[hfPrefix + ".weight"], transpose: true)]);
        return weights.ContainsKey(hfPrefix + ".bias") && HasBias(hfPrefix)
            ? b.Node("Add", [y, b.Initializer(hfPrefix + ".bias", weights[hfPrefix + ".bias"])])
            : y;
    }

    bool HasBias(string hfPrefix) =>
        hfPrefix.EndsWith("o_proj", StringComparison.Ordinal) ? cfg.OutputBias
        : hfPrefix.Contains("self_attn.", StringComparison.Ordinal) && cfg.QkvBias;

    /// <summary>
    /// Additive mask [B, 1, 1, S, T]: 0 where query j (absolute position T − S + j) may attend key k
    /// (k ≤ T − S + j and attention_mask[b, k] == 1), float.MinValue elsewhere. With a sliding window W
    /// (<see cref="ModelConfig.SlidingWindow"/>) also the banded one for the sliding layers: additionally
    /// position_ids[b, j] − p_k &lt; W with key positions p_k = cumsum(attention_mask)[b, k] − 1 (HF masks key k when
    /// i − k ≥ sliding_window; positions, so right-padded rows decoded through the cache keep their last W tokens);
    /// null without a window.
    /// </summary>
    (string Full, string? Windowed) AttentionBias(string ids, string mask, string positionIds)
    {
        string zero = b.ScalarI64(0), one = b.ScalarI64(1);
        string s = b.Node("Gather", [b.Node("Shape", [ids]), one], Attr.Int("axis", 0));
        string t = b.Node("Gather", [b.Node("Shape", [mask]), one], Attr.Int("axis", 0));
        string pastLen = b.Node("Sub", [t, s]);
        string qPos = b.Node("Range", [pastLen, t, one]);                            // [S]
        string kPos = b.Node("Range", [zero, t, one]);                               // [T]
        string causal = b.Node("LessOrEqual", [b.Node("Unsqueeze", [kPos, b.ConstI64(0)]), b.Node("Unsqueeze", [qPos, b.ConstI64(1)])]); // [S, T]
        string padding = b.Node("Unsqueeze", [b.Node("Cast", [mask], Attr.Int("to", (long)DataType.Bool)), b.ConstI64(1)]); // [B, 1, T]
        string Bias(string allowedST)
        {
            string allowed = b.Node("And", [allowedST, padding]);                      // [B, S, T]
            string add = b.Node("Where", [allowed, b.ScalarF32(0f), b.ScalarF32(float.MinValue)]);
            return b.Node("Unsqueeze", [add, b.ConstI64(1, 2)]);
        }
        if (cfg.SlidingWindow is not int w) return (Bias(causal), null);
        string keyPos = b.Node("Sub", [b.Node("CumSum", [mask, one]), one]);                                   // [B, T]
        string distance = b.Node("Sub", [b.Node("Unsqueeze", [positionIds, b.ConstI64(2)]), b.Node("Unsqueeze", [keyPos, b.ConstI64(1)])]); // [B, S, T]
        string band = b.Node("And", [causal, b.Node("Less", [distance, b.ScalarI64(w)])]);                    // [B, S, T]
        return (Bias(causal), Bias(band));
    }

    /// <summary>
    /// cos/sin [B, 1, S, D] of position · inv_freq, inv_freq [D/2] from <see cref="RopeFrequencies.Inverse"/> (θ^(−2i/D)
    /// under the config's rope_scaling) duplicated over both halves.
    /// </summary>
    (string Cos, string Sin) Rotary(string positionIds)
    {
        int d = cfg.HeadDim;
        float[] inv = RopeFrequencies.Inverse(d, cfg.RopeTheta, cfg.RopeScaling);
        string invFreq = b.Initializer("rotary.inv_freq", [.. inv, .. inv], d);
        string posF = b.Node("Unsqueeze", [b.Node("Cast", [positionIds], Attr.Int("to", (long)DataType.Float)), b.ConstI64(2)]); // [B, S, 1]
        string freqs = b.Node("Mul", [posF, invFreq]);                             // [B, S, D]
        string cos = b.Node("Unsqueeze", [b.Node("Cos", [freqs]), b.ConstI64(1)]);
        string sin = b.Node("Unsqueeze", [b.Node("Sin", [freqs]), b.ConstI64(1)]);
        return (cos, sin);
    }

    /// <summary>x·cos + rotate_half(x)·sin with rotate_half(x) = [−x₂, x₁].</summary>
    string ApplyRotary(string x, string cos, string sin)
    {
        var halves = b.Opset >= 18
            ? b.NodeMulti("Split", [x], 2, Attr.Int("axis", -1), Attr.Int("num_outputs", 2))
            : b.NodeMulti("Split", [x], 2, Attr.Int("axis", -1));
        string rotated = b.Node("Concat", [b.Node("Neg", [halves[1]]), halves[0]], Attr.Int("axis", -1));
        return b.Node("Add", [b.Node("Mul", [x, cos]), b.Node("Mul", [rotated, sin])]);
    }

    /// <summary>
    /// Self-attention of layer <paramref name="i"/> on normed input h [B, S, H]. GQA without copying K/V: queries are
    /// viewed as [B, Hkv, G, S, D] (head = kv·G + g, HF's repeat_kv order) against K/V [B, Hkv, 1, T, D].
    /// </summary>
    string Attention(int i, string h, string bias, string cos, string sin, (string Key, string Value)? past)
    {
        string p = $"model.layers.{i}.self_attn.";
        int nH = cfg.NumAttentionHeads, nKv = cfg.NumKeyValueHeads, d = cfg.HeadDim, g = nH / nKv;
        string Heads(string y, int n) =>
            b.Node("Transpose", [b.Node("Reshape", [y, b.ConstI64(0, 0, n, d)])], Attr.Ints("perm", 0, 2, 1, 3)); // [B, n, S, D]

        string q = ApplyRotary(Heads(Linear(h, p + "q_proj"), nH), cos, sin);
        string k = ApplyRotary(Heads(Linear(h, p + "k_proj"), nKv), cos, sin);
        string v = Heads(Linear(h, p + "v_proj"), nKv);
        if (past is var (pk, pv))
        {
            string presentK = $"present.{i}.key", presentV = $"present.{i}.value";   // [B, Hkv, T, D]
            b.AddNode("Concat", [pk, k], [presentK], attributes: [Attr.Int("axis", 2)]);
            b.AddNode("Concat", [pv, v], [presentV], attributes: [Attr.Int("axis", 2)]);
            (k, v) = (presentK, presentV);
        }
        string q5 = b.Node("Reshape", [q, b.ConstI64(0, nKv, g, -1, d)]);                                     // [B, Hkv, G, S, D]
        string kT5 = b.Node("Unsqueeze", [b.Node("Transpose", [k], Attr.Ints("perm", 0, 1, 3, 2)), b.ConstI64(2)]); // [B, Hkv, 1, D, T]
        string scores = b.Node("Mul", [b.Node("MatMul", [q5, kT5]), b.ScalarF32((float)(1.0 / Math.Sqrt(d)))]);     // [B, Hkv, G, S, T]
        string probs = b.Node("Softmax", [b.Node("Add", [scores, bias])], Attr.Int("axis", -1));
        string ctx = b.Node("MatMul", [probs, b.Node("Unsqueeze", [v, b.ConstI64(2)])]);                      // [B, Hkv, G, S, D]
        string merged = b.Node("Transpose", [b.Node("Reshape", [ctx, b.ConstI64(0, nH, -1, d)])], Attr.Ints("perm", 0, 2, 1, 3));
        string flat = b.Node("Reshape", [merged, b.ConstI64(0, 0, nH * d)]);                                  // [B, S, Hq·D]
        return Linear(flat, p + "o_proj");
    }
}
