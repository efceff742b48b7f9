using System.Text.Json.Nodes;
using Rlhf.Export.Hf;

namespace Rlhf.Export;

/// <summary>
/// <c>genai_config.json</c> for ONNX Runtime GenAI, with only keys its parser accepts (src/config.cpp: model.type,
/// bos/eos/pad_token_id, context_length, vocab_size, model.decoder {session_options, filename, head_size, hidden_size,
/// inputs, outputs, num_attention_heads, num_hidden_layers, num_key_value_heads}, search {...}), laid out as the
/// GenAI model builder writes it.
/// </summary>
public static class GenAiConfig
{
    /// <summary>The GenAI model type for a HF model_type (GenAI knows llama, qwen2 and mistral by these names).</summary>
    public static string ModelType(ModelConfig cfg) => cfg.ModelType switch
    {
        "llama" or "qwen2" or "mistral" => cfg.ModelType,
        _ => throw new ArgumentException($"model_type '{cfg.ModelType}' has no GenAI model type."),
    };

    /// <summary>
    /// The config object. <paramref name="graph"/> decides the decoder inputs (the plain graph also takes
    /// <c>position_ids</c>) and <c>past_present_share_buffer</c> (true only for the GQA graph, whose past may be the
    /// max_length buffer; the plain graph concatenates past and new keys).
    /// </summary>
    public static JsonObject Build(ModelConfig cfg, GraphKind graph, string fileName = "model.onnx")
    {
        var inputs = new JsonObject { ["input_ids"] = "input_ids", ["attention_mask"] = "attention_mask" };
        if (graph == GraphKind.Plain) inputs["position_ids"] = "position_ids";
        inputs["past_key_names"] = "past_key_values.%d.key";
        inputs["past_value_names"] = "past_key_values.%d.value";
        int eos = cfg.EosTokenId ?? 0;
        var model = new JsonObject
        {
            ["bos_token_id"] = cfg.BosTokenId ?? eos,
            ["context_length"] = cfg.MaxPositionEmbeddings,
            ["decoder"] = new JsonObject
            {
                ["session_options"] = new JsonObject { ["log_id"] = "onnxruntime-genai", ["provider_options"] = new JsonArray() },
                ["filename"] = fileName,
                ["head_size"] = cfg.HeadDim,
                ["hidden_size"] = cfg.HiddenSize,
                ["inputs"] = inputs,
                ["outputs"] = new JsonObject
                {
                    ["logits"] = "logits",
                    ["present_key_names"] = "present.%d.key",
                    ["present_value_names"] = "present.%d.value",
                },
                ["num_attention_heads"] = cfg.NumAttentionHeads,
                ["num_hidden_layers"] = cfg.NumHiddenLayers,
                ["num_key_value_heads"] = cfg.NumKeyValueHeads,
            },
            ["eos_token_id"] = cfg.EosTokenIds.Count > 1 ? new JsonArray(cfg.EosTokenIds.Select(x => (JsonNode)x).ToArray()) : eos,
            ["pad_token_id"] = cfg.PadTokenId ?? eos,
            ["type"] = ModelType(cfg),
            ["vocab_size"] = cfg.VocabSize,
        };
        var search = new JsonObject
        {
            ["diversity_penalty"] = 0.0,
            ["do_sample"] = false,
            ["early_stopping"] = true,
            ["length_penalty"] = 1.0,
            ["max_length"] = cfg.MaxPositionEmbeddings,
            ["min_length"] = 0,
            ["no_repeat_ngram_size"] = 0,
            ["num_beams"] = 1,
            ["num_return_sequences"] = 1,
            ["past_present_share_buffer"] = graph == GraphKind.ContribGqa,
            ["repetition_penalty"] = 1.0,
            ["temperature"] = 1.0,
            ["top_k"] = 1,
            ["top_p"] = 1.0,
        };
        return new JsonObject { ["model"] = model, ["search"] = search };
    }
}
