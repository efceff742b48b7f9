using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Rlhf.Inference.Rollout;

namespace Rlhf.Inference.Services;

/// <summary>One tensor of a <see cref="PolicyWeights"/> message: ONNX initializer name, element type, shape as the graph stores it, bytes.</summary>
/// <param name="Name">Initializer (or weight input) name of the engine's graph, e.g. <c>model.layers.0.mlp.up_proj.weight</c>.</param>
/// <param name="DType">Element type: <c>float32</c> (what remote pushes carry), or <c>int8</c> in an in-process message to an int8 rollout graph.</param>
/// <param name="Shape">Shape as stored in the graph (projections transposed, [in, out]).</param>
/// <param name="ByteLength">Bytes of the tensor's row-major data.</param>
public sealed record WeightTensorInfo(string Name, string DType, long[] Shape, long ByteLength)
{
    /// <summary>The element type remote pushes carry.</summary>
    public const string Float32 = "float32";

    /// <summary>The quantized projections of an int8 rollout graph (in-process messages only).</summary>
    public const string Int8 = "int8";

    /// <summary>Throws <see cref="ArgumentException"/> unless the entry is a float32 tensor whose byte length matches its shape.</summary>
    public WeightTensorInfo Validate()
    {
        if (string.IsNullOrEmpty(Name)) throw new ArgumentException("A weight tensor has an empty name.");
        if (DType != Float32) throw new ArgumentException($"Weight '{Name}' has dtype '{DType}'; pushes to a replica carry {Float32} only.");
        if (Shape is null || Shape.Any(d => d < 0)) throw new ArgumentException($"Weight '{Name}' has a missing or negative dimension.");
        long expected = Shape.Aggregate(1L, (a, d) => a * d) * sizeof(float);
        if (ByteLength != expected)
            throw new ArgumentException($"Weight '{Name}' declares {ByteLength} bytes; shape [{string.Join(", ", Shape)}] of {DType} holds {expected}.");
        return this;
    }
}

/// <summary>
/// A weight update as a message: the weights version (the PPO iteration that produced them), a manifest of tensors in
/// the ONNX initializer layout the engine's graph reads, the tensors' bytes, and a SHA-256 over those bytes in manifest
/// order. In process the bytes stay where the trainer put them (<see cref="FromBuffers"/>: pointers, no copy); a remote
/// push streams the same bytes and the receiver checks the hash (<see cref="FromArrays"/>). A service that receives a
/// <see cref="PolicyWeights"/> owns it and disposes it when the next update replaces it.
/// </summary>
public sealed class PolicyWeights : IDisposable
{
    readonly Dictionary<string, WeightBuffer> _buffers;
    readonly Lazy<string> _sha256;
    IDisposable? _owner;

    PolicyWeights(ulong version, IReadOnlyList<WeightTensorInfo> manifest, Dictionary<string, WeightBuffer> buffers, IDisposable? owner)
    {
        Version = version;
        Manifest = manifest;
        _buffers = buffers;
        _owner = owner;
        _sha256 = new Lazy<string>(() => HashOf(this));
    }

    /// <summary>Weights version: the PPO iteration after whose update they were taken (0 = the model the engine was opened with).</summary>
    public ulong Version { get; }

    /// <summary>
    /// For an adapter push: the fingerprint of the base it was trained on (<c>rlhf.lora_base</c> of a LoRA-input graph,
    /// <c>Rlhf.Export.Onnx.LoraBase</c>); an engine whose graph holds another base refuses it. Null = not stated.
    /// </summary>
    public string? Base { get; private init; }

    /// <summary>The tensors, in the order their bytes are hashed and streamed.</summary>
    public IReadOnlyList<WeightTensorInfo> Manifest { get; }

    /// <summary>Name -> buffer (pointer or array) the engines read.</summary>
    public IReadOnlyDictionary<string, WeightBuffer> Buffers => _buffers;

    /// <summary>Lower-case hex SHA-256 over every tensor's bytes in manifest order (computed on first use).</summary>
    public string Sha256 => _sha256.Value;

    /// <summary>Bytes of all tensors.</summary>
    public long TotalBytes => Manifest.Sum(m => m.ByteLength);

    /// <summary>
    /// The in-process message: the buffers as they are (no copy), ordered by name. <paramref name="owner"/> keeps their
    /// memory alive and is disposed with this message.
    /// </summary>
    public static PolicyWeights FromBuffers(ulong version, IReadOnlyDictionary<string, WeightBuffer> buffers, IDisposable? owner = null, string? baseFingerprint = null)
    {
        ArgumentNullException.ThrowIfNull(buffers);
        var manifest = new List<WeightTensorInfo>(buffers.Count);
        var copy = new Dictionary<string, WeightBuffer>(StringComparer.Ordinal);
        foreach (var (name, w) in buffers.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            w.Validate();
            if (w.Name != name) throw new ArgumentException($"Weight key '{name}' names a buffer called '{w.Name}'.");
            manifest.Add(new WeightTensorInfo(name, w.Element == WeightElement.Int8 ? WeightTensorInfo.Int8 : WeightTensorInfo.Float32, w.Shape, w.ByteLength));
            copy[name] = w;
        }
        return new PolicyWeights(version, manifest, copy, owner) { Base = baseFingerprint };
    }

    /// <summary>
    /// A received message: <paramref name="data"/>[i] holds the bytes of <paramref name="manifest"/>[i]; the hash over
    /// them must equal <paramref name="sha256"/> (else <see cref="InvalidDataException"/>).
    /// </summary>
    public static PolicyWeights FromArrays(ulong version, IReadOnlyList<WeightTensorInfo> manifest, IReadOnlyList<float[]> data, string sha256, string? baseFingerprint = null)
    {
        if (manifest.Count != data.Count) throw new ArgumentException($"{manifest.Count} manifest entries but {data.Count} tensors.");
        var buffers = new Dictionary<string, WeightBuffer>(StringComparer.Ordinal);
        for (int i = 0; i < manifest.Count; i++)
        {
            var m = manifest[i].Validate();
            if (!buffers.TryAdd(m.Name, new WeightBuffer(m.Name, m.Shape, data[i]))) throw new ArgumentException($"Weight '{m.Name}' appears twice in the manifest.");
            buffers[m.Name].Validate();
        }
        var w = new PolicyWeights(version, manifest, buffers, null) { Base = baseFingerprint };
        if (!string.Equals(w.Sha256, sha256, StringComparison.OrdinalIgnoreCase))
            throw new InvalidDataException($"Weights version {version}: SHA-256 of the received bytes is {w.Sha256}, the sender declared {sha256}; the push was corrupted or incomplete.");
        return w;
    }

    /// <summary>The bytes of tensor <paramref name="name"/> (valid while this message is alive).</summary>
    public unsafe ReadOnlySpan<byte> Bytes(string name)
    {
        var w = _buffers[name];
        return w.Array is not null
            ? MemoryMarshal.AsBytes(w.Array.AsSpan())
            : new ReadOnlySpan<byte>((void*)w.Pointer, checked((int)w.ByteLength));
    }

    static string HashOf(PolicyWeights w)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var m in w.Manifest) sha.AppendData(w.Bytes(m.Name));
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    /// <summary>Releases the memory behind the buffers (the owner given to <see cref="FromBuffers"/>).</summary>
    public void Dispose()
    {
        Interlocked.Exchange(ref _owner, null)?.Dispose();
    }
}
