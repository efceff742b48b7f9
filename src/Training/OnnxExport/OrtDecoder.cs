using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace Rlhf.Training.OnnxExport;

/// <summary>
/// A minimal ONNX Runtime runner for an exported policy folder (either graph kind), used by the parity check, the
/// export tests and the benchmark. Inputs are plain arrays; the KV cache stays in ORT memory between calls
/// (<see cref="DecoderStep"/> owns the outputs and is fed back as the next call's past).
/// </summary>
public sealed class OrtDecoder : IDisposable
{
    readonly InferenceSession _session;
    readonly string[] _outputNames;

    /// <summary>Layers, KV heads and head size read from the graph's <c>past_key_values.0.key</c> input.</summary>
    public int Layers { get; }
    /// <summary>KV heads.</summary>
    public int KvHeads { get; }
    /// <summary>Head size.</summary>
    public int HeadDim { get; }
    /// <summary>Whether the graph takes <c>position_ids</c> (the plain graph does, the GQA graph does not).</summary>
    public bool TakesPositionIds { get; }

    /// <summary>Opens <c>model.onnx</c> of <paramref name="folder"/> with <paramref name="threads"/> intra-op threads.</summary>
    public OrtDecoder(string folder, int threads)
    {
        string path = Path.Combine(folder, "model.onnx");
        if (!File.Exists(path)) throw new FileNotFoundException($"{folder} has no model.onnx.", path);
        using var options = new SessionOptions { IntraOpNumThreads = Math.Max(1, threads), InterOpNumThreads = 1 };
        _session = new InferenceSession(path, options);
        _outputNames = [.. _session.OutputNames];
        var meta = _session.InputMetadata;
        if (!meta.TryGetValue("past_key_values.0.key", out var past))
            throw new InvalidDataException($"{path} has no past_key_values.0.key input; is it a decoder exported by `rlhf export`?");
        Layers = meta.Keys.Count(k => k.StartsWith("past_key_values.", StringComparison.Ordinal) && k.EndsWith(".key", StringComparison.Ordinal));
        KvHeads = past.Dimensions[1];
        HeadDim = past.Dimensions[3];
        TakesPositionIds = meta.ContainsKey("position_ids");
    }

    /// <summary>
    /// One forward. ids [B, S], mask [B, T] (T = past + S), positions [B, S] (ignored by the GQA graph; required by the
    /// plain one); <paramref name="past"/>: the previous step, or null for an empty cache. With no past and
    /// <paramref name="pastCapacity"/> &gt; 0 the past is a zeroed buffer of that many slots, as GenAI passes it with
    /// <c>past_present_share_buffer</c> (GQA graph only; its presents then keep that length).
    /// </summary>
    public DecoderStep Run(long[,] ids, long[,] mask, long[,]? positions, DecoderStep? past, int pastCapacity = 0)
    {
        int b = ids.GetLength(0);
        var names = new List<string>();
        var values = new List<OrtValue>();
        var owned = new List<OrtValue>();
        try
        {
            void Add(string name, OrtValue v, bool own) { names.Add(name); values.Add(v); if (own) owned.Add(v); }
            Add("input_ids", I64(ids), true);
            Add("attention_mask", I64(mask), true);
            if (TakesPositionIds)
                Add("position_ids", I64(positions ?? throw new ArgumentException("The plain graph needs position_ids.", nameof(positions))), true);
            for (int i = 0; i < Layers; i++)
                foreach (string kv in new[] { "key", "value" })
                {
                    if (past is not null) Add($"past_key_values.{i}.{kv}", past.Output($"present.{i}.{kv}"), false);
                    else if (pastCapacity > 0)
                        Add($"past_key_values.{i}.{kv}", OrtValue.CreateTensorValueFromMemory(new float[(long)b * KvHeads * pastCapacity * HeadDim],
                            [b, KvHeads, pastCapacity, HeadDim]), true);
                    else Add($"past_key_values.{i}.{kv}", OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance,
                        TensorElementType.Float, [b, KvHeads, 0, HeadDim]), true);
                }
            using var runOptions = new RunOptions();
            var outputs = _session.Run(runOptions, names, values, _outputNames);
            return new DecoderStep(_outputNames, outputs);
        }
        finally
        {
            foreach (var v in owned) v.Dispose();
        }
    }

    static OrtValue I64(long[,] a)
    {
        var flat = new long[a.Length];
        Buffer.BlockCopy(a, 0, flat, 0, a.Length * sizeof(long));
        return OrtValue.CreateTensorValueFromMemory(flat, [a.GetLength(0), a.GetLength(1)]);
    }

    /// <inheritdoc/>
    public void Dispose() => _session.Dispose();
}

/// <summary>The outputs of one <see cref="OrtDecoder.Run"/> (logits and presents), kept in ORT memory until disposed.</summary>
public sealed class DecoderStep : IDisposable
{
    readonly IDisposableReadOnlyCollection<OrtValue> _outputs;
    readonly Dictionary<string, int> _index;

    internal DecoderStep(string[] names, IDisposableReadOnlyCollection<OrtValue> outputs)
    {
        _outputs = outputs;
        _index = names.Select((n, i) => (n, i)).ToDictionary(x => x.n, x => x.i, StringComparer.Ordinal);
    }

    /// <summary>An output by name (owned by this step).</summary>
    public OrtValue Output(string name) => _outputs[_index[name]];

    /// <summary>Shape of the logits [B, S, V].</summary>
    public long[] LogitsShape => Output("logits").GetTensorTypeAndShape().Shape;

    /// <summary>Logits [B, S, V] copied out.</summary>
    public float[] Logits() => Output("logits").GetTensorDataAsSpan<float>().ToArray();

    /// <summary>Logits of row <paramref name="b"/> at position <paramref name="s"/> [V].</summary>
    public float[] LogitsAt(int b, int s)
    {
        var shape = LogitsShape;
        int seq = (int)shape[1], v = (int)shape[2];
        return Output("logits").GetTensorDataAsSpan<float>().Slice((b * seq + s) * v, v).ToArray();
    }

    /// <inheritdoc/>
    public void Dispose() => _outputs.Dispose();
}
