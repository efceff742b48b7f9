using Google.FlatBuffers;

namespace Rlhf.Export.Onnx;

/// <summary>One named float32 tensor of an adapter: row-major <paramref name="Data"/> of shape <paramref name="Dims"/>.</summary>
public sealed record AdapterTensor(string Name, long[] Dims, float[] Data);

/// <summary>
/// Writes ONNX Runtime's LoRA adapter file (<c>.onnx_adapter</c>), the one <c>OrtLoraAdapter</c> and ONNX Runtime
/// GenAI's <c>Adapters.LoadAdapter</c> read: a FlatBuffers buffer with file identifier <c>TORT</c>, root table
/// <c>Adapter</c> { 0 format_version: int (must be 1), 1 adapter_version: int, 2 model_version: int,
/// 3 parameters: [Parameter] } and <c>Parameter</c> { 0 name: string, 1 dims: [int64], 2 data_type: int32 (ONNX's
/// TensorProto enum, FLOAT = 1), 3 raw_data: [uint8] aligned to 8 bytes } (onnxruntime/lora/adapter_format/adapter_schema.fbs).
/// At run time each parameter is fed as the graph input of the same name.
/// </summary>
public static class OnnxAdapterFile
{
    /// <summary>The file extension GenAI and Olive use.</summary>
    public const string Extension = ".onnx_adapter";
    /// <summary>The only format version ONNX Runtime 1.31 accepts.</summary>
    public const int FormatVersion = 1;
    const int FloatType = 1;

    /// <summary>The adapter file's bytes (little-endian float32 data).</summary>
    public static byte[] Build(IReadOnlyList<AdapterTensor> tensors, int adapterVersion = 1, int modelVersion = 1)
    {
        if (tensors.Count == 0) throw new ArgumentException("An adapter needs at least one tensor.");
        foreach (var t in tensors)
            if (t.Dims.Aggregate(1L, (a, d) => a * d) != t.Data.LongLength)
                throw new ArgumentException($"Adapter tensor '{t.Name}': shape [{string.Join(", ", t.Dims)}] holds {t.Dims.Aggregate(1L, (a, d) => a * d)} values, data has {t.Data.LongLength}.");
        long bytes = tensors.Sum(t => t.Data.LongLength * 4 + 64 + t.Name.Length);
        if (bytes > int.MaxValue / 2) throw new ArgumentException($"An adapter of {bytes / 1e9:F1} GB is more than one FlatBuffers buffer holds (1 GB).");
        var fb = new FlatBufferBuilder((int)bytes + 1024);
        var parameters = new Offset<Table>[tensors.Count];
        for (int i = 0; i < tensors.Count; i++)
        {
            var t = tensors[i];
            var name = fb.CreateString(t.Name);
            fb.StartVector(sizeof(long), t.Dims.Length, sizeof(long));
            for (int d = t.Dims.Length - 1; d >= 0; d--) fb.AddLong(t.Dims[d]);   // vectors are built back to front
            var dims = fb.EndVector();
            byte[] raw = new byte[t.Data.Length * sizeof(float)];
            Buffer.BlockCopy(t.Data, 0, raw, 0, raw.Length);
            if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("The adapter format is little-endian.");
            fb.StartVector(1, raw.Length, 8);   // force_align: 8
            fb.Add(raw);
            var data = fb.EndVector();
            fb.StartTable(4);
            fb.AddOffset(3, data.Value, 0);
            fb.AddInt(2, FloatType, 0);
            fb.AddOffset(1, dims.Value, 0);
            fb.AddOffset(0, name.Value, 0);
            parameters[i] = new Offset<Table>(fb.EndTable());
        }
        fb.StartVector(sizeof(int), parameters.Length, sizeof(int));
        for (int i = parameters.Length - 1; i >= 0; i--) fb.AddOffset(parameters[i].Value);
        var list = fb.EndVector();
        fb.StartTable(4);
        fb.AddOffset(3, list.Value, 0);
        fb.AddInt(2, modelVersion, 0);
        fb.AddInt(1, adapterVersion, 0);
        fb.AddInt(0, FormatVersion, 0);
        int root = fb.EndTable();
        fb.Finish(root, "TORT");
        return fb.SizedByteArray();
    }

    /// <summary>Writes <see cref="Build"/>'s bytes to <paramref name="path"/> atomically.</summary>
    public static void Write(string path, IReadOnlyList<AdapterTensor> tensors, int adapterVersion = 1, int modelVersion = 1) =>
        AtomicFile.WriteAllBytes(path, Build(tensors, adapterVersion, modelVersion));
}
