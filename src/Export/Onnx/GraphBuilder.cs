using System.Globalization;
using Google.Protobuf;
using Rlhf.Export.Onnx.Proto;
using TorchSharp;
using DataType = Rlhf.Export.Onnx.Proto.TensorProto.Types.DataType;

namespace Rlhf.Export.Onnx;

/// <summary>A dimension of a graph input or output: a fixed size or a symbolic name such as <c>batch</c>.</summary>
public readonly record struct Dim
{
    /// <summary>The fixed size, or null when symbolic.</summary>
    public long? Value { get; }
    /// <summary>The symbolic name, or null when fixed.</summary>
    public string? Param { get; }

    Dim(long? value, string? param) { Value = value; Param = param; }

    /// <summary>A fixed dimension.</summary>
    public static implicit operator Dim(long value) => new(value, null);
    /// <summary>A fixed dimension.</summary>
    public static implicit operator Dim(int value) => new(value, null);
    /// <summary>A symbolic dimension.</summary>
    public static implicit operator Dim(string param) => new(null, param);

    /// <inheritdoc/>
    public override string ToString() => Param ?? Value!.Value.ToString(CultureInfo.InvariantCulture);
}

/// <summary>Node attribute constructors (the <c>type</c> discriminator is always set, as IR ≥ 2 requires).</summary>
public static class Attr
{
    /// <summary>An INT attribute.</summary>
    public static AttributeProto Int(string name, long value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = value };
    /// <summary>A FLOAT attribute.</summary>
    public static AttributeProto Float(string name, float value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.Float, F = value };
    /// <summary>An INTS attribute.</summary>
    public static AttributeProto Ints(string name, params long[] values)
    {
        var a = new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Ints };
        a.Ints.AddRange(values);
        return a;
    }
    /// <summary>A FLOATS attribute.</summary>
    public static AttributeProto Floats(string name, params float[] values)
    {
        var a = new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Floats };
        a.Floats.AddRange(values);
        return a;
    }
    /// <summary>A STRING attribute (UTF-8).</summary>
    public static AttributeProto String(string name, string value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.String, S = ByteString.CopyFromUtf8(value) };
    /// <summary>A TENSOR attribute (e.g. the <c>value</c> of Constant or ConstantOfShape).</summary>
    public static AttributeProto Tensor(string name, TensorProto value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.Tensor, T = value };
}

/// <summary>What <see cref="GraphBuilder.Save"/> wrote.</summary>
/// <param name="ModelPath">The <c>.onnx</c> file.</param>
/// <param name="DataPath">The external data file, or null when every initializer was small enough to stay inline.</param>
/// <param name="ModelBytes">Size of the model file.</param>
/// <param name="DataBytes">Size of the data file (0 when none).</param>
/// <param name="ExternalInitializers">How many initializers were written to the data file.</param>
public sealed record OnnxSaveResult(string ModelPath, string? DataPath, long ModelBytes, long DataBytes, int ExternalInitializers);

/// <summary>
/// Builds one ONNX graph: typed inputs/outputs with symbolic dims, initializers (float/int64 arrays or
/// TorchSharp tensors stored as fp32), nodes with attributes, opset imports, and unique value names.
/// <see cref="ToModel"/> gives an in-memory <see cref="ModelProto"/> (all data inline, for small graphs and tests);
/// <see cref="Save"/> writes <c>model.onnx</c> + <c>model.onnx.data</c> with large initializers stored externally
/// at 4096-byte aligned offsets, so models over protobuf's 2 GB limit work.
/// </summary>
/// <remarks>
/// Tensor initializers are read when the model is written, not when added: keep the tensors alive (outside a
/// disposing scope) until <see cref="ToModel"/> or <see cref="Save"/> returns. The builder never disposes them.
/// </remarks>
public sealed class GraphBuilder
{
    /// <summary>Default-domain opset the graphs are written against (ONNX Runtime 1.31 supports it fully).</summary>
    public const int DefaultOpset = 17;
    /// <summary>IR version matching <see cref="DefaultOpset"/>.</summary>
    public const long DefaultIrVersion = 8;
    /// <summary>The contrib-operator domain of ONNX Runtime.</summary>
    public const string MicrosoftDomain = "com.microsoft";
    /// <summary>Initializers of at least this many bytes go to the external data file by default.</summary>
    public const long DefaultExternalThreshold = 1024;
    /// <summary>Alignment of each external tensor's offset (page size, so the file can be memory-mapped).</summary>
    public const int ExternalAlignment = 4096;

    readonly string _graphName;
    readonly Dictionary<string, long> _opsets = new(StringComparer.Ordinal);
    readonly List<ValueInfoProto> _inputs = [];
    readonly List<ValueInfoProto> _outputs = [];
    readonly List<NodeProto> _nodes = [];
    readonly List<Init> _inits = [];
    readonly HashSet<string> _names = new(StringComparer.Ordinal);
    readonly Dictionary<string, string> _constCache = new(StringComparer.Ordinal);
    readonly Dictionary<string, int> _nameCounters = new(StringComparer.Ordinal);
    readonly HashSet<string> _nodeNames = new(StringComparer.Ordinal);

    /// <summary>Prefix for generated value and node names (e.g. <c>layers.3/attn</c>); empty for none.</summary>
    public string Prefix { get; set; } = "";
    /// <summary>Written to <c>ModelProto.producer_name</c>.</summary>
    public string ProducerName { get; set; } = "Rlhf";
    /// <summary>Written to <c>ModelProto.doc_string</c>.</summary>
    public string DocString { get; set; } = "";
    /// <summary>Model metadata (<c>metadata_props</c>).</summary>
    public Dictionary<string, string> Metadata { get; } = new(StringComparer.Ordinal);
    /// <summary>IR version written to the model (by default the one matching the opset).</summary>
    public long IrVersion { get; set; } = DefaultIrVersion;

    /// <summary>Starts a graph importing the default domain at <paramref name="opset"/> and com.microsoft at 1.</summary>
    public GraphBuilder(string graphName, int opset = DefaultOpset)
    {
        if (opset < 13) throw new ArgumentOutOfRangeException(nameof(opset), opset, "Opset 13 or newer is required.");
        _graphName = graphName;
        _opsets[""] = opset;
        _opsets[MicrosoftDomain] = 1;
        IrVersion = IrVersionFor(opset);
    }

    /// <summary>The IR version released with default-domain <paramref name="opset"/> (8 up to opset 18, 9 for 19–20, 10 for 21–22, 11 after).</summary>
    public static long IrVersionFor(int opset) => opset switch { <= 18 => 8, <= 20 => 9, <= 22 => 10, _ => 11 };

    /// <summary>The default-domain opset.</summary>
    public int Opset => (int)_opsets[""];

    /// <summary>Declares (or raises) the opset version imported for <paramref name="domain"/>.</summary>
    public void ImportOpset(string domain, long version) =>
        _opsets[domain] = _opsets.TryGetValue(domain, out long v) ? Math.Max(v, version) : version;

    /// <summary>Returns <paramref name="hint"/> (under <see cref="Prefix"/>) made unique among all value names in the graph, and reserves it.</summary>
    public string UniqueName(string hint)
    {
        string name = Fresh(hint, _names);
        _names.Add(name);
        return name;
    }

    string Fresh(string hint, HashSet<string> taken)
    {
        string baseName = Prefix.Length > 0 ? $"{Prefix}/{hint}" : hint;
        if (!taken.Contains(baseName)) return baseName;
        int n = _nameCounters.GetValueOrDefault(baseName);
        string name;
        do { n++; name = $"{baseName}_{n}"; } while (taken.Contains(name));
        _nameCounters[baseName] = n;
        return name;
    }

    void Reserve(string name)
    {
        if (string.IsNullOrEmpty(name)) throw new ArgumentException("Value names must not be empty.");
        if (!_names.Add(name)) throw new ArgumentException($"The name '{name}' is already used in graph '{_graphName}'.");
    }

    /// <summary>Declares a graph input of element type <paramref name="type"/> and shape <paramref name="shape"/>.</summary>
    public string Input(string name, DataType type, params Dim[] shape)
    {
        Reserve(name);
        _inputs.Add(ValueInfo(name, type, shape));
        return name;
    }

    /// <summary>
    /// A float32 graph input of shape <paramref name="shape"/> whose default is a same-name initializer of shape
    /// <paramref name="defaultDims"/> holding <paramref name="defaultData"/> (an overridable initializer, IR ≥ 4): fed when
    /// a caller gives it, the default otherwise. ONNX Runtime lists it among the overridable initializers, not the inputs.
    /// </summary>
    public string InputWithDefault(string name, Dim[] shape, float[] defaultData, params long[] defaultDims)
    {
        CheckCount(name, defaultData.LongLength, defaultDims);
        Reserve(name);
        _inputs.Add(ValueInfo(name, DataType.Float, shape));
        _inits.Add(new ArrayInit(name, DataType.Float, defaultDims, System.Runtime.InteropServices.MemoryMarshal.AsBytes(defaultData.AsSpan()).ToArray()));
        return name;
    }

    /// <summary>Declares <paramref name="name"/> (a value produced by a node, an input or an initializer) as a graph output.</summary>
    public void Output(string name, DataType type, params Dim[] shape) => _outputs.Add(ValueInfo(name, type, shape));

    static ValueInfoProto ValueInfo(string name, DataType type, Dim[] shape)
    {
        var tensorShape = new TensorShapeProto();
        foreach (var d in shape)
            tensorShape.Dim.Add(d.Param is string p ? new TensorShapeProto.Types.Dimension { DimParam = p }
                                                    : new TensorShapeProto.Types.Dimension { DimValue = d.Value!.Value });
        return new ValueInfoProto
        {
            Name = name,
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)type, Shape = tensorShape } },
        };
    }

    /// <summary>Adds a float32 initializer named <paramref name="name"/> with shape <paramref name="dims"/>.</summary>
    public string Initializer(string name, float[] data, params long[] dims)
    {
        CheckCount(name, data.LongLength, dims);
        Reserve(name);
        _inits.Add(new ArrayInit(name, DataType.Float, dims, System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan()).ToArray()));
        return name;
    }

    /// <summary>Adds an int8 initializer named <paramref name="name"/> with shape <paramref name="dims"/>.</summary>
    public string Initializer(string name, sbyte[] data, params long[] dims)
    {
        CheckCount(name, data.LongLength, dims);
        Reserve(name);
        _inits.Add(new ArrayInit(name, DataType.Int8, dims, System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan()).ToArray()));
        return name;
    }

    /// <summary>Adds an int64 initializer named <paramref name="name"/> with shape <paramref name="dims"/>.</summary>
    public string Initializer(string name, long[] data, params long[] dims)
    {
        CheckCount(name, data.LongLength, dims);
        Reserve(name);
        _inits.Add(new ArrayInit(name, DataType.Int64, dims, System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan()).ToArray()));
        return name;
    }

    /// <summary>
    /// Adds a floating-point tensor as a float32 initializer (bf16/fp16/fp64 are converted when written).
    /// With <paramref name="transpose"/> a 2-D weight [out, in] is stored as its transpose [in, out], so
    /// <c>MatMul(x, W^T)</c> needs no Transpose node. The tensor must stay alive until the model is written.
    /// </summary>
    public string Initializer(string name, torch.Tensor tensor, bool transpose = false)
    {
        if (!tensor.is_floating_point())
            throw new ArgumentException($"Initializer '{name}': only floating-point tensors are supported (got {tensor.dtype}).");
        long[] shape = tensor.shape;
        if (transpose)
        {
            if (shape.Length != 2) throw new ArgumentException($"Initializer '{name}': transpose needs a 2-D tensor, got [{string.Join(", ", shape)}].");
            shape = [shape[1], shape[0]];
        }
        Reserve(name);
        _inits.Add(new TorchInit(name, shape, tensor, transpose));
        return name;
    }

    /// <summary>
    /// Turns every model weight (the initializers added from TorchSharp tensors) into a required float32 graph input of
    /// the same name and stored shape; constants (rotary caches, shape values) stay initializers. The weights are then
    /// fed at run time and nothing of them is written.
    /// </summary>
    public void WeightsToInputs()
    {
        foreach (var init in _inits.OfType<TorchInit>().ToList())
        {
            _inits.Remove(init);
            _inputs.Add(ValueInfo(init.Name, DataType.Float, [.. init.Dims.Select(d => (Dim)d)]));
        }
    }

    static void CheckCount(string name, long count, long[] dims)
    {
        long n = 1;
        foreach (long d in dims) n *= d;
        if (n != count) throw new ArgumentException($"Initializer '{name}': dims [{string.Join(", ", dims)}] hold {n} elements but {count} were given.");
    }

    /// <summary>A 1-D int64 constant (shared between uses with equal values).</summary>
    public string ConstI64(params long[] values) => ConstCached("i64", values.Select(v => v.ToString(CultureInfo.InvariantCulture)),
        n => Initializer(n, values, values.Length));

    /// <summary>A scalar (rank 0) int64 constant.</summary>
    public string ScalarI64(long value) => ConstCached("i64s", [value.ToString(CultureInfo.InvariantCulture)],
        n => Initializer(n, [value]));

    /// <summary>A scalar (rank 0) float32 constant.</summary>
    public string ScalarF32(float value) => ConstCached("f32s", [value.ToString("R", CultureInfo.InvariantCulture)],
        n => Initializer(n, [value]));

    string ConstCached(string kind, IEnumerable<string> values, Func<string, string> add)
    {
        string key = kind + ":" + string.Join(",", values);
        if (_constCache.TryGetValue(key, out string? name)) return name;
        string saved = Prefix;
        Prefix = "";
        try { name = add(UniqueNameUnreserved("const_" + kind)); }
        finally { Prefix = saved; }
        _constCache[key] = name;
        return name;
    }

    string UniqueNameUnreserved(string hint) => Fresh(hint, _names);

    /// <summary>Adds a default-domain node with one output and returns the output's (generated) name.</summary>
    public string Node(string opType, string[] inputs, params AttributeProto[] attributes) =>
        NodeMulti(opType, inputs, 1, attributes)[0];

    /// <summary>Adds a <c>com.microsoft</c> (ONNX Runtime contrib) node with one output and returns the output's (generated) name.</summary>
    public string ContribNode(string opType, string[] inputs, params AttributeProto[] attributes)
    {
        string output = UniqueNameUnreserved(opType);
        AddNode(opType, inputs, [output], MicrosoftDomain, attributes);
        return output;
    }

    /// <summary>Adds a default-domain node with <paramref name="outputCount"/> generated outputs.</summary>
    public string[] NodeMulti(string opType, string[] inputs, int outputCount, params AttributeProto[] attributes)
    {
        var outputs = new string[outputCount];
        for (int i = 0; i < outputCount; i++) outputs[i] = UniqueNameUnreserved(outputCount == 1 ? opType : $"{opType}_{i}");
        AddNode(opType, inputs, outputs, "", attributes);
        return outputs;
    }

    /// <summary>
    /// Adds a node with explicitly named outputs (use this to produce graph outputs such as <c>logits</c>).
    /// Empty strings in <paramref name="inputs"/> denote omitted optional inputs.
    /// </summary>
    public void AddNode(string opType, IReadOnlyList<string> inputs, IReadOnlyList<string> outputs, string domain = "",
        IEnumerable<AttributeProto>? attributes = null, string? name = null)
    {
        foreach (var o in outputs) if (o.Length > 0) Reserve(o);
        if (!_opsets.ContainsKey(domain) && !(domain == "ai.onnx"))
            throw new ArgumentException($"Node {opType}: domain '{domain}' has no opset import; call ImportOpset first.");
        var node = new NodeProto { OpType = opType, Domain = domain, Name = name ?? Fresh(opType, _nodeNames) };
        _nodeNames.Add(node.Name);
        node.Input.AddRange(inputs);
        node.Output.AddRange(outputs);
        if (attributes is not null) node.Attribute.AddRange(attributes);
        _nodes.Add(node);
    }

    /// <summary>The model with every initializer inline (<c>raw_data</c>); fails for models over 2 GB, use <see cref="Save"/>.</summary>
    public ModelProto ToModel()
    {
        var model = Skeleton();
        foreach (var init in _inits)
        {
            var t = init.Header();
            using var ms = new MemoryStream();
            init.WriteTo(ms);
            t.RawData = ByteString.CopyFrom(ms.GetBuffer(), 0, (int)ms.Length);
            model.Graph.Initializer.Add(t);
        }
        return model;
    }

    ModelProto Skeleton()
    {
        var graph = new GraphProto { Name = _graphName };
        graph.Input.AddRange(_inputs.Select(v => v.Clone()));
        graph.Output.AddRange(_outputs.Select(v => v.Clone()));
        graph.Node.AddRange(_nodes.Select(n => n.Clone()));
        var model = new ModelProto { IrVersion = IrVersion, ProducerName = ProducerName, DocString = DocString, Graph = graph };
        foreach (var (domain, version) in _opsets.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            model.OpsetImport.Add(new OperatorSetIdProto { Domain = domain, Version = version });
        foreach (var (k, v) in Metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            model.MetadataProps.Add(new StringStringEntryProto { Key = k, Value = v });
        return model;
    }

    /// <summary>
    /// Checks the model structurally and writes <paramref name="fileName"/> (default <c>model.onnx</c>) and
    /// <c>{fileName}.data</c> into <paramref name="folder"/>. Initializers of at least <paramref name="externalThreshold"/>
    /// bytes go to the data file at <see cref="ExternalAlignment"/>-aligned offsets, each with <c>location</c>,
    /// <c>offset</c> and <c>length</c> entries. Files are written in a temporary folder on the same file system and
    /// renamed into place (the whole folder when it did not exist; otherwise the data file first, then the model).
    /// </summary>
    public OnnxSaveResult Save(string folder, string fileName = "model.onnx", long externalThreshold = DefaultExternalThreshold)
    {
        if (fileName.IndexOfAny(['/', '\\']) >= 0) throw new ArgumentException($"'{fileName}' must be a file name, not a path.", nameof(fileName));
        folder = Path.GetFullPath(folder);
        string dataName = fileName + ".data";
        bool fresh = !Directory.Exists(folder);
        string parent = Path.GetDirectoryName(folder) ?? throw new ArgumentException($"'{folder}' has no parent folder.");
        Directory.CreateDirectory(parent);
        string tmp = fresh ? Path.Combine(parent, $".{Path.GetFileName(folder)}.tmp-{Guid.NewGuid():N}")
                           : Path.Combine(folder, $".onnx-tmp-{Guid.NewGuid():N}");
        Directory.CreateDirectory(tmp);
        try
        {
            var model = Skeleton();
            int external = 0;
            long dataBytes = 0;
            string tmpData = Path.Combine(tmp, dataName);
            using (var data = new FileStream(tmpData, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            {
                foreach (var init in _inits)
                {
                    var t = init.Header();
                    if (init.ByteLength >= externalThreshold)
                    {
                        long offset = (data.Position + ExternalAlignment - 1) / ExternalAlignment * ExternalAlignment;
                        if (offset > data.Position) data.Write(new byte[offset - data.Position]);
                        init.WriteTo(data);
                        long length = data.Position - offset;
                        if (length != init.ByteLength) throw new InvalidOperationException($"Initializer '{init.Name}' wrote {length} bytes, expected {init.ByteLength}.");
                        t.DataLocation = TensorProto.Types.DataLocation.External;
                        t.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = dataName });
                        t.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = offset.ToString(CultureInfo.InvariantCulture) });
                        t.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = length.ToString(CultureInfo.InvariantCulture) });
                        external++;
                    }
                    else
                    {
                        using var ms = new MemoryStream();
                        init.WriteTo(ms);
                        t.RawData = ByteString.CopyFrom(ms.GetBuffer(), 0, (int)ms.Length);
                    }
                    model.Graph.Initializer.Add(t);
                }
                dataBytes = data.Length;
                data.Flush(flushToDisk: true);
            }
            if (external == 0) File.Delete(tmpData);

            OnnxChecker.EnsureValid(model);
            string tmpModel = Path.Combine(tmp, fileName);
            using (var f = new FileStream(tmpModel, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            {
                model.WriteTo(f);
                f.Flush(flushToDisk: true);
            }
            long modelBytes = new FileInfo(tmpModel).Length;

            string finalModel = Path.Combine(folder, fileName), finalData = Path.Combine(folder, dataName);
            if (fresh)
            {
                Directory.Move(tmp, folder);
            }
            else
            {
                if (external > 0) File.Move(tmpData, finalData, overwrite: true);
                else if (File.Exists(finalData)) File.Delete(finalData);
                File.Move(tmpModel, finalModel, overwrite: true);
                Directory.Delete(tmp, recursive: true);
            }
            return new OnnxSaveResult(finalModel, external > 0 ? finalData : null, modelBytes, external > 0 ? dataBytes : 0, external);
        }
        catch
        {
            try { if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>Byte size of one element of <paramref name="type"/>, or 0 for variable-size types.</summary>
    public static int ElementSize(DataType type) => type switch
    {
        DataType.Float or DataType.Int32 or DataType.Uint32 => 4,
        DataType.Double or DataType.Int64 or DataType.Uint64 or DataType.Complex64 => 8,
        DataType.Complex128 => 16,
        DataType.Float16 or DataType.Bfloat16 or DataType.Int16 or DataType.Uint16 => 2,
        DataType.Int8 or DataType.Uint8 or DataType.Bool => 1,
        _ => 0,
    };

    abstract class Init(string name, DataType type, long[] dims)
    {
        public string Name { get; } = name;
        public long[] Dims => dims;
        public long ByteLength => dims.Aggregate(1L, (a, d) => a * d) * ElementSize(type);
        public TensorProto Header()
        {
            var t = new TensorProto { Name = Name, DataType = (int)type };
            t.Dims.AddRange(dims);
            return t;
        }
        public abstract void WriteTo(Stream s);
    }

    sealed class ArrayInit(string name, DataType type, long[] dims, byte[] bytes) : Init(name, type, dims)
    {
        public override void WriteTo(Stream s) => s.Write(bytes);
    }

    sealed class TorchInit(string name, long[] dims, torch.Tensor tensor, bool transpose) : Init(name, DataType.Float, dims)
    {
        public override void WriteTo(Stream s)
        {
            using var scope = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            var t = transpose ? tensor.detach().t() : tensor.detach();
            t = t.to(torch.float32).cpu().contiguous();
            if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("ONNX raw data is little-endian.");
            s.Write(t.bytes);
        }
    }
}
