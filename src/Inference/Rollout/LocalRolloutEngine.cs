using System.Text.Json;

namespace Rlhf.Inference.Rollout;

/// <summary>
/// What both in-process engines (ours and GenAI's) are behind <see cref="Services.IRolloutService"/>: one lock, the
/// weights version, generate calls that check the required version, and the async calls with deadlines over the
/// engines' synchronous <see cref="Generate"/> and <see cref="UpdateWeights"/>.
/// </summary>
public abstract class LocalRolloutEngine : Services.IRolloutService
{
    /// <summary>Serialises generate calls, weight swaps and disposal.</summary>
    protected object Gate { get; } = new();

    /// <summary>The loaded weights version (read and written under <see cref="Gate"/>).</summary>
    protected ulong Version { get; set; }

    /// <inheritdoc/>
    public ulong WeightsVersion { get { lock (Gate) return Version; } }

    /// <inheritdoc/>
    public abstract IReadOnlyDictionary<string, long[]> WeightLayout { get; }

    /// <inheritdoc/>
    public abstract Services.PolicyWeightFormat? WeightFormat { get; }

    /// <inheritdoc/>
    public Task<IReadOnlyList<RolloutResult>> GenerateAsync(IReadOnlyList<RolloutRequest> requests, Services.RolloutCall? call = null, CancellationToken cancellationToken = default)
    {
        call ??= new Services.RolloutCall();
        return Services.ServiceCalls.WithDeadline("Generate", call.Timeout, cancellationToken, ct => Generate(requests, call.RequiredVersion, ct, call.OnToken));
    }

    /// <inheritdoc/>
    public Task<TimeSpan> PushWeightsAsync(Services.PolicyWeights weights, TimeSpan? timeout = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(weights);
        if (weights.Base is { } made && AdapterBase is { } held && !string.Equals(made, held, StringComparison.OrdinalIgnoreCase))
            throw new ArgumentException($"The adapter was made for base {Short(made)}, and this engine's graph holds base {Short(held)} (rlhf.lora_base): " +
                                        "export the base the adapter was trained on (rlhf export --adapter) or push an adapter of this base.");
        return Services.ServiceCalls.WithDeadline("PushWeights", timeout ?? Services.RolloutCall.DefaultTimeout, cancellationToken,
            _ => UpdateWeights(weights.Buffers, weights, weights.Version));

        static string Short(string fingerprint) => fingerprint.Length > 12 ? fingerprint[..12] + "…" : fingerprint;
    }

    /// <summary>For a graph with LoRA inputs, the fingerprint of the base it holds (<c>rlhf.lora_base</c>); null otherwise.</summary>
    public virtual string? AdapterBase => null;

    /// <summary>
    /// Generates a response for each request (in order), all with the weights version loaded when the call starts
    /// (<paramref name="requiredVersion"/>: that version or <see cref="Services.WeightsVersionMismatchException"/>);
    /// <paramref name="onToken"/> as <see cref="Services.RolloutCall.OnToken"/>.
    /// </summary>
    public abstract IReadOnlyList<RolloutResult> Generate(IReadOnlyList<RolloutRequest> requests, ulong? requiredVersion = null, CancellationToken cancellationToken = default,
        Action<SampledToken>? onToken = null);

    /// <summary>
    /// Replaces the policy weights with <paramref name="weights"/> (initializer name -> memory, read in place);
    /// <paramref name="owner"/> keeps that memory alive and is disposed at the next update or on disposal;
    /// <paramref name="version"/> becomes <see cref="WeightsVersion"/> (null: unchanged). Returns the time taken.
    /// </summary>
    public abstract TimeSpan UpdateWeights(IReadOnlyDictionary<string, WeightBuffer> weights, IDisposable? owner = null, ulong? version = null);

    /// <summary>Under <see cref="Gate"/>: throws when <paramref name="requiredVersion"/> is not the loaded version.</summary>
    protected void CheckVersion(ulong? requiredVersion)
    {
        if (requiredVersion is { } v && v != Version) throw new Services.WeightsVersionMismatchException(v, Version);
    }

    /// <summary>Frees the engine.</summary>
    public abstract void Dispose();
}

/// <summary>The token settings of an ONNX Runtime GenAI folder's <c>genai_config.json</c> (model section) both engines read.</summary>
/// <param name="VocabSize">model.vocab_size (null: absent).</param>
/// <param name="EosTokenIds">model.eos_token_id (a number or a list; empty: absent).</param>
/// <param name="PadTokenId">model.pad_token_id (null: absent).</param>
/// <param name="ContextLength">model.context_length: most tokens a sequence may hold, prompt and response (null: absent).</param>
public sealed record GenAiConfigFile(int? VocabSize, int[] EosTokenIds, int? PadTokenId, int? ContextLength)
{
    /// <summary>Reads <c>genai_config.json</c> in <paramref name="folder"/>; a folder without one gives all fields absent.</summary>
    public static GenAiConfigFile Read(string folder)
    {
        string f = Path.Combine(folder, "genai_config.json");
        if (!File.Exists(f)) return new GenAiConfigFile(null, [], null, null);
        using var doc = JsonDocument.Parse(File.ReadAllText(f));
        if (!doc.RootElement.TryGetProperty("model", out var m)) throw new InvalidDataException($"{f} has no \"model\" section.");
        int? Int(string name) => m.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetInt32() : null;
        int[] eos = !m.TryGetProperty("eos_token_id", out var e) ? []
            : e.ValueKind == JsonValueKind.Array ? [.. e.EnumerateArray().Select(x => x.GetInt32())]
            : e.ValueKind == JsonValueKind.Number ? [e.GetInt32()] : [];
        return new GenAiConfigFile(Int("vocab_size"), eos, Int("pad_token_id"), Int("context_length"));
    }
}
