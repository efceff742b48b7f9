namespace Rlhf.Inference.Onnx;

/// <summary>
/// Reads the names and shapes of an ONNX model's initializers and graph inputs, and its metadata, straight from the
/// protobuf wire format (ModelProto.graph = 7, GraphProto.initializer = 5, TensorProto.dims = 1, TensorProto.name = 8),
/// skipping all tensor data, so weight overrides can be checked before ONNX Runtime (which does not check them) sees them.
/// </summary>
public static class OnnxInitializers
{
    /// <summary>Initializer name -> dims of the model file at <paramref name="path"/>.</summary>
    public static Dictionary<string, long[]> Read(string path)
    {
        var result = new Dictionary<string, long[]>(StringComparer.Ordinal);
        using var s = new BufferedStream(File.OpenRead(path), 1 << 16);
        long end = s.Length;
        while (s.Position < end)
        {
            var (field, wire) = Tag(s);
            if (field == 7 && wire == 2)
            {
                long graphEnd = (long)Varint(s) + s.Position;
                while (s.Position < graphEnd)
                {
                    var (gf, gw) = Tag(s);
                    if (gf == 5 && gw == 2)
                    {
                        long tEnd = (long)Varint(s) + s.Position;
                        var dims = new List<long>();
                        string? name = null;
                        while (s.Position < tEnd)
                        {
                            var (tf, tw) = Tag(s);
                            if (tf == 1 && tw == 0) dims.Add((long)Varint(s));
                            else if (tf == 1 && tw == 2)
                            {
                                long dEnd = (long)Varint(s) + s.Position;
                                while (s.Position < dEnd) dims.Add((long)Varint(s));
                            }
                            else if (tf == 8 && tw == 2)
                            {
                                var bytes = new byte[(int)Varint(s)];
                                s.ReadExactly(bytes);
                                name = System.Text.Encoding.UTF8.GetString(bytes);
                            }
                            else Skip(s, tw);
                        }
                        if (name is not null) result[name] = [.. dims];
                    }
                    else Skip(s, gw);
                }
            }
            else Skip(s, wire);
        }
        return result;
    }

    /// <summary>
    /// The model's metadata_props (ModelProto.metadata_props = 14; StringStringEntryProto.key = 1, .value = 2): key ->
    /// value, without reading the graph.
    /// </summary>
    public static Dictionary<string, string> ReadMetadata(string path)
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        using var s = new BufferedStream(File.OpenRead(path), 1 << 16);
        long end = s.Length;
        while (s.Position < end)
        {
            var (field, wire) = Tag(s);
            if (field != 14 || wire != 2) { Skip(s, wire); continue; }
            long entryEnd = (long)Varint(s) + s.Position;
            string key = "", value = "";
            while (s.Position < entryEnd)
            {
                var (ef, ew) = Tag(s);
                if (ef == 1 && ew == 2) key = String(s);
                else if (ef == 2 && ew == 2) value = String(s);
                else Skip(s, ew);
            }
            result[key] = value;
        }
        return result;
    }

    /// <summary>
    /// Graph inputs of the model file at <paramref name="path"/>: name -> dims (null for a symbolic dimension), in graph
    /// order (GraphProto.input = 11; ValueInfoProto.name = 1, .type = 2; TypeProto.tensor_type = 1;
    /// TypeProto.Tensor.shape = 2; TensorShapeProto.dim = 1; Dimension.dim_value = 1).
    /// </summary>
    public static List<(string Name, long?[] Dims)> ReadInputs(string path)
    {
        var result = new List<(string, long?[])>();
        using var s = new BufferedStream(File.OpenRead(path), 1 << 16);
        long end = s.Length;
        while (s.Position < end)
        {
            var (field, wire) = Tag(s);
            if (field != 7 || wire != 2) { Skip(s, wire); continue; }
            long graphEnd = (long)Varint(s) + s.Position;
            while (s.Position < graphEnd)
            {
                var (gf, gw) = Tag(s);
                if (gf != 11 || gw != 2) { Skip(s, gw); continue; }
                long vEnd = (long)Varint(s) + s.Position;
                string? name = null;
                var dims = new List<long?>();
                while (s.Position < vEnd)
                {
                    var (vf, vw) = Tag(s);
                    if (vf == 1 && vw == 2) name = String(s);
                    else if (vf == 2 && vw == 2) Nested(s, 1, () => Nested(s, 2, () => Nested(s, 1, () =>
                    {
                        long? dim = null;
                        long dEnd = (long)Varint(s) + s.Position;
                        while (s.Position < dEnd)
                        {
                            var (df, dw) = Tag(s);
                            if (df == 1 && dw == 0) dim = (long)Varint(s);
                            else Skip(s, dw);
                        }
                        dims.Add(dim);
                    })));
                    else Skip(s, vw);
                }
                if (name is not null) result.Add((name, [.. dims]));
            }
        }
        return result;
    }

    /// <summary>
    /// Reads one length-delimited message, calling <paramref name="onField"/> (which reads that field's own length and
    /// content) for each occurrence of the length-delimited <paramref name="field"/>, skipping every other field.
    /// </summary>
    static void Nested(Stream s, int field, Action onField)
    {
        long end = (long)Varint(s) + s.Position;
        while (s.Position < end)
        {
            var (f, w) = Tag(s);
            if (f == field && w == 2) onField();
            else Skip(s, w);
        }
    }

    static string String(Stream s)
    {
        var bytes = new byte[(int)Varint(s)];
        s.ReadExactly(bytes);
        return System.Text.Encoding.UTF8.GetString(bytes);
    }

    static (int Field, int Wire) Tag(Stream s)
    {
        ulong t = Varint(s);
        return ((int)(t >> 3), (int)(t & 7));
    }

    static ulong Varint(Stream s)
    {
        ulong v = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            int b = s.ReadByte();
            if (b < 0) throw new InvalidDataException("Truncated ONNX file (varint).");
            v |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0) return v;
        }
        throw new InvalidDataException("Malformed ONNX file (varint too long).");
    }

    static void Skip(Stream s, int wire)
    {
        switch (wire)
        {
            case 0: Varint(s); break;
            case 1: s.Seek(8, SeekOrigin.Current); break;
            case 2: s.Seek((long)Varint(s), SeekOrigin.Current); break;
            case 5: s.Seek(4, SeekOrigin.Current); break;
            default: throw new InvalidDataException($"Malformed ONNX file (wire type {wire}).");
        }
    }
}
