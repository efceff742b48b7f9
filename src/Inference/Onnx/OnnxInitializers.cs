namespace Rlhf.Inference.Onnx;

/// <summary>
/// Reads the names and shapes of an ONNX model's initializers straight from the protobuf wire format
/// (ModelProto.graph = 7, GraphProto.initializer = 5, TensorProto.dims = 1, TensorProto.name = 8), skipping all
/// tensor data, so weight overrides can be checked before ONNX Runtime (which does not check them) sees them.
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
