using Rlhf.Inference.Rollout;

namespace Rlhf.Inference.Tests.Rollout;

/// <summary>
/// Plain-loop reference of <see cref="TokenSampler"/>: full sort of V, no vectorisation, no scratch reuse. Same
/// contract: penalty -> /T -> top-k -> top-p (on the top-k renormalised mass) -> inverse CDF over kept ids ascending.
/// </summary>
internal static class ReferenceSampler
{
    public static int Sample(float[] logits, int[] previous, SamplingOptions o, double u,
        out double logProb, out double truncatedLogProb, out int[] kept)
    {
        int V = logits.Length;
        var z = (float[])logits.Clone();
        if (o.RepetitionPenalty != 1f)
        {
            foreach (int id in new HashSet<int>(previous))
                z[id] = z[id] > 0f ? z[id] / o.RepetitionPenalty : z[id] * o.RepetitionPenalty;
        }
        if (o.Temperature == 0f)
        {
            int a = 0;
            for (int i = 1; i < V; i++) if (z[i] > z[a]) a = i;
            logProb = LogSoftmax(z)[a];
            truncatedLogProb = 0;
            kept = [a];
            return a;
        }
        if (o.Temperature != 1f) for (int i = 0; i < V; i++) z[i] /= o.Temperature;

        float m = z.Max();
        var p = new float[V];
        for (int i = 0; i < V; i++) p[i] = MathF.Exp(z[i] - m);
        double[] lsm = LogSoftmax(z);

        var order = Enumerable.Range(0, V).ToArray();
        Array.Sort(order, (a, b) => z[a] != z[b] ? z[b].CompareTo(z[a]) : a.CompareTo(b));
        int n = V;
        if (o.TopK > 0 && o.TopK < V) n = o.TopK;
        if (o.TopP < 1f)
        {
            double mass = 0;
            for (int i = 0; i < n; i++) mass += p[order[i]];
            double cum = 0;
            for (int i = 0; i < n; i++)
            {
                cum += p[order[i]];
                if (cum >= o.TopP * mass) { n = i + 1; break; }
            }
        }
        kept = order.Take(n).Order().ToArray();
        double keptMass = 0;
        foreach (int id in kept) keptMass += p[id];
        double c2 = 0;
        int token = kept[^1];
        foreach (int id in kept)
        {
            c2 += p[id];
            if (c2 > u * keptMass) { token = id; break; }
        }
        logProb = lsm[token];
        truncatedLogProb = Math.Log(p[token] / keptMass);
        return token;
    }

    static double[] LogSoftmax(float[] z)
    {
        double m = z.Max();
        double s = 0;
        foreach (float x in z) s += Math.Exp(x - m);
        return z.Select(x => x - m - Math.Log(s)).ToArray();
    }
}
