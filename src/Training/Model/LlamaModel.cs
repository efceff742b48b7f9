using Rlhf.Export.Hf;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>
/// The decoder trunk (HF <c>LlamaModel</c>): token embedding, layers, final norm. State dict (under the
/// <c>model.</c> prefix of the heads): <c>embed_tokens.weight</c> [V, H], <c>layers.{i}.*</c>, <c>norm.weight</c> [H].
/// </summary>
public sealed class LlamaModel : nn.Module
{
    readonly Embedding embed_tokens;
    readonly ModuleList<LlamaDecoderLayer> layers;
    readonly RmsNorm norm;

    /// <summary>The configuration the trunk was built from.</summary>
    public ModelConfig Config { get; }

    /// <summary>Creates the trunk with TorchSharp default init (the heads re-initialise it).</summary>
    public LlamaModel(ModelConfig c, Device? device, ScalarType dtype) : base(nameof(LlamaModel))
    {
        c.Validate();
        Config = c;
        embed_tokens = nn.Embedding(c.VocabSize, c.HiddenSize, device: device, dtype: dtype);
        layers = new ModuleList<LlamaDecoderLayer>(
            Enumerable.Range(0, c.NumHiddenLayers).Select(_ => new LlamaDecoderLayer(c, device, dtype)).ToArray());
        norm = new RmsNorm(c.HiddenSize, c.RmsNormEps, device, dtype);
        RegisterComponents();
    }

    /// <summary>Arithmetic precision of forward/backward (see <see cref="Model.Precision"/>); fp32 unless a trainer sets it.</summary>
    public Precision Precision { get; set; }

    /// <summary>The LoRA adapters of the decoder's projections (null = none; see <see cref="AttachLora"/>).</summary>
    public LoraAdapters? Lora { get; private set; }

    /// <summary>
    /// Recompute each decoder layer's activations in the backward pass instead of keeping them (<see cref="Checkpoint"/>);
    /// applies to forwards that record gradients without a KV cache. Same gradients, less memory, one more forward per layer.
    /// </summary>
    public bool GradientCheckpointing { get; set; }

    /// <summary>
    /// Adds adapters to the projections named by <paramref name="settings"/> in every layer (A drawn from a CPU generator
    /// seeded with <paramref name="seed"/>, layer by layer, q/k/v/o then gate/up/down; B = 0). Once only.
    /// </summary>
    public LoraAdapters AttachLora(LoraSettings settings, long seed)
    {
        if (Lora is not null) throw new InvalidOperationException("The model already carries LoRA adapters.");
        if (!settings.Enabled) throw new ArgumentException("LoRA rank must be ≥ 1 to attach adapters.");
        var adapters = new LoraAdapters(settings);
        using var gen = new torch.Generator((ulong)seed, torch.CPU);
        for (int i = 0; i < layers.Count; i++) layers[i].AttachLora(adapters, $"model.layers.{i}.", gen);
        return Lora = adapters;
    }

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        if (disposing) Lora?.Dispose();
        base.Dispose(disposing);
    }

    /// <summary>The token embedding [V, H] (also the output projection when embeddings are tied).</summary>
    public Parameter EmbedWeight => embed_tokens.weight!;

    /// <summary>
    /// inputIds [B, S] int64; attentionMask [B, T] (T = cached + S, 1 = real token); positionIds [B, S] int64;
    /// cache: optional, appended to. Returns the final hidden states [B, S, H] (after <c>norm</c>).
    /// </summary>
    public Tensor Forward(Tensor inputIds, Tensor attentionMask, Tensor positionIds, KvCache? cache = null)
    {
        long past = cache?.Length ?? 0;
        CheckShapes(inputIds, attentionMask, positionIds, past);
        if (cache is not null && cache.NumLayers != Config.NumHiddenLayers)
            throw new ArgumentException($"KvCache has {cache.NumLayers} layers; the model has {Config.NumHiddenLayers}.");
        using var scope = torch.NewDisposeScope();
        var keyPositions = Config.SlidingWindow is null ? null : attentionMask.cumsum(1, ScalarType.Int64) - 1;   // [B, T]
        return scope.MoveToOuter(Layers(inputIds, positionIds, AttentionMask(attentionMask, inputIds.shape[1]), cache, keyPositions));
    }

    /// <summary>Final hidden states [R, L, H] of packed sequences (<see cref="PackedBatch"/>; no cache).</summary>
    public Tensor Forward(PackedBatch packed)
    {
        using var scope = torch.NewDisposeScope();
        return scope.MoveToOuter(Layers(packed.InputIds, packed.PositionIds, packed.Allowed, null, packed.PositionIds));
    }

    /// <summary>
    /// Embedding, decoder layers and final norm: ids/positions [B, S], mask [B, 1, S, T] bool -> [B, S, H]. Layers with a
    /// sliding window (<see cref="ModelConfig.WindowOf"/>) use the mask narrowed by <see cref="SlidingBand"/>, which needs
    /// the keys' positions [B, T] (null without a window).
    /// </summary>
    Tensor Layers(Tensor inputIds, Tensor positionIds, Tensor mask, KvCache? cache, Tensor? keyPositions)
    {
        var compute = Precision.ComputeDtype();
        var h = embed_tokens.forward(inputIds);                                          // [B, S, H]
        var (cos, sin) = Rope.CosSin(positionIds, Config, h.dtype);
        Tensor? windowed = null;
        if (Config.SlidingWindow is int w)
        {
            windowed = mask.logical_and(SlidingBand(positionIds, keyPositions!, w));      // [B, 1, S, T]
            windowed = windowed.logical_or(windowed.any(-1, keepdim: true).logical_not()); // padding queries: open, as in AttentionMask
        }
        bool recompute = GradientCheckpointing && cache is null && torch.is_grad_enabled();
        for (int i = 0; i < layers.Count; i++)
        {
            var layer = layers[i];
            var m = Config.WindowOf(i) is null ? mask : windowed!;
            int index = i;
            h = recompute ? Checkpoint.Run(t => layer.Forward(t[0], t[1], t[2], t[3], null, index, compute), h, cos, sin, m)
                          : layer.Forward(h, cos, sin, m, cache, i, compute);
        }
        return norm.forward(h);
    }

    /// <summary>
    /// Sliding-window band: queryPositions [B, S], keyPositions [B, T] int64 -> [B, 1, S, T] bool, true where
    /// p_q − p_k &lt; W (HF Mistral/Qwen2 mask key j for query i when i − j ≥ sliding_window). Positions rather than slots,
    /// so a row whose real tokens are not contiguous (right-padded prompt, then decode) still sees its last W tokens;
    /// for contiguous rows (left padding, packed sequences) the two agree. Causality and padding come from the other mask.
    /// </summary>
    public static Tensor SlidingBand(Tensor queryPositions, Tensor keyPositions, int window)
    {
        using var scope = torch.NewDisposeScope();
        var distance = queryPositions.unsqueeze(2) - keyPositions.unsqueeze(1);          // [B, S, T]
        return scope.MoveToOuter(distance.lt(window).unsqueeze(1));
    }

    /// <summary>
    /// attentionMask [B, T] (1 = real) and S queries (the last S of T positions) -> [B, 1, S, T] bool, true where
    /// key j is real and j ≤ the query's position (causal). Rows with no allowed key (queries at left padding) are
    /// opened fully so softmax stays finite; their outputs are never read.
    /// </summary>
    public static Tensor AttentionMask(Tensor attentionMask, long s)
    {
        using var scope = torch.NewDisposeScope();
        long t = attentionMask.shape[1];
        var dev = attentionMask.device;
        var qPos = torch.arange(t - s, t, ScalarType.Int64, dev).view(s, 1);               // [S, 1]
        var kPos = torch.arange(0, t, ScalarType.Int64, dev).view(1, t);                   // [1, T]
        var causal = kPos.le(qPos);                                                        // [S, T]
        var allowed = causal.unsqueeze(0).logical_and(attentionMask.ne(0).unsqueeze(1));  // [B, S, T]
        allowed = allowed.logical_or(allowed.any(-1, keepdim: true).logical_not());
        return scope.MoveToOuter(allowed.unsqueeze(1));
    }

    internal static void CheckShapes(Tensor inputIds, Tensor attentionMask, Tensor positionIds, long past)
    {
        static string S(Tensor t) => "[" + string.Join(", ", t.shape) + "]";
        if (inputIds.dim() != 2) throw new ArgumentException($"inputIds must be [B, S], got {S(inputIds)}.");
        long b = inputIds.shape[0], s = inputIds.shape[1];
        if (attentionMask.dim() != 2 || attentionMask.shape[0] != b || attentionMask.shape[1] != past + s)
            throw new ArgumentException($"attentionMask must be [B, cached + S] = [{b}, {past + s}], got {S(attentionMask)}.");
        if (positionIds.dim() != 2 || positionIds.shape[0] != b || positionIds.shape[1] != s)
            throw new ArgumentException($"positionIds must be [B, S] = [{b}, {s}], got {S(positionIds)}.");
    }
}
