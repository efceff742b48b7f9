using Microsoft.ML.OnnxRuntime;
using TensorElementType = Microsoft.ML.OnnxRuntime.Tensors.TensorElementType;
using Rlhf.Export.Hf;
using Rlhf.Export.Onnx;
using static TorchSharp.torch;

namespace Rlhf.Export.Tests.Onnx;

/// <summary>Tiny random Llama-family models and an ONNX Runtime session wrapper for the export tests.</summary>
static class TinyModel
{
    /// <summary>V=50, H=32, 2 layers, 4 heads, 2 kv heads (GQA), intermediate 64; variants: llama, qwen2 (q/k/v bias), llama_bias (q/k/v/o bias), tied, mha.</summary>
    public static ModelConfig Config(string variant) => Rlhf.Tests.Shared.TinyLlama.Config(variant, maxPositions: 64);

    /// <summary>Random weights with HF names and shapes (randn·0.1; norms 1 + randn·0.1), seeded.</summary>
    public static Dictionary<string, Tensor> Weights(ModelConfig cfg, IReadOnlyDictionary<string, long[]> shapes, int seed)
    {
        manual_seed(seed);
        var w = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, shape) in shapes.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            var t = randn(shape) * 0.1f;
            if (name.EndsWith("norm.weight", StringComparison.Ordinal)) t = t + 1f;
            w[name] = t.DetachFromDisposeScope();
        }
        return w;
    }

    public static string TempFolder(string tag) =>
        Path.Combine(Path.GetTempPath(), $"rlhf-onnx-{tag}-{Guid.NewGuid():N}");

    /// <summary>Positions 0..n−1 over the real tokens (cumsum(mask) − 1, clamped at 0), as HF generate computes them.</summary>
    public static long[,] PositionsFromMask(long[,] mask)
    {
        int B = mask.GetLength(0), S = mask.GetLength(1);
        var pos = new long[B, S];
        for (int b = 0; b < B; b++)
        {
            long c = 0;
            for (int s = 0; s < S; s++) { c += mask[b, s]; pos[b, s] = Math.Max(c - 1, 0); }
        }
        return pos;
    }

    public static long[,] Slice(long[,] a, int from, int to)
    {
        int B = a.GetLength(0);
        var r = new long[B, to - from];
        for (int b = 0; b < B; b++) for (int s = from; s < to; s++) r[b, s - from] = a[b, s];
        return r;
    }
}

/// <summary>An ONNX Runtime session (2 intra-op threads) that runs with named int64/float inputs and returns float outputs.</summary>
sealed class OrtModel : IDisposable
{
    readonly InferenceSession _session;

    public OrtModel(string path)
    {
        using var options = new SessionOptions { IntraOpNumThreads = 2 };
        _session = new InferenceSession(path, options);
    }

    public IReadOnlyList<string> OutputNames => _session.OutputNames;
    public IReadOnlyList<string> InputNames => _session.InputNames;

    public Dictionary<string, (float[] Data, long[] Shape)> Run(IReadOnlyDictionary<string, OrtValue> inputs)
    {
        using var runOptions = new RunOptions();
        var names = _session.OutputNames.ToArray();
        using var outputs = _session.Run(runOptions, inputs.Keys.ToArray(), inputs.Values.ToArray(), names);
        var result = new Dictionary<string, (float[], long[])>(StringComparer.Ordinal);
        for (int i = 0; i < names.Length; i++)
            result[names[i]] = (outputs[i].GetTensorDataAsSpan<float>().ToArray(), outputs[i].GetTensorTypeAndShape().Shape);
        return result;
    }

    public static OrtValue I64(long[,] a) =>
        OrtValue.CreateTensorValueFromMemory(ReferenceLlama.Flatten(a), [a.GetLength(0), a.GetLength(1)]);

    public static OrtValue F32(float[] data, long[] shape) =>
        data.Length == 0
            ? OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, TensorElementType.Float, shape)
            : OrtValue.CreateTensorValueFromMemory(data, shape);

    public void Dispose() => _session.Dispose();
}
