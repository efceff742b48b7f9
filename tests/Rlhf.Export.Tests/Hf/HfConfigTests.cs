using Rlhf.Export.Hf;

namespace Rlhf.Export.Tests.Hf;

/// <summary>
/// <c>config.json</c> files as transformers writes them for released llama, qwen2 and mistral checkpoints (key order,
/// float formatting, nulls and extra keys kept), and the refusals, each with the field named.
/// </summary>
public sealed class HfConfigTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("rlhf-cfg-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    ModelConfig Load(string json)
    {
        string path = Path.Combine(_dir, $"{Guid.NewGuid():N}.json");
        File.WriteAllText(path, json);
        return ModelConfig.Load(path);
    }

    InvalidDataException Refused(string json) => Assert.Throws<InvalidDataException>(() => Load(json));

    /// <summary>TinyLlama-1.1B-Chat-v1.0 (transformers 4.35): explicit <c>rope_scaling: null</c>, <c>pretraining_tp</c>.</summary>
    const string TinyLlama = """
    {
      "architectures": [
        "LlamaForCausalLM"
      ],
      "attention_bias": false,
      "bos_token_id": 1,
      "eos_token_id": 2,
      "hidden_act": "silu",
      "hidden_size": 2048,
      "initializer_range": 0.02,
      "intermediate_size": 5632,
      "max_position_embeddings": 2048,
      "model_type": "llama",
      "num_attention_heads": 32,
      "num_hidden_layers": 22,
      "num_key_value_heads": 4,
      "pretraining_tp": 1,
      "rms_norm_eps": 1e-05,
      "rope_scaling": null,
      "rope_theta": 10000.0,
      "tie_word_embeddings": false,
      "torch_dtype": "bfloat16",
      "transformers_version": "4.35.0",
      "use_cache": true,
      "vocab_size": 32000
    }
    """;

    /// <summary>Qwen2.5-0.5B-Instruct: rope_theta 1e6, a sliding_window equal to the context with use_sliding_window false, tied embeddings.</summary>
    const string Qwen25 = """
    {
      "architectures": [
        "Qwen2ForCausalLM"
      ],
      "attention_dropout": 0.0,
      "bos_token_id": 151643,
      "eos_token_id": 151645,
      "hidden_act": "silu",
      "hidden_size": 896,
      "initializer_range": 0.02,
      "intermediate_size": 4864,
      "max_position_embeddings": 32768,
      "max_window_layers": 21,
      "model_type": "qwen2",
      "num_attention_heads": 14,
      "num_hidden_layers": 24,
      "num_key_value_heads": 2,
      "rms_norm_eps": 1e-06,
      "rope_theta": 1000000.0,
      "sliding_window": 32768,
      "tie_word_embeddings": true,
      "torch_dtype": "bfloat16",
      "transformers_version": "4.43.1",
      "use_cache": true,
      "use_sliding_window": false,
      "vocab_size": 151936
    }
    """;

    /// <summary>Mistral-7B-Instruct-v0.3: <c>sliding_window: null</c>, rope_theta 1e6, head_dim absent.</summary>
    const string Mistral03 = """
    {
      "architectures": [
        "MistralForCausalLM"
      ],
      "attention_dropout": 0.0,
      "bos_token_id": 1,
      "eos_token_id": 2,
      "hidden_act": "silu",
      "hidden_size": 4096,
      "initializer_range": 0.02,
      "intermediate_size": 14336,
      "max_position_embeddings": 32768,
      "model_type": "mistral",
      "num_attention_heads": 32,
      "num_hidden_layers": 32,
      "num_key_value_heads": 8,
      "rms_norm_eps": 1e-05,
      "rope_theta": 1000000.0,
      "sliding_window": null,
      "tie_word_embeddings": false,
      "torch_dtype": "bfloat16",
      "transformers_version": "4.42.0.dev0",
      "use_cache": true,
      "vocab_size": 32768
    }
    """;

    [Fact]
    public void LlamaAsTransformersWritesIt()
    {
        var c = Load(TinyLlama);
        Assert.Equal(("llama", 32000, 2048, 5632, 22), (c.ModelType, c.VocabSize, c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers));
        Assert.Equal((32, 4, 64), (c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim));          // 2048 / 32
        Assert.Equal((2048, 10000.0, 1e-5), (c.MaxPositionEmbeddings, c.RopeTheta, c.RmsNormEps));
        Assert.False(c.TieWordEmbeddings);
        Assert.Equal((1, 2), (c.BosTokenId, c.EosTokenId));
        Assert.Null(c.PadTokenId);
        Assert.Equal("bfloat16", c.TorchDtype);
        Assert.False(c.QkvBias || c.OutputBias);
    }

    [Fact]
    public void Qwen2WithRopeTheta1e6AndAWindowThatDoesNotBite()
    {
        var c = Load(Qwen25);
        Assert.Equal(("qwen2", 151936, 896, 4864, 24), (c.ModelType, c.VocabSize, c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers));
        Assert.Equal((14, 2, 64), (c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim));          // 896 / 14
        Assert.Equal(1_000_000.0, c.RopeTheta);
        Assert.Equal(1e-6, c.RmsNormEps);
        Assert.Equal(32768, c.MaxPositionEmbeddings);
        Assert.True(c.TieWordEmbeddings);
        Assert.True(c.QkvBias);                                                                   // qwen2: q/k/v bias, no o bias
        Assert.False(c.OutputBias);
        Assert.Equal([151645], c.EosTokenIds);

        // use_sliding_window true with a window as long as the context does not bite either
        Assert.Equal(32768, Load(Qwen25.Replace("\"use_sliding_window\": false", "\"use_sliding_window\": true")).MaxPositionEmbeddings);
    }

    [Fact]
    public void MistralWithoutAWindowAndLlama3EosList()
    {
        var c = Load(Mistral03);
        Assert.Equal(("mistral", 32768, 4096, 14336, 32), (c.ModelType, c.VocabSize, c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers));
        Assert.Equal((32, 8, 128), (c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim));
        Assert.Equal(1_000_000.0, c.RopeTheta);
        Assert.False(c.QkvBias || c.OutputBias);
        // mistral with a window at least as long as the context is plain attention
        Assert.Equal(4096, Load(Mistral03.Replace("\"sliding_window\": null", "\"sliding_window\": 32768")).HiddenSize);

        // Llama 3.1 lists several EOS ids and sets head_dim explicitly
        var l3 = Load(TinyLlama.Replace("\"eos_token_id\": 2", "\"eos_token_id\": [128001, 128008, 128009]").Replace("\"hidden_size\": 2048", "\"head_dim\": 32, \"hidden_size\": 2048"));
        Assert.Equal([128001, 128008, 128009], l3.EosTokenIds);
        Assert.Equal(128001, l3.EosTokenId);
        Assert.Equal(32, l3.HeadDim);
    }

    [Fact]
    public void GenerationConfigEosListReplacesConfigs()
    {
        File.WriteAllText(Path.Combine(_dir, "config.json"), TinyLlama);
        Assert.Equal([2], ModelConfig.LoadFolder(_dir).EosTokenIds);                    // no generation_config.json
        // Llama-3-8B-Instruct: config.json says 128001, generation_config.json lists the end-of-turn id too
        File.WriteAllText(Path.Combine(_dir, ModelConfig.GenerationConfigFile),
            """{"bos_token_id": 128000, "eos_token_id": [128001, 128009], "pad_token_id": 7, "do_sample": true, "temperature": 0.6}""");
        var c = ModelConfig.LoadFolder(_dir);
        Assert.Equal([128001, 128009], c.EosTokenIds);
        Assert.Equal((128000, 7), (c.BosTokenId, c.PadTokenId));
        // a single id, and keys it does not set keep config.json's
        File.WriteAllText(Path.Combine(_dir, ModelConfig.GenerationConfigFile), """{"eos_token_id": 5}""");
        c = ModelConfig.LoadFolder(_dir);
        Assert.Equal([5], c.EosTokenIds);
        Assert.Equal((1, (int?)null), (c.BosTokenId, c.PadTokenId));
    }

    [Fact]
    public void SavedConfigReadsBackTheSame()
    {
        var c = Load(Qwen25);
        string path = Path.Combine(_dir, "config.json");
        c.Save(path);
        var back = ModelConfig.Load(path);
        Assert.Equal(c.EosTokenIds, back.EosTokenIds);
        Assert.Equal(64, back.HeadDimOverride);                       // written explicitly, as newer transformers do
        Assert.Equal(c, back with { HeadDimOverride = null, EosTokenIds = c.EosTokenIds });
        string text = File.ReadAllText(path);
        Assert.Contains("\"architectures\": [\n    \"Qwen2ForCausalLM\"\n  ]", text);
        Assert.Contains("\"rope_theta\": 1000000", text);
    }

    const string Llama32Scaling = """ "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}""";

    [Fact]
    public void RopeScalingLlama3AndLinearAreReadAndWrittenBack()
    {
        // Llama 3.2's llama3 scaling
        var c = Load(TinyLlama.Replace("\"rope_scaling\": null", Llama32Scaling));
        Assert.Equal(new RopeScaling { Type = RopeScalingType.Llama3, Factor = 32, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 8192 }, c.RopeScaling);
        string path = Path.Combine(_dir, "config.json");
        c.Save(path);
        Assert.Equal(c.RopeScaling, ModelConfig.Load(path).RopeScaling);
        // linear under the legacy key "type" (Llama 2 era configs)
        var lin = Load(TinyLlama.Replace("\"rope_scaling\": null", """ "rope_scaling": {"type": "linear", "factor": 4.0}"""));
        Assert.Equal(new RopeScaling { Type = RopeScalingType.Linear, Factor = 4 }, lin.RopeScaling);
        lin.Save(path);
        Assert.Equal(lin.RopeScaling, ModelConfig.Load(path).RopeScaling);
        // "default" is plain RoPE
        Assert.Null(Load(TinyLlama.Replace("\"rope_scaling\": null", """ "rope_scaling": {"rope_type": "default"}""")).RopeScaling);
    }

    [Fact]
    public void OtherRopeTypesAreRefusedByName()
    {
        var yarn = Refused(TinyLlama.Replace("\"rope_scaling\": null", """ "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "rope_type": "yarn"}"""));
        Assert.Contains("unsupported config field(s): rope_scaling rope_type 'yarn' (supported: linear, llama3;", yarn.Message);
        Assert.DoesNotContain('\n', yarn.Message);
        var dynamic = Refused(TinyLlama.Replace("\"rope_scaling\": null", """ "rope_scaling": {"factor": 2.0, "type": "dynamic"}"""));
        Assert.Contains("rope_type 'dynamic'", dynamic.Message);
        var incomplete = Refused(TinyLlama.Replace("\"rope_scaling\": null", """ "rope_scaling": {"factor": 8.0, "rope_type": "llama3"}"""));
        Assert.Contains("rope_scaling llama3 needs low_freq_factor, high_freq_factor and original_max_position_embeddings", incomplete.Message);
        var inverted = Refused(TinyLlama.Replace("\"rope_scaling\": null", """ "rope_scaling": {"factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}"""));
        Assert.Contains("high_freq_factor (1) > low_freq_factor (4) > 0", inverted.Message);
    }

    [Fact]
    public void SlidingWindowsFollowTransformersPerModelType()
    {
        // Mistral-7B-v0.1: sliding_window 4096 < max_position_embeddings 32768, every layer
        var m = Load(Mistral03.Replace("\"sliding_window\": null", "\"sliding_window\": 4096"));
        Assert.Equal((4096, 0), (m.SlidingWindow, m.FirstSlidingLayer));
        Assert.Equal(4096, m.WindowOf(0));
        Assert.Equal(4096, m.WindowOf(31));
        Assert.Null(Load(Mistral03).SlidingWindow);
        Assert.Equal(4096, Load(Mistral03.Replace("\"sliding_window\": null,", "")).SlidingWindow);   // transformers' default when absent
        Assert.Null(Load(Mistral03.Replace("\"sliding_window\": null", "\"sliding_window\": 32768")).SlidingWindow);
        // Qwen2: only with use_sliding_window true, and only layers i >= max_window_layers
        string qwenSliding = Qwen25.Replace("\"sliding_window\": 32768", "\"sliding_window\": 4096").Replace("\"use_sliding_window\": false", "\"use_sliding_window\": true");
        var q = Load(qwenSliding);
        Assert.Equal((4096, 21), (q.SlidingWindow, q.FirstSlidingLayer));
        Assert.Null(q.WindowOf(20));
        Assert.Equal(4096, q.WindowOf(21));
        Assert.Null(Load(Qwen25.Replace("\"sliding_window\": 32768", "\"sliding_window\": 4096")).SlidingWindow);
        Assert.Null(Load(qwenSliding.Replace("\"max_window_layers\": 21", "\"max_window_layers\": 24")).SlidingWindow);   // no layer slides
        // transformers' default max_window_layers is 28
        Assert.Null(Load(qwenSliding.Replace("\"max_window_layers\": 21,", "")).SlidingWindow);
        // layer_types (newer transformers) decides when present
        string types = string.Join(", ", Enumerable.Range(0, 24).Select(i => i < 10 ? "\"full_attention\"" : "\"sliding_attention\""));
        Assert.Equal(10, Load(qwenSliding.Replace("\"max_window_layers\": 21,", $"\"layer_types\": [{types}],")).FirstSlidingLayer);
        string mixed = string.Join(", ", Enumerable.Range(0, 24).Select(i => i % 2 == 0 ? "\"full_attention\"" : "\"sliding_attention\""));
        Assert.Contains("unsupported config field(s): layer_types (only full_attention layers followed by sliding_attention layers",
            Refused(qwenSliding.Replace("\"max_window_layers\": 21,", $"\"layer_types\": [{mixed}],")).Message);
        // both round-trip
        string path = Path.Combine(_dir, "config.json");
        q.Save(path);
        Assert.Equal((4096, 21), (ModelConfig.Load(path).SlidingWindow, ModelConfig.Load(path).FirstSlidingLayer));
        m.Save(path);
        Assert.Equal((4096, 0), (ModelConfig.Load(path).SlidingWindow, ModelConfig.Load(path).FirstSlidingLayer));
    }

    [Fact]
    public void OtherActivationsAndMlpBiasAreRefused()
    {
        var act = Refused(TinyLlama.Replace("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\""));
        Assert.Contains("hidden_act 'gelu' (only silu/SwiGLU)", act.Message);
        var bias = Refused(TinyLlama.Replace("\"attention_bias\": false", "\"attention_bias\": false, \"mlp_bias\": true"));
        Assert.Contains("mlp_bias true", bias.Message);
        Assert.Equal(22, Load(TinyLlama.Replace("\"attention_bias\": false", "\"attention_bias\": false, \"mlp_bias\": false")).NumHiddenLayers);
        // every problem is listed, and the file is named
        var both = Refused(TinyLlama.Replace("\"hidden_act\": \"silu\"", "\"hidden_act\": \"relu\", \"mlp_bias\": true"));
        Assert.Contains("hidden_act 'relu'", both.Message);
        Assert.Contains("mlp_bias true", both.Message);
        Assert.Contains(_dir, both.Message);
        Assert.Contains("model_type 'gemma' is not supported (supported: llama, qwen2, mistral)",
            Refused(TinyLlama.Replace("\"model_type\": \"llama\"", "\"model_type\": \"gemma\"")).Message);
    }
}
