using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Rlhf.Export;

/// <summary>ORT-vs-TorchSharp agreement measured right after an export.</summary>
/// <param name="MaxAbsDiff">Largest |ORT − TorchSharp| over the compared outputs (logits, or rewards and values).</param>
/// <param name="Cases">What was compared, e.g. "3 rows (lengths 9, 5, 2), prefill + 4 decode steps".</param>
/// <param name="Device">Where the TorchSharp side ran and in which dtype.</param>
public sealed record ParityFigure(double MaxAbsDiff, string Cases, string Device);

/// <summary>
/// Our own metadata of an exported folder (<c>rlhf_manifest.json</c>), kept out of <c>genai_config.json</c> because
/// GenAI rejects unknown keys.
/// </summary>
public sealed record ExportManifest
{
    /// <summary>File name inside the folder.</summary>
    public const string FileName = "rlhf_manifest.json";

    /// <summary>Manifest format version.</summary>
    public int Format { get; init; } = 1;
    /// <summary>Pipeline stage that produced the weights (sft, rm, ppo, export).</summary>
    public string Stage { get; init; } = "export";
    /// <summary>The folder the weights came from (HF folder or stage output), if any.</summary>
    public string? Parent { get; init; }
    /// <summary>SHA-256 (hex) of the source <c>config.json</c> bytes.</summary>
    public string ConfigSha256 { get; init; } = "";
    /// <summary>policy | reward | value.</summary>
    public string Kind { get; init; } = "policy";
    /// <summary>plain | gqa (reward/value graphs are always plain).</summary>
    public string Graph { get; init; } = "plain";
    /// <summary>initializers | inputs (policies only; see <see cref="WeightPlacement"/>).</summary>
    public string Weights { get; init; } = "initializers";
    /// <summary>fp32 | int8 projections (policies only; see <see cref="RolloutPrecision"/>).</summary>
    public string Precision { get; init; } = "fp32";
    /// <summary>HF model_type.</summary>
    public string ModelType { get; init; } = "llama";
    /// <summary>Padding the graph supports: "left or right" or "right".</summary>
    public string Padding { get; init; } = "left or right";
    /// <summary>UTC time of the export (ISO 8601).</summary>
    public DateTimeOffset ExportedAt { get; init; }
    /// <summary>Seconds the export took (graph build + write).</summary>
    public double ExportSeconds { get; init; }
    /// <summary>Bytes of model.onnx + model.onnx.data.</summary>
    public long OnnxBytes { get; init; }
    /// <summary>Parity against the TorchSharp model, when measured.</summary>
    public ParityFigure? Parity { get; init; }

    /// <summary>snake_case JSON, indented.</summary>
    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.Never,
    };

    /// <summary>Reads <c>rlhf_manifest.json</c> of <paramref name="folder"/>.</summary>
    public static ExportManifest Load(string folder)
    {
        string path = Path.Combine(folder, FileName);
        if (!File.Exists(path)) throw new FileNotFoundException($"{folder} has no {FileName} (was it written by `rlhf export`?).", path);
        try { return JsonSerializer.Deserialize<ExportManifest>(File.ReadAllText(path), Json) ?? throw new InvalidDataException("null"); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not a valid manifest ({e.Message})."); }
    }

    /// <summary>Writes the manifest into <paramref name="folder"/> (temp file + rename).</summary>
    public void Save(string folder) =>
        AtomicFile.WriteAllText(Path.Combine(folder, FileName), JsonSerializer.Serialize(this, Json) + "\n");

    /// <summary>Hex SHA-256 of a byte string (the config hash is of the config.json file's bytes).</summary>
    public static string Sha256(ReadOnlySpan<byte> bytes) => Convert.ToHexStringLower(SHA256.HashData(bytes));
}
