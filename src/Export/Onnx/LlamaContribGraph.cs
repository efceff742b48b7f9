using Rlhf.Export.Hf;
using TorchSharp;
using DataType = Rlhf.Export.Onnx.Proto.TensorProto.Types.DataType;

namespace Rlhf.Export.Onnx;

/// <summary>
/// The Llama-family causal LM as the ONNX Runtime contrib-op graph that ONNX Runtime GenAI's model builder emits for
/// CPU fp32: packed QKV (one MatMul into <c>com.microsoft.GroupQueryAttention</c> with empty key/value inputs),
/// <c>do_rotary=1</c> with <c>cos_cache</c>/<c>sin_cache</c> initializers [context, D/2], <c>seqlens_k</c> and
/// <c>total_sequence_length</c> computed in the graph from <c>attention_mask</c>, and
/// <c>SimplifiedLayerNormalization</c> / <c>com.microsoft.SkipSimplifiedLayerNormalization</c> for the RMSNorms
/// (the residual adds are fused into the skip norms).
/// <list type="bullet">
/// <item>inputs <c>input_ids</c> [batch, seq] int64, <c>attention_mask</c> [batch, total_seq] int64,
/// <c>past_key_values.{i}.key|value</c> [batch, kv_heads, past_seq, head_dim] float (no <c>position_ids</c>: GQA derives positions);</item>
/// <item>outputs <c>logits</c> [batch, seq, vocab], <c>present.{i}.key|value</c> [batch, kv_heads, max(total_seq, past_seq), head_dim].</item>
/// </list>
/// <para><b>Padding supported (GQA's contract): right padding only, each row's real tokens contiguous from slot 0.</b>
/// <c>seqlens_k = sum(attention_mask, 1) − 1</c> and <c>total_sequence_length = attention_mask.shape[1]</c>.
/// A prompt (empty past, seq = total_seq) may be right-padded: row b's real tokens sit at positions 0..n_b−1.
/// A decode step takes seq = 1 and a mask whose row b is n_b + 1 ones followed by zeros: the new token is written to
/// cache slot n_b and rotated with position n_b, whatever the batch's longest row. Chunks of more than one token after
/// the prompt need batch 1 (ONNX Runtime rejects them otherwise). Left padding is not supported (GQA would count
/// the pad tokens as positions). The past may be a <c>max_length</c> buffer shared with present
/// (GenAI's <c>past_present_share_buffer</c>), or grow by concatenation (past_seq = previous total).</para>
/// Initializers: HF names for everything but the packed projection <c>model.layers.{i}.self_attn.qkv_proj.weight</c>
/// [H, (heads + 2·kv_heads)·D] (the transposed row-concatenation of q/k/v_proj, see <see cref="PackedQkv"/>) and its bias.
/// </summary>
public static class LlamaContribGraph
{
    /// <summary>
    /// Builds the decoder graph. <paramref name="weights"/> (HF names) must stay alive until the model is written. With
    /// <paramref name="int8"/> every projection and the LM head run as weight-only int8 (<see cref="Int8MatMul"/>); the
    /// initializers stay float32 under the same names.
    /// <para>With <paramref name="loraInputs"/> every projection of every layer also adds a LoRA term (x·A)·B whose
    /// factors are graph inputs <c>model.layers.{i}.{self_attn|mlp}.{module}.lora_A.weight</c> [in, lora_r] and
    /// <c>….lora_B.weight</c> [lora_r, out] (Olive's names and layout; B carries α/r), each defaulting to rank 0, so the
    /// graph computes the base model until an adapter (<see cref="OnnxAdapterFile"/>) feeds them.</para>
    /// </summary>
    public static GraphBuilder Build(ModelConfig cfg, IReadOnlyDictionary<string, torch.Tensor> weights, int opset = GraphBuilder.DefaultOpset, bool int8 = false,
        bool loraInputs = false)
    {
        cfg.Validate();
        if (cfg.HeadDim % 16 != 0)
            throw new ArgumentException($"The GroupQueryAttention graph needs head_dim to be a multiple of 16 (ONNX Runtime's rotary cache rule); " +
                                        $"this {cfg.ModelType} config has head_dim {cfg.HeadDim}. Export it with the plain graph instead.");
        LlamaTrunk.CheckWeights(cfg, weights, LlamaGraph.ExpectedShapes(cfg));
        var b = new GraphBuilder("llama_decoder_gqa", opset) { DocString = $"Rlhf {cfg.ModelType} decoder with KV cache (ONNX Runtime contrib ops, GroupQueryAttention)" };
        b.Metadata["rlhf.graph"] = "decoder_gqa";
        b.Metadata["rlhf.padding"] = "right padding only; decode rows are contiguous from slot 0";
        b.Metadata["rlhf.transposed_weights"] = "2-D projection weights are stored as [in, out]; qkv_proj packs q, k, v";
        if (int8) b.Metadata["rlhf.int8"] = "projections and lm_head: weight-only int8, initializers {name}_int8 [in, out] and {name}_scale [out]";
        // x · Wᵀ for an HF weight [out, in]: float32 MatMul on the stored transpose, or the int8 product.
        string Project(string x, string name, torch.Tensor weight, string? output = null)
        {
            if (int8) return Int8MatMul.Add(b, x, name, weight, output);
            string w = b.Initializer(name, weight, transpose: true);
            if (output is null) return b.Node("MatMul", [x, w]);
            b.AddNode("MatMul", [x, w], [output]);
            return output;
        }
        int nKv = cfg.NumKeyValueHeads, d = cfg.HeadDim;
        string Batch = LlamaGraph.Batch, Seq = LlamaGraph.Seq;
        if (loraInputs) b.Metadata["rlhf.lora"] = LoraMetadata;   // PolicyWeightFormat.LoraKey
        // y + (x·A)·B for the projection named hfPrefix ([in] → [out]); y unchanged without LoRA inputs
        string WithLora(string y, string x, string hfPrefix, long inF, long outF) =>
            loraInputs ? b.Node("Add", [y, LoraTerm(b, x, hfPrefix, inF, outF)]) : y;

        string ids = b.Input("input_ids", DataType.Int64, Batch, Seq);
        string mask = b.Input("attention_mask", DataType.Int64, Batch, LlamaGraph.TotalSeq);
        var past = new (string Key, string Value)[cfg.NumHiddenLayers];
        for (int i = 0; i < cfg.NumHiddenLayers; i++)
            past[i] = (b.Input($"past_key_values.{i}.key", DataType.Float, Batch, nKv, LlamaGraph.PastSeq, d),
                       b.Input($"past_key_values.{i}.value", DataType.Float, Batch, nKv, LlamaGraph.PastSeq, d));

        b.Prefix = "attn_mask_reformat";
        string seqlensK = b.Node("Cast", [b.Node("Sub", [LlamaTrunk.Reduce(b, "ReduceSum", mask, [1], keepDims: false), b.ScalarI64(1)])],
                                 Attr.Int("to", (long)DataType.Int32));                                   // [B] int32
        string totalLen = b.Node("Cast", [b.Node("Gather", [b.Node("Shape", [mask]), b.ScalarI64(1)], Attr.Int("axis", 0))],
                                 Attr.Int("to", (long)DataType.Int32));                                   // scalar int32
        b.Prefix = "rope";
        var (cosCache, sinCache) = RotaryCaches(b, cfg);

        b.Prefix = "embed";
        string embedding = b.Initializer("model.embed_tokens.weight", weights["model.embed_tokens.weight"]);
        string x = b.Node("Gather", [embedding, ids], Attr.Int("axis", 0));                              // [B, S, H]
        float eps = (float)cfg.RmsNormEps;

        b.Prefix = "layers.0/attn";
        string h = b.Node("SimplifiedLayerNormalization", [x, Weight(b, weights, "model.layers.0.input_layernorm.weight")],
            Attr.Int("axis", -1), Attr.Float("epsilon", eps), Attr.Int("stash_type", 1));
        string residual = x;
        for (int i = 0; i < cfg.NumHiddenLayers; i++)
        {
            string p = $"model.layers.{i}.";
            b.Prefix = $"layers.{i}/attn";
            string qkv = Project(h, PackedQkvName(i), CheckedPackedQkv(cfg, weights, i));
            if (cfg.QkvBias) qkv = b.Node("Add", [qkv, PackedQkvBiasInitializer(b, weights, i)]);
            if (loraInputs)   // the packed output's q, k, v parts each get their own adapter's term
                qkv = b.Node("Add", [qkv, b.Node("Concat", [LoraTerm(b, h, p + "self_attn.q_proj", cfg.HiddenSize, cfg.NumAttentionHeads * d),
                    LoraTerm(b, h, p + "self_attn.k_proj", cfg.HiddenSize, nKv * d), LoraTerm(b, h, p + "self_attn.v_proj", cfg.HiddenSize, nKv * d)], Attr.Int("axis", -1))]);
            string attn = $"layers.{i}/attn/GroupQueryAttention/output";
            b.AddNode("GroupQueryAttention", [qkv, "", "", past[i].Key, past[i].Value, seqlensK, totalLen, cosCache, sinCache],
                [attn, $"present.{i}.key", $"present.{i}.value"], GraphBuilder.MicrosoftDomain,
                [Attr.Int("num_heads", cfg.NumAttentionHeads), Attr.Int("kv_num_heads", nKv), Attr.Float("scale", (float)(1.0 / Math.Sqrt(d))),
                 Attr.Int("do_rotary", 1), Attr.Int("rotary_interleaved", 0), Attr.Int("local_window_size", LocalWindowSize(cfg.WindowOf(i)))]);
            string o = WithLora(Linear(b, weights, attn, p + "self_attn.o_proj", cfg.OutputBias, Project), attn, p + "self_attn.o_proj", cfg.NumAttentionHeads * d, cfg.HiddenSize);
            (h, residual) = SkipNorm(b, $"layers.{i}/post_attention_norm", o, residual, Weight(b, weights, p + "post_attention_layernorm.weight"), eps);

            b.Prefix = $"layers.{i}/mlp";
            string gate = WithLora(Linear(b, weights, h, p + "mlp.gate_proj", false, Project), h, p + "mlp.gate_proj", cfg.HiddenSize, cfg.IntermediateSize);
            string up = WithLora(Linear(b, weights, h, p + "mlp.up_proj", false, Project), h, p + "mlp.up_proj", cfg.HiddenSize, cfg.IntermediateSize);
            string act = b.Node("Mul", [b.Node("Mul", [gate, b.Node("Sigmoid", [gate])]), up]);          // silu(gate)·up
            string down = WithLora(Linear(b, weights, act, p + "mlp.down_proj", false, Project), act, p + "mlp.down_proj", cfg.IntermediateSize, cfg.HiddenSize);
            bool last = i == cfg.NumHiddenLayers - 1;
            b.Prefix = last ? "final_norm" : $"layers.{i + 1}/attn";
            (h, residual) = SkipNorm(b, last ? "final_norm" : $"layers.{i + 1}/input_norm", down, residual,
                Weight(b, weights, last ? "model.norm.weight" : $"model.layers.{i + 1}.input_layernorm.weight"), eps);
        }

        b.Prefix = "lm_head";
        if (cfg.TieWordEmbeddings && int8)
        {
            Project(h, "lm_head.weight", weights["model.embed_tokens.weight"], "logits");   // the tied head, quantized as its own initializers
        }
        else if (cfg.TieWordEmbeddings)
        {
            string flat = b.Node("Reshape", [h, b.ConstI64(-1, cfg.HiddenSize)]);
            string gemm = b.Node("Gemm", [flat, embedding], Attr.Int("transB", 1));
            string outShape = b.Node("Concat", [b.Node("Shape", [ids]), b.ConstI64(cfg.VocabSize)], Attr.Int("axis", 0));
            b.AddNode("Reshape", [gemm, outShape], ["logits"]);
        }
        else
        {
            Project(h, "lm_head.weight", weights["lm_head.weight"], "logits");
        }
        b.Prefix = "";
        b.Output("logits", DataType.Float, Batch, Seq, cfg.VocabSize);
        for (int i = 0; i < cfg.NumHiddenLayers; i++)
        {
            b.Output($"present.{i}.key", DataType.Float, Batch, nKv, LlamaGraph.TotalSeq, d);
            b.Output($"present.{i}.value", DataType.Float, Batch, nKv, LlamaGraph.TotalSeq, d);
        }
        return b;
    }

    /// <summary>Builds the graph and saves <c>model.onnx</c> + <c>model.onnx.data</c> into <paramref name="folder"/>.</summary>
    public static OnnxSaveResult Export(ModelConfig cfg, IReadOnlyDictionary<string, torch.Tensor> weights, string folder,
        string fileName = "model.onnx", int opset = GraphBuilder.DefaultOpset) =>
        Build(cfg, weights, opset).Save(folder, fileName);

    /// <summary>Name of layer <paramref name="layer"/>'s packed projection initializer (stored [H, (heads + 2·kv_heads)·D]).</summary>
    public static string PackedQkvName(int layer) => $"model.layers.{layer}.self_attn.qkv_proj.weight";

    /// <summary>
    /// The packed projection of layer <paramref name="layer"/> in HF orientation: cat([q_proj, k_proj, v_proj], 0),
    /// [(heads + 2·kv_heads)·D, H]. The initializer holds its transpose. Callers own (dispose) the result.
    /// </summary>
    public static torch.Tensor PackedQkv(IReadOnlyDictionary<string, torch.Tensor> weights, int layer)
    {
        string p = $"model.layers.{layer}.self_attn.";
        return torch.cat([weights[p + "q_proj.weight"], weights[p + "k_proj.weight"], weights[p + "v_proj.weight"]], 0);
    }

    static torch.Tensor CheckedPackedQkv(ModelConfig cfg, IReadOnlyDictionary<string, torch.Tensor> weights, int layer)
    {
        // The builder reads tensors when the model is written, so the packed copy must outlive this call: it is
        // handed to the builder and released with the weights' finalizer (detached from any dispose scope).
        var packed = PackedQkv(weights, layer).DetachFromDisposeScope();
        long rows = (long)(cfg.NumAttentionHeads + 2 * cfg.NumKeyValueHeads) * cfg.HeadDim;
        if (packed.shape[0] != rows) throw new InvalidOperationException($"Packed qkv of layer {layer} has {packed.shape[0]} rows, expected {rows}.");
        return packed;
    }

    static string PackedQkvBiasInitializer(GraphBuilder b, IReadOnlyDictionary<string, torch.Tensor> weights, int layer)
    {
        string p = $"model.layers.{layer}.self_attn.";
        var packed = torch.cat([weights[p + "q_proj.bias"], weights[p + "k_proj.bias"], weights[p + "v_proj.bias"]], 0).DetachFromDisposeScope();
        return b.Initializer($"model.layers.{layer}.self_attn.qkv_proj.bias", packed);
    }

    static string Weight(GraphBuilder b, IReadOnlyDictionary<string, torch.Tensor> weights, string name) => b.Initializer(name, weights[name]);

    /// <summary>The symbolic rank of the LoRA inputs.</summary>
    public const string LoraRank = "lora_r";

    /// <summary>What <c>rlhf.lora</c> in a LoRA-input graph's metadata says.</summary>
    public const string LoraMetadata = "every projection adds (x·A)·B: inputs {module}.lora_A.weight [in, lora_r] and {module}.lora_B.weight [lora_r, out] (B scaled by lora_alpha/r), rank 0 by default";

    /// <summary>(x·A)·B with A = <c>{hfPrefix}.lora_A.weight</c> [in, lora_r], B = <c>{hfPrefix}.lora_B.weight</c> [lora_r, out], both rank 0 unless fed.</summary>
    static string LoraTerm(GraphBuilder b, string x, string hfPrefix, long inF, long outF)
    {
        string a = b.InputWithDefault(hfPrefix + ".lora_A.weight", [inF, LoraRank], [], inF, 0);
        string bm = b.InputWithDefault(hfPrefix + ".lora_B.weight", [LoraRank, outF], [], 0, outF);
        return b.Node("MatMul", [b.Node("MatMul", [x, a]), bm]);
    }

    static string Linear(GraphBuilder b, IReadOnlyDictionary<string, torch.Tensor> weights, string x, string hfPrefix, bool bias,
        Func<string, string, torch.Tensor, string?, string> project)
    {
        string y = project(x, hfPrefix + ".weight", weights[hfPrefix + ".weight"], null);
        return bias ? b.Node("Add", [y, b.Initializer(hfPrefix + ".bias", weights[hfPrefix + ".bias"])]) : y;
    }

    /// <summary>SkipSimplifiedLayerNormalization: residual' = x + skip; returns (RMSNorm(residual')·w, residual').</summary>
    static (string Normed, string Residual) SkipNorm(GraphBuilder b, string name, string x, string skip, string weight, float eps)
    {
        string normed = name + "/output", sum = name + "/input_skip_bias_sum";
        b.AddNode("SkipSimplifiedLayerNormalization", [x, skip, weight], [normed, "", "", sum], GraphBuilder.MicrosoftDomain,
            [Attr.Float("epsilon", eps)]);
        return (normed, sum);
    }

    /// <summary>
    /// GroupQueryAttention's <c>local_window_size</c> for an HF sliding window W (null = none, −1). HF masks key j for
    /// query q when q − j ≥ W (W keys: q − W + 1 … q). ONNX Runtime 1.31's CPU kernel, measured against that rule with
    /// W = 5 over 11 positions (prefill and decode), keeps the same W keys when the attribute is W, and is off by one
    /// key with W − 1; the GQA parity tests (LlamaGraphTests.GqaGraphMatchesReference) pin it.
    /// </summary>
    public static int LocalWindowSize(int? slidingWindow) => slidingWindow is int w ? w : -1;

    /// <summary>
    /// cos/sin caches [context, D/2]: cos(p·f_i), sin(p·f_i) for positions p below max_position_embeddings, f from
    /// <see cref="RopeFrequencies.Inverse"/> (θ^(−2i/D) under the config's rope_scaling).
    /// </summary>
    static (string Cos, string Sin) RotaryCaches(GraphBuilder b, ModelConfig cfg)
    {
        int d = cfg.HeadDim, half = d / 2, n = cfg.MaxPositionEmbeddings;
        float[] cos = new float[n * half], sin = new float[n * half];
        // Same float32 arithmetic as the TorchSharp Rope: inv_freq rounded to float, angle = (float)p · inv_freq in float.
        var inv = RopeFrequencies.Inverse(d, cfg.RopeTheta, cfg.RopeScaling);
        for (int p = 0; p < n; p++)
            for (int i = 0; i < half; i++)
            {
                float angle = p * inv[i];
                cos[p * half + i] = (float)Math.Cos(angle);
                sin[p * half + i] = (float)Math.Sin(angle);
            }
        return (b.Initializer("cos_cache", cos, n, half), b.Initializer("sin_cache", sin, n, half));
    }
}
