using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>
/// Keys and values of earlier positions for incremental decoding: per layer [B, Hkv, T, D] (after RoPE, before
/// the grouped-query repeat), grown by each forward. The cache owns its tensors; dispose it when done.
/// Cached keys/values are detached: the cache is for inference (no gradient flows through it).
/// </summary>
public sealed class KvCache : IDisposable
{
    readonly Tensor?[] _keys;
    readonly Tensor?[] _values;

    /// <summary>An empty cache for a model with <paramref name="numLayers"/> layers.</summary>
    public KvCache(int numLayers)
    {
        _keys = new Tensor?[numLayers];
        _values = new Tensor?[numLayers];
    }

    /// <summary>Number of layers.</summary>
    public int NumLayers => _keys.Length;

    /// <summary>Cached positions T (of layer 0; all layers agree between forwards).</summary>
    public long Length => _keys[0]?.shape[2] ?? 0;

    /// <summary>Cached keys of a layer [B, Hkv, T, D], or null when empty.</summary>
    public Tensor? Keys(int layer) => _keys[layer];

    /// <summary>Cached values of a layer [B, Hkv, T, D], or null when empty.</summary>
    public Tensor? Values(int layer) => _values[layer];

    /// <summary>
    /// Appends k, v [B, Hkv, S, D] to layer <paramref name="layer"/> and returns the whole [B, Hkv, T+S, D] pair,
    /// owned by the cache (not by any dispose scope).
    /// </summary>
    public (Tensor Keys, Tensor Values) Append(int layer, Tensor k, Tensor v)
    {
        _keys[layer] = Grow(_keys[layer], k);
        _values[layer] = Grow(_values[layer], v);
        return (_keys[layer]!, _values[layer]!);
    }

    static Tensor Grow(Tensor? old, Tensor add)
    {
        var next = old is null ? add.detach().clone() : torch.cat([old, add.detach()], 2);
        next.DetachFromDisposeScope();
        old?.Dispose();
        return next;
    }

    /// <summary>Disposes all cached tensors.</summary>
    public void Dispose()
    {
        for (int i = 0; i < _keys.Length; i++)
        {
            _keys[i]?.Dispose();
            _values[i]?.Dispose();
            _keys[i] = _values[i] = null;
        }
    }
}
