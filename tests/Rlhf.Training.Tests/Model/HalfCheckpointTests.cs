using System.Text;
using System.Text.Json.Nodes;
using Rlhf.Training.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Tests.Model;

/// <summary>
/// HF folders as other tools write them loaded as models: a transformers-style Qwen2 <c>config.json</c> (rope_theta 1e6,
/// tied embeddings, a sliding window that does not bite) and F16 or BF16 <c>model.safetensors</c> written here byte by
/// byte, not by our writer. The loaded model's logits must equal those of the source model with its weights rounded the same way.
/// </summary>
public sealed class HalfCheckpointTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("rlhf-half-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>A tiny Qwen2 config.json in the layout transformers writes (extra keys it adds included).</summary>
    static string Qwen2Config(string torchDtype) => $$"""
    {
      "architectures": [
        "Qwen2ForCausalLM"
      ],
      "attention_dropout": 0.0,
      "bos_token_id": 1,
      "eos_token_id": 2,
      "hidden_act": "silu",
      "hidden_size": 32,
      "initializer_range": 0.02,
      "intermediate_size": 64,
      "max_position_embeddings": 128,
      "max_window_layers": 2,
      "model_type": "qwen2",
      "num_attention_heads": 4,
      "num_hidden_layers": 2,
      "num_key_value_heads": 2,
      "rms_norm_eps": 1e-06,
      "rope_theta": 1000000.0,
      "sliding_window": 128,
      "tie_word_embeddings": true,
      "torch_dtype": "{{torchDtype}}",
      "transformers_version": "4.43.1",
      "use_cache": true,
      "use_sliding_window": false,
      "vocab_size": 50
    }
    """;

    /// <summary>Writes a safetensors file by the spec: u64 header length, JSON header, raw little-endian tensor bytes.</summary>
    static void WriteSafeTensors(string path, IReadOnlyDictionary<string, Tensor> tensors, ScalarType dtype, string dtypeName)
    {
        var header = new JsonObject { ["__metadata__"] = new JsonObject { ["format"] = "pt" } };
        var blobs = new List<byte[]>();
        long offset = 0;
        foreach (var (name, t) in tensors)
        {
            byte[] bytes = t.to(dtype).contiguous().bytes.ToArray();
            header[name] = new JsonObject
            {
                ["dtype"] = dtypeName,
                ["shape"] = new JsonArray([.. t.shape.Select(d => (JsonNode)d)]),
                ["data_offsets"] = new JsonArray(offset, offset + bytes.Length),
            };
            blobs.Add(bytes);
            offset += bytes.Length;
        }
        byte[] h = Encoding.UTF8.GetBytes(header.ToJsonString());
        using var fs = File.Create(path);
        fs.Write(BitConverter.GetBytes((ulong)h.Length));
        fs.Write(h);
        foreach (var b in blobs) fs.Write(b);
    }

    [Theory]
    [InlineData("float16", "F16", ScalarType.Float16)]
    [InlineData("bfloat16", "BF16", ScalarType.BFloat16)]
    public void HalfPrecisionFolderLoadsAsAModel(string torchDtype, string stDtype, ScalarType dtype)
    {
        string folder = Path.Combine(_dir, torchDtype);
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "config.json"), Qwen2Config(torchDtype));
        var cfg = Rlhf.Export.Hf.ModelConfig.Load(Path.Combine(folder, "config.json"));
        Assert.Equal((1_000_000.0, true, torchDtype), (cfg.RopeTheta, cfg.TieWordEmbeddings, cfg.TorchDtype));

        using var source = TinyModels.Randomized(cfg, 17);
        var state = source.state_dict();
        Assert.DoesNotContain("lm_head.weight", state.Keys);                 // tied: transformers stores no lm_head either
        WriteSafeTensors(Path.Combine(folder, "model.safetensors"), state, dtype, stDtype);

        // The reference: the source model with every weight rounded to the half type and back.
        using (var noGrad = torch.no_grad())
            foreach (var (_, p) in source.named_parameters()) p.copy_(p.to(dtype).to(ScalarType.Float32));
        using var loaded = LlamaForCausalLM.FromPretrained(folder, CPU, ScalarType.Float32);
        foreach (var (name, p) in loaded.named_parameters()) Assert.True(TinyModels.Same(state[name], p), name);

        long[] ids = [1, 7, 3, 22, 41, 9, 30];
        using var expected = TinyModels.RowLogits(source, ids);
        using var actual = TinyModels.RowLogits(loaded, ids);
        Assert.True(TinyModels.MaxAbsDiff(expected, actual) < 1e-5f);

        // loaded in its own precision the weights are the file's values exactly
        using var half = LlamaForCausalLM.FromPretrained(folder, CPU, dtype);
        foreach (var (name, p) in half.named_parameters())
        {
            Assert.Equal(dtype, p.dtype);
            Assert.True(TinyModels.Same(state[name].to(dtype), p), name);
        }
    }
}
