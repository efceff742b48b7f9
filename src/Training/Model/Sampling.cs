using TorchSharp;
using static TorchSharp.torch;

namespace Rlhf.Training.Model;

/// <summary>Next-token selection from logits: temperature, top-k, nucleus (top-p), greedy.</summary>
public static class Sampling
{
    /// <summary>
    /// Top-k filtering (Fan et al. 2018): logits [B, V] -> [B, V] with every logit below the row's k-th largest set
    /// to −inf (ties with the k-th are kept). k ≤ 0 or k ≥ V returns a copy.
    /// </summary>
    public static Tensor TopK(Tensor logits, int k)
    {
        if (k <= 0 || k >= logits.shape[^1]) return logits.clone();
        using var scope = torch.NewDisposeScope();
        var (values, _) = logits.topk(k, dim: -1);
        var kth = values.narrow(-1, k - 1, 1);                                               // [B, 1]
        return scope.MoveToOuter(logits.masked_fill(logits.lt(kth), double.NegativeInfinity));
    }

    /// <summary>
    /// Nucleus filtering (Holtzman et al. 2020): keep the smallest set of most likely tokens whose probability mass
    /// reaches p; a token is dropped when the mass of the tokens ranked above it is already ≥ p (the top token is
    /// always kept). logits [B, V] -> [B, V] with dropped logits −inf. p ≥ 1 returns a copy.
    /// </summary>
    public static Tensor TopP(Tensor logits, double p)
    {
        if (p >= 1.0) return logits.clone();
        if (p <= 0) throw new ArgumentOutOfRangeException(nameof(p), "top_p must be in (0, 1].");
        using var scope = torch.NewDisposeScope();
        var (sorted, order) = logits.sort(-1, descending: true);
        var probs = sorted.to(ScalarType.Float32).softmax(-1);
        var massAbove = probs.cumsum(-1) - probs;                                           // [B, V]
        var dropSorted = massAbove.ge(p);
        var drop = torch.zeros_like(dropSorted).scatter(-1, order, dropSorted);            // back to vocab order
        return scope.MoveToOuter(logits.masked_fill(drop, double.NegativeInfinity));
    }

    /// <summary>
    /// Picks the next token per row. logits [B, V] -> [B] int64. temperature 0 = greedy (argmax); otherwise
    /// softmax(TopP(TopK(logits / temperature))) is sampled with <paramref name="generator"/> (reproducible).
    /// </summary>
    public static Tensor Next(Tensor logits, double temperature, int topK, double topP, torch.Generator? generator)
    {
        if (temperature < 0) throw new ArgumentOutOfRangeException(nameof(temperature), "temperature must be ≥ 0.");
        using var scope = torch.NewDisposeScope();
        var l = logits.to(ScalarType.Float32);
        if (temperature == 0) return scope.MoveToOuter(l.argmax(-1));
        l = TopP(TopK(Temperature.Scale(l, temperature), topK), topP);
        var probs = l.softmax(-1);
        return scope.MoveToOuter(torch.multinomial(probs, 1, false, generator).squeeze(-1));
    }
}
