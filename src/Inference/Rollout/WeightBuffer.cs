namespace Rlhf.Inference.Rollout;

/// <summary>
/// One float32 weight handed to <see cref="RolloutEngine.UpdateWeights"/> without a file: its initializer name, shape,
/// and either a managed array or a pointer to contiguous native memory (e.g. a TorchSharp tensor's data). The memory
/// must hold the layout the graph stores: for projections the ONNX graphs keep Wᵀ ([in, out]), so the trainer passes a
/// transposed contiguous copy. The memory must stay valid and unchanged until the next update or the engine's disposal
/// (pass its owner to <see cref="RolloutEngine.UpdateWeights"/> and the engine disposes it then).
/// </summary>
/// <param name="Name">ONNX initializer name (Hugging Face weight name, e.g. <c>model.layers.0.mlp.up_proj.weight</c>).</param>
/// <param name="Shape">Shape as stored in the graph.</param>
/// <param name="Array">Managed data (row-major), or null when <paramref name="Pointer"/> is used.</param>
/// <param name="Pointer">Address of contiguous data of <paramref name="Shape"/> in <paramref name="Element"/>, when <paramref name="Array"/> is null.</param>
/// <param name="Element">Element type: float32, or int8 for the quantized projections of an int8 rollout graph (pointer only).</param>
public sealed record WeightBuffer(string Name, long[] Shape, float[]? Array = null, nint Pointer = 0, WeightElement Element = WeightElement.Float32)
{
    /// <summary>Elements in <see cref="Shape"/>.</summary>
    public long Count => Shape.Aggregate(1L, (a, d) => a * d);

    /// <summary>Bytes of the data.</summary>
    public long ByteLength => Count * (Element == WeightElement.Int8 ? 1 : sizeof(float));

    /// <summary>Throws unless exactly one of array/pointer is given and it matches the shape.</summary>
    public void Validate()
    {
        if (Shape.Any(d => d < 0)) throw new ArgumentException($"Weight '{Name}' has a negative dimension [{string.Join(", ", Shape)}].");
        if (Array is null == (Pointer == 0))
            throw new ArgumentException($"Weight '{Name}' needs exactly one of Array or Pointer.");
        if (Array is not null && Element != WeightElement.Float32)
            throw new ArgumentException($"Weight '{Name}': a managed array holds float32; pass {Element} data by pointer.");
        if (Array is not null && Array.LongLength != Count)
            throw new ArgumentException($"Weight '{Name}' has {Array.LongLength} values for shape [{string.Join(", ", Shape)}] ({Count}).");
    }
}

/// <summary>Element type of a <see cref="WeightBuffer"/>.</summary>
public enum WeightElement
{
    /// <summary>float32 (every weight of a float32 graph; scales, norms, embeddings and biases of an int8 graph).</summary>
    Float32,
    /// <summary>int8 (the <c>{name}_int8</c> projections of an int8 rollout graph).</summary>
    Int8,
}
