using System.Text.Json;
using Microsoft.ML.OnnxRuntime;

namespace Rlhf.Inference.Onnx;

/// <summary>
/// The I/O contract of a KV-cached decoder graph, read from the session's metadata (names as ONNX Runtime GenAI
/// uses them): <c>input_ids</c> [B, S], <c>attention_mask</c> [B, T], optional <c>position_ids</c> [B, S],
/// <c>past_key_values.{i}.key|value</c> [B, Hkv, past, D] -> <c>logits</c> [B, S, V], <c>present.{i}.key|value</c>.
/// Works for the plain-ops graph (with position ids, KV grown by concatenation) and the GroupQueryAttention graph
/// (no position ids: GQA derives positions from the mask, so rows must be right-padded and contiguous).
/// </summary>
public sealed record DecoderSignature(
    string InputIds, string AttentionMask, string? PositionIds,
    string[] PastKeys, string[] PastValues, string Logits, string[] PresentKeys, string[] PresentValues,
    int KvHeads, int HeadDim, int VocabSize)
{
    /// <summary>Layers (KV pairs).</summary>
    public int Layers => PastKeys.Length;

    /// <summary>True when positions come from the graph (no <c>position_ids</c> input): right padding, contiguous rows.</summary>
    public bool PositionsFromMask => PositionIds is null;

    /// <summary>Reads the signature of <paramref name="session"/>; names follow <c>genai_config.json</c> in
    /// <paramref name="folder"/> when it has one. Throws listing expected vs found inputs/outputs when it does not fit.</summary>
    public static DecoderSignature Read(InferenceSession session, string? folder)
    {
        string ids = "input_ids", mask = "attention_mask", pos = "position_ids", logits = "logits";
        string pastK = "past_key_values.%d.key", pastV = "past_key_values.%d.value", presK = "present.%d.key", presV = "present.%d.value";
        if (folder is not null && File.Exists(Path.Combine(folder, "genai_config.json")))
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "genai_config.json")));
            if (doc.RootElement.TryGetProperty("model", out var m) && m.TryGetProperty("decoder", out var d))
            {
                if (d.TryGetProperty("inputs", out var inp))
                {
                    ids = Str(inp, "input_ids", ids); mask = Str(inp, "attention_mask", mask); pos = Str(inp, "position_ids", pos);
                    pastK = Str(inp, "past_key_names", pastK); pastV = Str(inp, "past_value_names", pastV);
                }
                if (d.TryGetProperty("outputs", out var outp))
                {
                    logits = Str(outp, "logits", logits);
                    presK = Str(outp, "present_key_names", presK); presV = Str(outp, "present_value_names", presV);
                }
            }
        }
        var inputs = session.InputMetadata;
        var outputs = session.OutputMetadata;
        var problems = new List<string>();
        foreach (string n in new[] { ids, mask }) if (!inputs.ContainsKey(n)) problems.Add($"input '{n}'");
        if (!outputs.ContainsKey(logits)) problems.Add($"output '{logits}'");
        int layers = 0;
        while (inputs.ContainsKey(pastK.Replace("%d", layers.ToString(), StringComparison.Ordinal))) layers++;
        if (layers == 0) problems.Add($"inputs '{pastK.Replace("%d", "0", StringComparison.Ordinal)}' ...");
        string L(string pattern, int i) => pattern.Replace("%d", i.ToString(), StringComparison.Ordinal);
        for (int i = 0; i < layers; i++)
        {
            if (!inputs.ContainsKey(L(pastV, i))) problems.Add($"input '{L(pastV, i)}'");
            if (!outputs.ContainsKey(L(presK, i))) problems.Add($"output '{L(presK, i)}'");
            if (!outputs.ContainsKey(L(presV, i))) problems.Add($"output '{L(presV, i)}'");
        }
        if (problems.Count > 0)
            throw new InvalidDataException(
                "The ONNX model is not a KV-cached decoder this engine can drive. Missing: " + string.Join(", ", problems) +
                ". Expected inputs input_ids [B,S] int64, attention_mask [B,T] int64, optional position_ids [B,S] int64, " +
                "past_key_values.{i}.key|value [B,Hkv,past,D] float; outputs logits [B,S,V], present.{i}.key|value. Found inputs: " +
                Describe(inputs) + "; outputs: " + Describe(outputs) + ". Export with `rlhf export` or map the names in genai_config.json.");
        var kvDims = inputs[L(pastK, 0)].Dimensions;
        var logitDims = outputs[logits].Dimensions;
        if (kvDims.Length != 4 || kvDims[1] <= 0 || kvDims[3] <= 0 || logitDims.Length != 3 || logitDims[2] <= 0)
            throw new InvalidDataException($"Decoder shapes not understood: past key [{string.Join(",", kvDims)}] (want [B, Hkv, past, D] with fixed Hkv, D), " +
                                           $"logits [{string.Join(",", logitDims)}] (want [B, S, V] with fixed V).");
        return new DecoderSignature(ids, mask, inputs.ContainsKey(pos) ? pos : null,
            [.. Enumerable.Range(0, layers).Select(i => L(pastK, i))], [.. Enumerable.Range(0, layers).Select(i => L(pastV, i))], logits,
            [.. Enumerable.Range(0, layers).Select(i => L(presK, i))], [.. Enumerable.Range(0, layers).Select(i => L(presV, i))],
            kvDims[1], kvDims[3], logitDims[2]);
    }

    static string Str(JsonElement e, string key, string fallback) =>
        e.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()! : fallback;

    /// <summary>"name [d0,d1] type" for each entry (symbolic dims by name).</summary>
    public static string Describe(IReadOnlyDictionary<string, NodeMetadata> meta) =>
        string.Join(", ", meta.Select(kv => $"{kv.Key} [{string.Join(",", kv.Value.Dimensions.Select((d, i) => d >= 0 ? d.ToString() : (kv.Value.SymbolicDimensions.ElementAtOrDefault(i) is { Length: > 0 } s ? s : "?")))}] {kv.Value.ElementDataType}"));
}

/// <summary>Where an ONNX model folder's files are: a folder with <c>model.onnx</c> (or the file named in
/// <c>genai_config.json</c>), or a path to an .onnx file.</summary>
public static class OnnxModelPath
{
    /// <summary>(model file, folder) of <paramref name="path"/>; throws with what was looked for.</summary>
    public static (string File, string Folder) Resolve(string path)
    {
        if (File.Exists(path)) return (Path.GetFullPath(path), Path.GetDirectoryName(Path.GetFullPath(path))!);
        if (!Directory.Exists(path)) throw new FileNotFoundException($"ONNX model '{path}' is neither a file nor a folder.");
        string name = "model.onnx";
        string genai = Path.Combine(path, "genai_config.json");
        if (File.Exists(genai))
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(genai));
            if (doc.RootElement.TryGetProperty("model", out var m) && m.TryGetProperty("decoder", out var d) &&
                d.TryGetProperty("filename", out var f) && f.ValueKind == JsonValueKind.String) name = f.GetString()!;
        }
        string file = Path.Combine(path, name);
        if (File.Exists(file)) return (Path.GetFullPath(file), Path.GetFullPath(path));
        var any = Directory.GetFiles(path, "*.onnx");
        if (any.Length == 1) return (Path.GetFullPath(any[0]), Path.GetFullPath(path));
        throw new FileNotFoundException($"No {name} in '{path}'" + (any.Length > 1 ? $" and several .onnx files ({string.Join(", ", any.Select(Path.GetFileName))}); pass the file." : "."));
    }

    /// <summary>Session options with <paramref name="threads"/> intra-op threads (0 = all cores: ORT's own 0 ran one thread here) and full graph optimisation; ORT's thread spinning is off unless <paramref name="spin"/>.
    /// Setting the environment variable <c>RLHF_ORT_PROFILE</c> to a path prefix turns on ORT's per-node profiling (JSON traces).</summary>
    /// <param name="threads">intra-op threads (0 = all cores)</param>
    /// <param name="spin">let worker threads spin between runs</param>
    /// <param name="quiet">log errors only: a graph with LoRA inputs draws one warning per overridable initializer, by design</param>
    public static SessionOptions Options(int threads, bool spin = false, bool quiet = false)
    {
        var o = new SessionOptions
        {
            IntraOpNumThreads = threads > 0 ? threads : Environment.ProcessorCount,
            InterOpNumThreads = 1,
            ExecutionMode = ExecutionMode.ORT_SEQUENTIAL,
            GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL,
        };
        // Worker threads sleep instead of spinning between runs: on these shared 2-core machines spinning cost ORT itself
        // ~45% of its tokens/s and slowed the TorchSharp work that alternates with it in one process (bench rollout).
        if (!spin) o.AddSessionConfigEntry("session.intra_op.allow_spinning", "0");
        if (quiet) o.LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR;
        if (Environment.GetEnvironmentVariable("RLHF_ORT_PROFILE") is { Length: > 0 } prefix) { o.EnableProfiling = true; o.ProfileOutputPathPrefix = prefix; }
        return o;
    }
}
