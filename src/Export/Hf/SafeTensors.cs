using System.IO.MemoryMappedFiles;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Export.Hf;

/// <summary>One tensor entry of a safetensors header; offsets are relative to the start of the data section.</summary>
public sealed record SafeTensorInfo(string Name, string Dtype, long[] Shape, long Begin, long End)
{
    /// <summary>Bytes the tensor occupies in the data section.</summary>
    public long ByteLength => End - Begin;
}

/// <summary>A parsed safetensors header: tensors (sorted by offset), <c>__metadata__</c>, and where the data section begins.</summary>
public sealed record SafeTensorHeader(IReadOnlyList<SafeTensorInfo> Tensors, IReadOnlyDictionary<string, string> Metadata, long DataStart);

/// <summary>
/// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N,
/// N bytes of JSON <c>{"__metadata__": {...}, name: {"dtype", "shape", "data_offsets": [begin, end]}}</c>
/// (padded with spaces to a multiple of 8), then the raw little-endian tensor bytes.
/// Reads memory-map the file and copy each tensor in bounded chunks (no whole-file <c>byte[]</c>);
/// writes go to a temporary file that is renamed over the target.
/// </summary>
public static class SafeTensors
{
    /// <summary>Largest header accepted (the reference implementation uses the same 100 MB bound).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    /// <summary>Bytes copied per step between the file and a tensor (spans are int-sized; tensors may be larger).</summary>
    internal static int CopyChunkBytes = 1 << 28;

    /// <summary>The safetensors dtype string for a TorchSharp scalar type.</summary>
    public static string DtypeName(ScalarType t) => t switch
    {
        ScalarType.Float32 => "F32",
        ScalarType.BFloat16 => "BF16",
        ScalarType.Float16 => "F16",
        ScalarType.Float64 => "F64",
        ScalarType.Int64 => "I64",
        ScalarType.Int32 => "I32",
        ScalarType.Int16 => "I16",
        ScalarType.Int8 => "I8",
        ScalarType.Byte => "U8",
        ScalarType.Bool => "BOOL",
        _ => throw new NotSupportedException($"dtype {t} has no safetensors equivalent."),
    };

    /// <summary>The TorchSharp scalar type for a safetensors dtype string, or null when unknown.</summary>
    public static ScalarType? ParseDtype(string s) => s switch
    {
        "F32" => ScalarType.Float32,
        "BF16" => ScalarType.BFloat16,
        "F16" => ScalarType.Float16,
        "F64" => ScalarType.Float64,
        "I64" => ScalarType.Int64,
        "I32" => ScalarType.Int32,
        "I16" => ScalarType.Int16,
        "I8" => ScalarType.Int8,
        "U8" => ScalarType.Byte,
        "BOOL" => ScalarType.Bool,
        _ => null,
    };

    static int ElementSize(ScalarType t) => t switch
    {
        ScalarType.Float64 or ScalarType.Int64 => 8,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.BFloat16 or ScalarType.Float16 or ScalarType.Int16 => 2,
        _ => 1,
    };

    /// <summary>Reads and validates the header of <paramref name="path"/>.</summary>
    /// <exception cref="InvalidDataException">Truncated file, malformed JSON, unknown dtype, or offsets that do not fit; the message names the file and tensor.</exception>
    public static SafeTensorHeader ReadHeader(string path)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("Safetensors IO needs a little-endian machine.");
        if (!File.Exists(path)) throw new FileNotFoundException($"No safetensors file at {path}.", path);
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        long fileLength = fs.Length;
        if (fileLength < 8) throw new InvalidDataException($"{path}: truncated safetensors file ({fileLength} bytes; the 8-byte header length is missing).");
        Span<byte> lenBytes = stackalloc byte[8];
        fs.ReadExactly(lenBytes);
        ulong n = BitConverter.ToUInt64(lenBytes);
        if (n > (ulong)MaxHeaderBytes) throw new InvalidDataException($"{path}: bad safetensors header length {n} (over {MaxHeaderBytes} bytes; not a safetensors file?).");
        if (8 + (long)n > fileLength) throw new InvalidDataException($"{path}: truncated safetensors file: header needs {n} bytes but only {fileLength - 8} follow the length.");
        var headerBytes = new byte[n];
        fs.ReadExactly(headerBytes);
        long dataStart = 8 + (long)n, dataLength = fileLength - dataStart;

        JsonObject root;
        try { root = JsonNode.Parse(headerBytes)?.AsObject() ?? throw new InvalidDataException("null"); }
        catch (Exception e) when (e is JsonException or InvalidOperationException or InvalidDataException)
        { throw new InvalidDataException($"{path}: bad safetensors header (not a JSON object: {e.Message})."); }

        var meta = new Dictionary<string, string>();
        var infos = new List<SafeTensorInfo>();
        foreach (var (name, node) in root)
        {
            if (name == "__metadata__")
            {
                if (node is JsonObject mo)
                    foreach (var (k, v) in mo) meta[k] = v?.ToString() ?? "";
                continue;
            }
            infos.Add(ParseEntry(path, name, node, dataLength));
        }
        infos.Sort((a, b) => a.Begin != b.Begin ? a.Begin.CompareTo(b.Begin) : a.End.CompareTo(b.End));
        for (int i = 1; i < infos.Count; i++)
            if (infos[i].Begin < infos[i - 1].End)
                throw new InvalidDataException($"{path}: bad safetensors header: tensors '{infos[i - 1].Name}' and '{infos[i].Name}' overlap.");
        return new SafeTensorHeader(infos, meta, dataStart);
    }

    static SafeTensorInfo ParseEntry(string path, string name, JsonNode? node, long dataLength)
    {
        string Where() => $"{path}: tensor '{name}'";
        if (node is not JsonObject o) throw new InvalidDataException($"{Where()}: header entry is not an object.");
        string dtype;
        long[] shape;
        long begin, end;
        try
        {
            dtype = o["dtype"]?.GetValue<string>() ?? throw new InvalidDataException("missing 'dtype'");
            shape = (o["shape"] as JsonArray ?? throw new InvalidDataException("missing 'shape'")).Select(x => x!.GetValue<long>()).ToArray();
            var offs = o["data_offsets"] as JsonArray ?? throw new InvalidDataException("missing 'data_offsets'");
            if (offs.Count != 2) throw new InvalidDataException("'data_offsets' must have two numbers");
            begin = offs[0]!.GetValue<long>();
            end = offs[1]!.GetValue<long>();
        }
        catch (Exception e) when (e is InvalidDataException or InvalidOperationException or FormatException or NullReferenceException)
        { throw new InvalidDataException($"{Where()}: bad safetensors header entry ({e.Message})."); }

        var st = ParseDtype(dtype) ?? throw new InvalidDataException($"{Where()}: unknown dtype '{dtype}' (supported: F32, BF16, F16, F64, I64, I32, I16, I8, U8, BOOL).");
        if (shape.Any(d => d < 0)) throw new InvalidDataException($"{Where()}: negative dimension in shape [{string.Join(", ", shape)}].");
        long numel = shape.Aggregate(1L, (a, d) => a * d);
        if (begin < 0 || end < begin) throw new InvalidDataException($"{Where()}: bad data_offsets [{begin}, {end}].");
        if (end - begin != numel * ElementSize(st))
            throw new InvalidDataException($"{Where()}: data_offsets [{begin}, {end}] hold {end - begin} bytes but {dtype}[{string.Join(", ", shape)}] needs {numel * ElementSize(st)}.");
        if (end > dataLength)
            throw new InvalidDataException($"{Where()}: truncated safetensors file: the tensor needs data bytes [{begin}, {end}) but the data section has {dataLength} bytes.");
        return new SafeTensorInfo(name, dtype, shape, begin, end);
    }

    /// <summary>
    /// Reads tensors from one safetensors file into new CPU tensors (then moved to <paramref name="device"/>).
    /// </summary>
    /// <param name="path">The file.</param>
    /// <param name="dtype">Convert floating tensors to this type; null keeps the stored dtype.</param>
    /// <param name="device">Target device; null means CPU.</param>
    /// <param name="include">Reads only names for which this returns true; null reads all.</param>
    public static Dictionary<string, Tensor> Read(string path, ScalarType? dtype = null, Device? device = null, Func<string, bool>? include = null)
    {
        var header = ReadHeader(path);
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var wanted = header.Tensors.Where(t => include is null || include(t.Name)).ToList();
        if (wanted.Count == 0) return result;

        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        using var mmf = MemoryMappedFile.CreateFromFile(fs, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
        using var view = mmf.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        unsafe
        {
            byte* basePtr = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref basePtr);
            try
            {
                byte* data = basePtr + view.PointerOffset + header.DataStart;
                foreach (var info in wanted)
                {
                    var stored = ParseDtype(info.Dtype)!.Value;
                    var t = torch.empty(info.Shape, stored, torch.CPU);
                    try
                    {
                        CopyFrom(t, data + info.Begin, info.ByteLength);
                        if (dtype is ScalarType want && want != stored && t.is_floating_point())
                            Replace(ref t, t.to(want));
                        if (device is not null && device.type != DeviceType.CPU)
                            Replace(ref t, t.to(device));
                    }
                    catch { t.Dispose(); throw; }
                    result[info.Name] = t;
                }
            }
            catch
            {
                foreach (var t in result.Values) t.Dispose();
                throw;
            }
            finally { view.SafeMemoryMappedViewHandle.ReleasePointer(); }
        }
        return result;
    }

    static void Replace(ref Tensor t, Tensor next)
    {
        t.Dispose();
        t = next;
    }

    static unsafe void CopyFrom(Tensor t, byte* src, long byteLength)
    {
        if (byteLength == 0) return;
        using var flat = t.view(-1);
        long elem = ElementSize(t.dtype), numel = flat.shape[0];
        long chunk = Math.Max(1, CopyChunkBytes / elem);
        for (long off = 0; off < numel; off += chunk)
        {
            long count = Math.Min(chunk, numel - off);
            using var part = flat.narrow(0, off, count);
            new ReadOnlySpan<byte>(src + off * elem, checked((int)(count * elem))).CopyTo(part.bytes);
        }
    }

    /// <summary>
    /// Writes tensors (any device, any layout) to <paramref name="path"/> atomically, names in ordinal order,
    /// with <c>__metadata__ {"format": "pt"}</c> plus <paramref name="metadata"/>.
    /// </summary>
    /// <param name="dtype">Stored dtype for floating tensors (F32, BF16 or F16); null keeps each tensor's dtype.</param>
    /// <returns>Total bytes of tensor data written.</returns>
    public static long Write(string path, IReadOnlyDictionary<string, Tensor> tensors, ScalarType? dtype = null,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("Safetensors IO needs a little-endian machine.");
        if (dtype is ScalarType d && d is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new ArgumentException($"Safetensors weights are written as float32, bfloat16 or float16, not {d}.", nameof(dtype));
        var names = tensors.Keys.OrderBy(k => k, StringComparer.Ordinal).ToList();
        var header = new JsonObject();
        var meta = new JsonObject { ["format"] = "pt" };
        if (metadata is not null) foreach (var (k, v) in metadata) meta[k] = v;
        header["__metadata__"] = meta;
        var stored = new ScalarType[names.Count];
        long offset = 0;
        for (int i = 0; i < names.Count; i++)
        {
            var t = tensors[names[i]];
            stored[i] = dtype is ScalarType want && t.is_floating_point() ? want : t.dtype;
            long bytes = t.numel() * ElementSize(stored[i]);
            header[names[i]] = new JsonObject
            {
                ["dtype"] = DtypeName(stored[i]),
                ["shape"] = new JsonArray(t.shape.Select(x => (JsonNode)x).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        int padded = (json.Length + 7) / 8 * 8;

        AtomicFile.WriteStream(path, fs =>
        {
            fs.Write(BitConverter.GetBytes((ulong)padded));
            fs.Write(json);
            for (int i = json.Length; i < padded; i++) fs.WriteByte((byte)' ');
            for (int i = 0; i < names.Count; i++)
            {
                using var scope = torch.NewDisposeScope();
                var c = tensors[names[i]].detach().to(stored[i]).cpu().contiguous();
                WriteTensor(fs, c);
            }
        }, bufferSize: 1 << 20);
        return offset;
    }

    static void WriteTensor(Stream s, Tensor t)
    {
        long numel = t.numel();
        if (numel == 0) return;
        using var flat = t.view(-1);
        long elem = ElementSize(t.dtype);
        long chunk = Math.Max(1, CopyChunkBytes / elem);
        for (long off = 0; off < numel; off += chunk)
        {
            using var part = flat.narrow(0, off, Math.Min(chunk, numel - off));
            s.Write(part.bytes);
        }
    }

    /// <summary>Bytes a tensor takes when stored with <paramref name="dtype"/> (floating tensors) or its own dtype.</summary>
    public static long StoredBytes(Tensor t, ScalarType? dtype) =>
        t.numel() * ElementSize(dtype is ScalarType d && t.is_floating_point() ? d : t.dtype);
}
