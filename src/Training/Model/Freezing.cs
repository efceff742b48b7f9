using TorchSharp;

namespace Rlhf.Training.Model;

/// <summary>Freezes the bottom of a Llama model (HF names <c>model.embed_tokens.*</c>, <c>model.layers.{i}.*</c>).</summary>
public static class Freezing
{
    /// <summary>
    /// Turns off gradients of the token embeddings and decoder layers 0..n−1 (n = 0: nothing). Nothing below layer n
    /// then requires a gradient, so autograd's backward pass ends at layer n's input and optimizers built from the
    /// trainable parameters leave the frozen ones out.
    /// </summary>
    public static void BottomLayers(torch.nn.Module model, int n)
    {
        if (n == 0) return;
        int layers = model.named_parameters().Select(p => LayerIndex(p.name)).Where(i => i >= 0).DefaultIfEmpty(-1).Max() + 1;
        if (n > layers) throw new InvalidDataException($"freeze_layers is {n} but the model has {layers} decoder layers.");
        foreach (var (name, p) in model.named_parameters())
            if (name.Contains("embed_tokens.", StringComparison.Ordinal) || LayerIndex(name) is >= 0 and var i && i < n)
                p.requires_grad = false;
    }

    /// <summary>i of a parameter named <c>….layers.{i}.…</c>, else −1.</summary>
    internal static int LayerIndex(string name)
    {
        int at = name.IndexOf("layers.", StringComparison.Ordinal);
        if (at < 0) return -1;
        int start = at + "layers.".Length, end = name.IndexOf('.', start);
        return end > start && int.TryParse(name.AsSpan(start, end - start), out int i) ? i : -1;
    }
}
