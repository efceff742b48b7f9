using Rlhf.Training.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Model;

public sealed class StateDictTests
{
    static Dictionary<string, string> Shapes(nn.Module m) =>
        m.state_dict().ToDictionary(kv => kv.Key, kv => string.Join("x", kv.Value.shape));

    static Dictionary<string, string> Expected(bool qkvBias, bool oBias, bool lmHead, bool score = false)
    {
        var e = new Dictionary<string, string> { ["model.embed_tokens.weight"] = "50x32", ["model.norm.weight"] = "32" };
        for (int i = 0; i < 2; i++)
        {
            string p = $"model.layers.{i}.";
            e[p + "self_attn.q_proj.weight"] = "32x32";
            e[p + "self_attn.k_proj.weight"] = "16x32";
            e[p + "self_attn.v_proj.weight"] = "16x32";
            e[p + "self_attn.o_proj.weight"] = "32x32";
            if (qkvBias)
            {
                e[p + "self_attn.q_proj.bias"] = "32";
                e[p + "self_attn.k_proj.bias"] = "16";
                e[p + "self_attn.v_proj.bias"] = "16";
            }
            if (oBias) e[p + "self_attn.o_proj.bias"] = "32";
            e[p + "mlp.gate_proj.weight"] = "64x32";
            e[p + "mlp.up_proj.weight"] = "64x32";
            e[p + "mlp.down_proj.weight"] = "32x64";
            e[p + "input_layernorm.weight"] = "32";
            e[p + "post_attention_layernorm.weight"] = "32";
        }
        if (lmHead) e["lm_head.weight"] = "50x32";
        if (score) e["score.weight"] = "1x32";
        return e;
    }

    [Fact]
    public void LlamaNamesAndShapes() =>
        Assert.Equal(Expected(false, false, true).OrderBy(x => x.Key),
            Shapes(LlamaForCausalLM.Create(TinyModels.Config("llama"), torch.CPU, ScalarType.Float32, 1)).OrderBy(x => x.Key));

    [Fact]
    public void LlamaAttentionBiasHasQkvoBias() =>
        Assert.Equal(Expected(true, true, true).OrderBy(x => x.Key),
            Shapes(LlamaForCausalLM.Create(TinyModels.Config("llama", attentionBias: true), torch.CPU, ScalarType.Float32, 1)).OrderBy(x => x.Key));

    [Fact]
    public void Qwen2HasQkvBiasNoOBias() =>
        Assert.Equal(Expected(true, false, true).OrderBy(x => x.Key),
            Shapes(LlamaForCausalLM.Create(TinyModels.Config("qwen2"), torch.CPU, ScalarType.Float32, 1)).OrderBy(x => x.Key));

    [Fact]
    public void TiedEmbeddingsHaveNoLmHead()
    {
        var m = LlamaForCausalLM.Create(TinyModels.Config("qwen2", tied: true), torch.CPU, ScalarType.Float32, 1);
        Assert.Equal(Expected(true, false, false).OrderBy(x => x.Key), Shapes(m).OrderBy(x => x.Key));
        // logits use the embedding matrix
        using var noGrad = torch.no_grad();
        var h = torch.randn(1, 3, 32);
        var emb = m.state_dict()["model.embed_tokens.weight"];
        Assert.True(TinyModels.MaxAbsDiff(m.Logits(h), h.matmul(emb.t())) < 1e-5);
    }

    [Fact]
    public void SequenceClassifierNames() =>
        Assert.Equal(Expected(false, false, false, score: true).OrderBy(x => x.Key),
            Shapes(LlamaForSequenceClassification.Create(TinyModels.Config("llama"), torch.CPU, ScalarType.Float32, 1)).OrderBy(x => x.Key));

    [Fact]
    public void HfInitStatistics()
    {
        var cfg = TinyModels.Config("qwen2") with { HiddenSize = 64, NumAttentionHeads = 4, NumKeyValueHeads = 2 };
        var sd = LlamaForCausalLM.Create(cfg, torch.CPU, ScalarType.Float32, 3).state_dict();
        Assert.True(sd["model.norm.weight"].eq(1).all().item<bool>());
        Assert.True(sd["model.layers.0.self_attn.q_proj.bias"].eq(0).all().item<bool>());
        double std = sd["model.embed_tokens.weight"].std().item<float>();
        Assert.InRange(std, 0.018, 0.022);
        var again = LlamaForCausalLM.Create(cfg, torch.CPU, ScalarType.Float32, 3).state_dict();
        Assert.True(TinyModels.Same(sd["lm_head.weight"], again["lm_head.weight"]));
    }
}
