using System.Diagnostics;
using System.Text.Json;
using Rlhf.Export.Hf;
using Rlhf.Export.Onnx;
using TorchSharp;

namespace Rlhf.Export;

/// <summary>Where exported weights came from and how to write the folder.</summary>
public sealed record ExportOptions
{
    /// <summary>Folder holding tokenizer files to copy (null: none copied).</summary>
    public string? TokenizerFolder { get; init; }
    /// <summary>Replace an existing output folder.</summary>
    public bool Overwrite { get; init; }
    /// <summary>Stage name for the manifest (sft, rm, ppo, export).</summary>
    public string Stage { get; init; } = "export";
    /// <summary>Source folder for the manifest; its <c>config.json</c> bytes are hashed when present.</summary>
    public string? Parent { get; init; }
    /// <summary>Policies: weights as initializers (a plain GenAI folder) or as graph inputs fed at run time.</summary>
    public WeightPlacement Weights { get; init; } = WeightPlacement.Initializers;
    /// <summary>Policies: float32 or weight-only int8 projections (int8 needs the GroupQueryAttention graph).</summary>
    public RolloutPrecision Precision { get; init; } = RolloutPrecision.Fp32;
    /// <summary>Policies: LoRA factors as graph inputs that an <c>.onnx_adapter</c> feeds (<see cref="LlamaContribGraph.Build"/>; the GroupQueryAttention graph).</summary>
    public bool LoraInputs { get; init; }
    /// <summary>With <see cref="LoraInputs"/>: the base's <see cref="LoraBase.Fingerprint"/> when the caller has it already (null: computed from the weights).</summary>
    public string? LoraBaseFingerprint { get; init; }
}

/// <summary>What an export wrote.</summary>
/// <param name="Folder">The output folder.</param>
/// <param name="Manifest">The manifest as written (parity not yet measured).</param>
/// <param name="Saved">The ONNX files.</param>
/// <param name="TokenizerFiles">Tokenizer files copied.</param>
public sealed record ExportResult(string Folder, ExportManifest Manifest, OnnxSaveResult Saved, IReadOnlyList<string> TokenizerFiles);

/// <summary>
/// Writes ONNX model folders: policies in the ONNX Runtime GenAI layout (<c>genai_config.json</c>, <c>model.onnx</c>,
/// <c>model.onnx.data</c>, tokenizer files, <c>rlhf_manifest.json</c>), reward/value models as <c>model.onnx</c>
/// (+ data), tokenizer files and the manifest (GenAI has no reward-model type, so no genai_config.json).
/// Folders are built in a temp folder and renamed into place (<see cref="ModelFolderWriter"/>).
/// </summary>
public static class PolicyExport
{
    /// <summary>The ONNX file name inside an exported folder.</summary>
    public const string ModelFile = "model.onnx";
    /// <summary>The GenAI config file name.</summary>
    public const string GenAiConfigFile = "genai_config.json";

    /// <summary>Exports a causal LM. <paramref name="weights"/> use HF names (a TorchSharp state dict or a safetensors read).</summary>
    public static ExportResult Export(ModelConfig cfg, IReadOnlyDictionary<string, torch.Tensor> weights, string outFolder,
        GraphKind graph, ExportOptions? options = null)
    {
        options ??= new ExportOptions();
        cfg.Validate();
        if (options.Precision == RolloutPrecision.Int8 && graph != GraphKind.ContribGqa)
            throw new ArgumentException("int8 rollout graphs are built on the GroupQueryAttention graph (--graph gqa; head_dim a multiple of 16); " +
                                        $"this export asks for the {ExportNames.Name(graph)} graph.");
        if (options.LoraInputs && graph != GraphKind.ContribGqa)
            throw new ArgumentException($"LoRA adapter inputs are built on the GroupQueryAttention graph (--graph gqa); this export asks for the {ExportNames.Name(graph)} graph.");
        var sw = Stopwatch.StartNew();
        OnnxSaveResult? saved = null;
        IReadOnlyList<string> tok = [];
        ExportManifest? manifest = null;
        ModelFolderWriter.Write(outFolder, options.Overwrite, tmp =>
        {
            var builder = graph switch
            {
                GraphKind.Plain => LlamaGraph.Build(cfg, weights),
                GraphKind.ContribGqa => LlamaContribGraph.Build(cfg, weights, int8: options.Precision == RolloutPrecision.Int8, loraInputs: options.LoraInputs),
                _ => throw new ArgumentOutOfRangeException(nameof(graph), graph, null),
            };
            if (options.LoraInputs) builder.Metadata[LoraBase.MetadataKey] = options.LoraBaseFingerprint ?? LoraBase.Fingerprint(weights);   // the base an adapter must be made for
            if (options.Weights == WeightPlacement.Inputs) builder.WeightsToInputs();
            saved = builder.Save(tmp, ModelFile);
            AtomicFile.WriteAllText(Path.Combine(tmp, GenAiConfigFile),
                GenAiConfig.Build(cfg, graph, ModelFile).ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
            tok = options.TokenizerFolder is string tf ? ModelFolderWriter.CopyTokenizer(tf, tmp) : [];
            manifest = NewManifest(cfg, options, ModelKind.Policy, graph, saved, sw.Elapsed.TotalSeconds);
            manifest.Save(tmp);
        });
        return new ExportResult(Path.GetFullPath(outFolder), manifest!, InFolder(saved!, outFolder), tok);
    }

    /// <summary>
    /// Exports a reward (<see cref="ModelKind.Reward"/>) or value (<see cref="ModelKind.Value"/>) model with
    /// <see cref="RewardGraph"/>: <c>input_ids</c>, <c>attention_mask</c> -> <c>rewards</c> [B], <c>values</c> [B, S].
    /// </summary>
    public static ExportResult ExportReward(ModelConfig cfg, IReadOnlyDictionary<string, torch.Tensor> weights, string outFolder,
        ModelKind kind, ExportOptions? options = null)
    {
        if (kind == ModelKind.Policy) throw new ArgumentException("ExportReward writes reward or value models; use Export for policies.", nameof(kind));
        options ??= new ExportOptions();
        cfg.Validate();
        var sw = Stopwatch.StartNew();
        OnnxSaveResult? saved = null;
        IReadOnlyList<string> tok = [];
        ExportManifest? manifest = null;
        ModelFolderWriter.Write(outFolder, options.Overwrite, tmp =>
        {
            saved = RewardGraph.Build(cfg, weights).Save(tmp, ModelFile);
            tok = options.TokenizerFolder is string tf ? ModelFolderWriter.CopyTokenizer(tf, tmp) : [];
            manifest = NewManifest(cfg, options, kind, GraphKind.Plain, saved, sw.Elapsed.TotalSeconds);
            manifest.Save(tmp);
        });
        return new ExportResult(Path.GetFullPath(outFolder), manifest!, InFolder(saved!, outFolder), tok);
    }

    /// <summary>The save result with paths in the final folder (it was written in a temp folder).</summary>
    static OnnxSaveResult InFolder(OnnxSaveResult saved, string outFolder)
    {
        string full = Path.GetFullPath(outFolder);
        return saved with
        {
            ModelPath = Path.Combine(full, ModelFile),
            DataPath = saved.DataPath is null ? null : Path.Combine(full, Path.GetFileName(saved.DataPath)),
        };
    }

    /// <summary>SHA-256 of the parent's config.json bytes when it exists, else of the config as SavePretrained writes it.</summary>
    public static string ConfigHash(ModelConfig cfg, string? parent)
    {
        string? path = parent is null ? null : Path.Combine(parent, HfFolder.ConfigFile);
        byte[] bytes = path is not null && File.Exists(path)
            ? File.ReadAllBytes(path)
            : System.Text.Encoding.UTF8.GetBytes(cfg.ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        return ExportManifest.Sha256(bytes);
    }

    static ExportManifest NewManifest(ModelConfig cfg, ExportOptions o, ModelKind kind, GraphKind graph, OnnxSaveResult saved, double seconds) => new()
    {
        Stage = o.Stage,
        Parent = o.Parent is null ? null : Path.GetFullPath(o.Parent),
        ConfigSha256 = ConfigHash(cfg, o.Parent),
        Kind = ExportNames.Name(kind),
        Graph = ExportNames.Name(graph),
        Weights = ExportNames.Name(o.Weights),
        Precision = ExportNames.Name(kind == ModelKind.Policy ? o.Precision : RolloutPrecision.Fp32),
        ModelType = cfg.ModelType,
        Padding = graph == GraphKind.ContribGqa ? "right" : "left or right",
        ExportedAt = DateTimeOffset.UtcNow,
        ExportSeconds = Math.Round(seconds, 3),
        OnnxBytes = saved.ModelBytes + saved.DataBytes,
    };
}
