using Rlhf.Inference.Rollout;

namespace Rlhf.Inference.Serving;

/// <summary>Settings of <c>serve rollout</c>.</summary>
public sealed record RolloutServeOptions
{
    /// <summary>
    /// The policy: an ONNX folder (genai_config.json + model.onnx + tokenizer files), a stage folder holding one in
    /// <c>onnx/</c> (what <c>rlhf sft</c>, <c>ppo</c> and <c>dpo</c> write), or an HF model folder (exported by
    /// <see cref="ExportHfFolder"/>; see <see cref="PolicyFolder"/>).
    /// </summary>
    public required string Model { get; init; }
    /// <summary>Exports an HF model folder to a temporary ONNX folder and returns it (<c>rlhf serve</c> has one; <c>rlhf-serve</c>, without TorchSharp, does not).</summary>
    public Func<string, string>? ExportHfFolder { get; init; }
    /// <summary>TCP port (gRPC and HTTP on the same port).</summary>
    public required int Port { get; init; }
    /// <summary>Address to listen on: 127.0.0.1 (this machine only), or 0.0.0.0 / :: (every interface, e.g. in a pod).</summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>ONNX Runtime intra-op threads; 0 = all cores.</summary>
    public int Threads { get; init; }
    /// <summary>The engine: <see cref="RolloutEngineKind.Ort"/> or <see cref="RolloutEngineKind.Genai"/> (a replica has no TorchSharp, so no torch).</summary>
    public RolloutEngineKind Engine { get; init; } = RolloutEngineKind.Ort;
    /// <summary>File holding the bearer token callers must send; null = no authentication.</summary>
    public string? TokenFile { get; init; }
    /// <summary>Most sequences per request (prompts × n) and per engine batch; larger requests get a 400 / INVALID_ARGUMENT.</summary>
    public int MaxBatch { get; init; } = 256;
    /// <summary>Most sequences waiting for the engine; beyond it a call gets 429 (Retry-After: 1) / RESOURCE_EXHAUSTED.</summary>
    public int MaxQueue { get; init; } = 1024;
    /// <summary>Logs as JSON lines (one object per event, a request log included) instead of plain text (<c>--log-format json</c>).</summary>
    public bool JsonLogs { get; init; }
    /// <summary>How concurrent calls share the engine (<c>--batching</c>): continuous (ours; GenAI falls back to call boundary) or call boundary.</summary>
    public BatchingMode Batching { get; init; } = BatchingMode.Continuous;

    /// <summary>Throws <see cref="ArgumentException"/> naming the option to change.</summary>
    public RolloutServeOptions Validate()
    {
        ServeChecks.Common(Host, Port, Threads, TokenFile, MaxBatch);
        if (MaxQueue < 1) throw new ArgumentException($"--max-queue must be >= 1; got {MaxQueue}.");
        if (Engine == RolloutEngineKind.Torch) throw new ArgumentException("serve rollout runs ONNX engines (no TorchSharp in a replica); use --engine ort or genai.");
        if (!Directory.Exists(Model)) throw new ArgumentException($"--model '{Model}' is not a folder; give an ONNX policy folder, a stage folder (its onnx/) or an HF model folder.");
        return this;
    }

    /// <summary>
    /// The ONNX folder that serves <see cref="Model"/>: an ONNX folder as it is; a stage folder's <c>onnx/</c>; an HF model
    /// folder (config.json + safetensors) through <see cref="ExportHfFolder"/>, or, without one, an error that says how to export it.
    /// </summary>
    public string PolicyFolder()
    {
        static bool IsOnnx(string f) => File.Exists(Path.Combine(f, "model.onnx")) || File.Exists(Path.Combine(f, "genai_config.json"));
        if (IsOnnx(Model)) return Model;
        string stage = Path.Combine(Model, "onnx");
        if (IsOnnx(stage)) return stage;
        if (File.Exists(Path.Combine(Model, "config.json")) && Directory.EnumerateFiles(Model, "*.safetensors").Any())
            return ExportHfFolder?.Invoke(Model) ?? throw new ArgumentException(
                $"--model '{Model}' is an HF model folder without an ONNX export: export it (rlhf export --model {Model} --out {Path.Combine(Model, "onnx")}) " +
                "or serve it with `rlhf serve rollout`, which exports it first.");
        throw new ArgumentException($"--model '{Model}' holds no model.onnx, genai_config.json, onnx/ folder or HF model (config.json + safetensors).");
    }
}

/// <summary>Settings of <c>serve reward</c>.</summary>
public sealed record RewardServeOptions
{
    /// <summary>Reward model: our RM's ONNX folder or an external sequence-classification ONNX folder/file.</summary>
    public required string RewardModel { get; init; }
    /// <summary>TCP port.</summary>
    public required int Port { get; init; }
    /// <summary>Address to listen on (see <see cref="RolloutServeOptions.Host"/>).</summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>ONNX Runtime intra-op threads; 0 = all cores.</summary>
    public int Threads { get; init; }
    /// <summary>File holding the bearer token callers must send; null = no authentication.</summary>
    public string? TokenFile { get; init; }
    /// <summary>Most texts per request.</summary>
    public int MaxBatch { get; init; } = 1024;
    /// <summary>Logs as JSON lines (see <see cref="RolloutServeOptions.JsonLogs"/>).</summary>
    public bool JsonLogs { get; init; }

    /// <summary>Throws <see cref="ArgumentException"/> naming the option to change.</summary>
    public RewardServeOptions Validate()
    {
        ServeChecks.Common(Host, Port, Threads, TokenFile, MaxBatch);
        if (!Directory.Exists(RewardModel) && !File.Exists(RewardModel))
            throw new ArgumentException($"--reward-model '{RewardModel}' does not exist; give an ONNX reward folder or .onnx file.");
        return this;
    }
}

/// <summary>Checks and token reading shared by the servers' options.</summary>
public static class ServeChecks
{
    public static void Common(string host, int port, int threads, string? tokenFile, int maxBatch)
    {
        if (!System.Net.IPAddress.TryParse(host, out _)) throw new ArgumentException($"--host must be an IP address (127.0.0.1, 0.0.0.0, ::); got '{host}'.");
        if (port is < 1 or > 65535) throw new ArgumentException($"--port must be in [1, 65535]; got {port}.");
        if (threads < 0) throw new ArgumentException($"--threads must be >= 0 (0 = all cores); got {threads}.");
        if (maxBatch < 1) throw new ArgumentException($"--max-batch must be >= 1; got {maxBatch}.");
        if (tokenFile is not null && !File.Exists(tokenFile)) throw new ArgumentException($"--token-file '{tokenFile}' does not exist.");
    }

    /// <summary>The token in <paramref name="tokenFile"/> (trimmed; must be non-empty).</summary>
    public static string? ReadToken(string? tokenFile)
    {
        if (tokenFile is null) return null;
        string token = File.ReadAllText(tokenFile).Trim();
        if (token.Length == 0) throw new ArgumentException($"--token-file '{tokenFile}' is empty; put the bearer token in it.");
        return token;
    }
}
