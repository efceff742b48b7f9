using System.Globalization;
using Rlhf.Export.Onnx.Proto;
using DataType = Rlhf.Export.Onnx.Proto.TensorProto.Types.DataType;

namespace Rlhf.Export.Onnx;

/// <summary>
/// Structural checks of a <see cref="ModelProto"/> before it is written or loaded: every node input is a graph
/// input, an initializer or the output of an earlier node (or empty, an omitted optional input); every value is
/// defined once; every node's domain has an opset import; graph outputs are defined; initializer dims match
/// their data (inline or external). It does not check operator schemas or types — ONNX Runtime does that on load.
/// </summary>
public static class OnnxChecker
{
    /// <summary>Returns every problem found, one readable line each; empty when the model is structurally valid.</summary>
    public static IReadOnlyList<string> Check(ModelProto model)
    {
        var errors = new List<string>();
        if (model.IrVersion <= 0) errors.Add("ir_version is not set.");
        var domains = new HashSet<string>(StringComparer.Ordinal);
        foreach (var op in model.OpsetImport)
        {
            string d = Canonical(op.Domain);
            if (!domains.Add(d)) errors.Add($"opset_import declares domain '{op.Domain}' more than once.");
            if (op.Version <= 0) errors.Add($"opset_import for domain '{op.Domain}' has version {op.Version}.");
        }
        if (!domains.Contains("")) errors.Add("opset_import has no entry for the default ONNX domain.");
        var g = model.Graph;
        if (g is null) { errors.Add("The model has no graph."); return errors; }

        var defined = new HashSet<string>(StringComparer.Ordinal);
        void Define(string name, string what)
        {
            if (string.IsNullOrEmpty(name)) errors.Add($"{what} has an empty name.");
            else if (!defined.Add(name)) errors.Add($"{what} '{name}' is defined more than once.");
        }
        foreach (var v in g.Input)
        {
            Define(v.Name, "Graph input");
            CheckValueInfo(v, "Graph input", errors);
        }
        foreach (var t in g.Initializer)
        {
            if (!g.Input.Any(i => i.Name == t.Name)) Define(t.Name, "Initializer");
            CheckTensor(t, errors);
        }
        for (int n = 0; n < g.Node.Count; n++)
        {
            var node = g.Node[n];
            string label = $"Node {n} ({node.OpType}{(node.Name.Length > 0 ? " '" + node.Name + "'" : "")})";
            if (string.IsNullOrEmpty(node.OpType)) errors.Add($"{label} has no op_type.");
            if (!domains.Contains(Canonical(node.Domain)))
                errors.Add($"{label} uses domain '{node.Domain}', which has no opset_import entry.");
            foreach (var input in node.Input)
                if (input.Length > 0 && !defined.Contains(input))
                    errors.Add($"{label} reads '{input}', which is not a graph input, an initializer or an earlier node's output.");
            foreach (var a in node.Attribute)
            {
                if (string.IsNullOrEmpty(a.Name)) errors.Add($"{label} has an attribute without a name.");
                if (a.Type == AttributeProto.Types.AttributeType.Undefined) errors.Add($"{label} attribute '{a.Name}' has no type.");
                if (a.T is not null) CheckTensor(a.T, errors, $"{label} attribute '{a.Name}'");
            }
            foreach (var output in node.Output)
                if (output.Length > 0) Define(output, $"{label} output");
        }
        foreach (var v in g.Output)
        {
            if (!defined.Contains(v.Name)) errors.Add($"Graph output '{v.Name}' is not produced by any node, input or initializer.");
            CheckValueInfo(v, "Graph output", errors);
        }
        return errors;
    }

    /// <summary>Throws <see cref="InvalidDataException"/> listing every problem <see cref="Check"/> finds.</summary>
    public static void EnsureValid(ModelProto model)
    {
        var errors = Check(model);
        if (errors.Count > 0)
            throw new InvalidDataException($"ONNX model '{model.Graph?.Name}' is invalid ({errors.Count} problem(s)):\n  " + string.Join("\n  ", errors));
    }

    static string Canonical(string domain) => domain == "ai.onnx" ? "" : domain;

    static void CheckValueInfo(ValueInfoProto v, string what, List<string> errors)
    {
        if (v.Type?.TensorType is not { } tt) { errors.Add($"{what} '{v.Name}' has no tensor type."); return; }
        if (tt.ElemType == 0) errors.Add($"{what} '{v.Name}' has no element type.");
        if (tt.Shape is not null)
            foreach (var d in tt.Shape.Dim)
                if (d.ValueCase == TensorShapeProto.Types.Dimension.ValueOneofCase.DimValue && d.DimValue < 0)
                    errors.Add($"{what} '{v.Name}' has a negative dimension {d.DimValue}.");
    }

    static void CheckTensor(TensorProto t, List<string> errors, string? owner = null)
    {
        string what = owner ?? $"Initializer '{t.Name}'";
        var type = (DataType)t.DataType;
        if (type == DataType.Undefined || !Enum.IsDefined(type)) { errors.Add($"{what} has data type {t.DataType}, which is not valid."); return; }
        long count = 1;
        foreach (long d in t.Dims)
        {
            if (d < 0) { errors.Add($"{what} has a negative dimension {d}."); return; }
            count *= d;
        }
        string dims = "[" + string.Join(", ", t.Dims) + "]";
        int size = GraphBuilder.ElementSize(type);
        bool external = t.DataLocation == TensorProto.Types.DataLocation.External;
        if (external != (t.ExternalData.Count > 0))
            errors.Add($"{what}: data_location is {t.DataLocation} but it has {t.ExternalData.Count} external_data entries.");
        if (external)
        {
            string? Get(string key) => t.ExternalData.FirstOrDefault(e => e.Key == key)?.Value;
            if (string.IsNullOrEmpty(Get("location"))) errors.Add($"{what}: external data has no 'location'.");
            foreach (string key in new[] { "offset", "length" })
                if (Get(key) is string s && (!long.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out long v) || v < 0))
                    errors.Add($"{what}: external data '{key}' is '{s}', not a non-negative integer.");
            if (Get("length") is string len && long.TryParse(len, NumberStyles.None, CultureInfo.InvariantCulture, out long length)
                && size > 0 && length != count * size)
                errors.Add($"{what}: dims {dims} need {count * size} bytes but external length is {length}.");
            if (t.RawData.Length > 0) errors.Add($"{what} has both external data and raw_data.");
            return;
        }
        long have = type switch
        {
            _ when t.RawData.Length > 0 => size > 0 ? (t.RawData.Length % size == 0 ? t.RawData.Length / size : -1) : -1,
            DataType.Float => t.FloatData.Count,
            DataType.Complex64 => t.FloatData.Count / 2,
            DataType.Double => t.DoubleData.Count,
            DataType.Complex128 => t.DoubleData.Count / 2,
            DataType.Int64 => t.Int64Data.Count,
            DataType.Uint32 or DataType.Uint64 => t.Uint64Data.Count,
            DataType.String => t.StringData.Count,
            _ => t.Int32Data.Count,
        };
        if (have != count)
            errors.Add(have < 0
                ? $"{what}: raw_data has {t.RawData.Length} bytes, not a whole number of {type} elements."
                : $"{what}: dims {dims} hold {count} elements but the data has {have}.");
    }
}
