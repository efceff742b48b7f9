namespace Rlhf.Inference.Serving;

/// <summary>Which engine a rollout replica runs.</summary>
public enum ServeEngine
{
    /// <summary>Our ONNX Runtime engine (<see cref="Rollout.RolloutEngine"/>).</summary>
    Ort,
    /// <summary>ONNX Runtime GenAI (<see cref="Rollout.GenAiRolloutEngine"/>).</summary>
    Genai,
}

/// <summary>Settings of <c>serve rollout</c>.</summary>
public sealed record RolloutServeOptions
{
    /// <summary>ONNX policy folder (genai_config.json + model.onnx + tokenizer files).</summary>
    public required string Model { get; init; }
    /// <summary>TCP port (gRPC and HTTP on the same port).</summary>
    public required int Port { get; init; }
    /// <summary>Address to listen on: 127.0.0.1 (this machine only), or 0.0.0.0 / :: (every interface, e.g. in a pod).</summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>ONNX Runtime intra-op threads; 0 = all cores.</summary>
    public int Threads { get; init; }
    /// <summary>The engine.</summary>
    public ServeEngine Engine { get; init; } = ServeEngine.Ort;
    /// <summary>File holding the bearer token callers must send; null = no authentication.</summary>
    public string? TokenFile { get; init; }
    /// <summary>Most sequences per request (prompts × n); larger requests get a 400 / INVALID_ARGUMENT.</summary>
    public int MaxBatch { get; init; } = 256;

    /// <summary>Throws <see cref="ArgumentException"/> naming the option to change.</summary>
    public RolloutServeOptions Validate()
    {
        ServeChecks.Common(Host, Port, Threads, TokenFile, MaxBatch);
        if (!Directory.Exists(Model)) throw new ArgumentException($"--model '{Model}' is not a folder; give an ONNX policy folder (rlhf export --kind policy).");
        return this;
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
