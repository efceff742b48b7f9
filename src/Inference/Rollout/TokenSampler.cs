using System.Diagnostics;
using System.Numerics;
using System.Numerics.Tensors;

namespace Rlhf.Inference.Rollout;

/// <summary>
/// One sampling step on the last-position logits of one live row: repetition penalty -> temperature -> top-k -> top-p
/// -> one uniform draw (the Hugging Face <c>generate</c> order). All scratch is preallocated for vocabulary size V, so
/// <see cref="Sample(ReadOnlySpan{float}, ReadOnlySpan{int}, SamplingOptions, Rng, out float)"/> allocates nothing.
/// Not thread-safe: use one sampler per thread (the rollout engine keeps one per worker).
/// </summary>
/// <remarks>
/// <para><b>Logprob.</b> <c>logProb = log softmax(z)[token]</c> with <c>z = penalise(logits) / T</c>: the full
/// distribution at the sampling temperature, <i>before</i> top-k/top-p truncation. This is what PPO's old-policy
/// logprob means (DESIGN §2: logprobs use logits divided by the sampling temperature) and what the trainer recomputes
/// with TorchSharp; with RepetitionPenalty = 1 (the PPO setting) the two agree up to float rounding. The overload with
/// <c>truncatedLogProb</c> also gives <c>log q(token)</c> under the renormalised truncated distribution actually drawn
/// from (it equals logProb when nothing is truncated). Greedy (T = 0) returns argmax with
/// <c>logProb = log softmax(penalised logits)[argmax]</c> (T = 1) and truncatedLogProb = 0 (a point mass).</para>
/// <para><b>Draw.</b> Exactly one <see cref="Rng.NextDouble"/> per non-greedy step (none for greedy), so a request's
/// tokens depend only on its seed. The inverse CDF walks the kept tokens in ascending token id. The kept set is fixed
/// by the strict order (logit descending, then id ascending), so ties are broken by the lower id. Top-p keeps the
/// smallest best-first prefix whose mass reaches P of the (top-k renormalised) distribution.</para>
/// <para><b>Cost.</b> Vectorised passes over V (copy/penalty, argmax, subtract, exp, sum) plus: top-k by a size-K
/// min-heap filled in one vectorised pass that skips blocks below the bar (first the minimum of K block maxima, a lower
/// bound on the K-th best logit, then the heap's worst logit); top-p alone by masked-sum passes that find a logit bar
/// (max - 2, 4, 8, ... nats, bisected) above which the mass reaches P, then a sort of just those candidates; no
/// truncation by a chunked scan.</para>
/// </remarks>
public sealed class TokenSampler
{
    const int ScanChunk = 256;
    const float FirstNucleusWidth = 2f;   // nats below the best logit: the first guess at the nucleus' extent
    const int NucleusRefineAbove = 256;

    readonly float[] _z;       // [V] processed logits: penalised, divided by T
    readonly float[] _p;       // [V] exp(z - max z), unnormalised probabilities
    readonly int[] _mark;      // [V] stamp per id, so each distinct previous token is penalised once
    readonly int[] _order;     // [V] candidate ids, best first (heap / sort scratch)
    readonly int[] _kept;      // [V] kept ids in ascending order
    readonly Comparison<int> _bestFirst;
    int _stamp;
    int _keptCount;            // -1: nothing truncated (all V kept)

    /// <summary>Preallocates scratch for logits of length <paramref name="vocabSize"/>.</summary>
    public TokenSampler(int vocabSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabSize, 1);
        _z = new float[vocabSize];
        _p = new float[vocabSize];
        _mark = new int[vocabSize];
        _order = new int[vocabSize];
        _kept = new int[vocabSize];
        _bestFirst = CompareBestFirst;
    }

    /// <summary>V: the logits length this sampler accepts.</summary>
    public int VocabSize => _z.Length;

    /// <summary>
    /// Draws the next token of one row. <paramref name="logits"/> // [V] last-position logits;
    /// <paramref name="previousTokens"/> // [prompt + generated] ids for the repetition penalty (ignored when it is 1);
    /// <paramref name="logProb"/>: log softmax(penalised logits / T)[token], before top-k/top-p (see remarks).
    /// <paramref name="options"/> is trusted to be validated (<see cref="SamplingOptions.Validate"/>) by the caller.
    /// </summary>
    public int Sample(ReadOnlySpan<float> logits, ReadOnlySpan<int> previousTokens, SamplingOptions options, Rng rng,
        out float logProb) => Sample(logits, previousTokens, options, rng, out logProb, out _);

    /// <summary>As the other overload; also <paramref name="truncatedLogProb"/> = log q(token) under the renormalised
    /// top-k/top-p distribution the token was drawn from.</summary>
    public int Sample(ReadOnlySpan<float> logits, ReadOnlySpan<int> previousTokens, SamplingOptions options, Rng rng,
        out float logProb, out float truncatedLogProb)
    {
        double u = options.IsGreedy ? 0.0 : rng.NextDouble();
        return SampleWithUniform(logits, previousTokens, options, u, out logProb, out truncatedLogProb);
    }

    /// <summary>
    /// The logprob the sampler reports for a token chosen elsewhere (e.g. by ONNX Runtime GenAI):
    /// <c>log softmax(penalise(logits) / T)[token]</c> over the full vocabulary (T = 1 for greedy), before top-k/top-p,
    /// exactly as <see cref="Sample(ReadOnlySpan{float}, ReadOnlySpan{int}, SamplingOptions, Rng, out float)"/> defines it.
    /// <paramref name="logits"/> // [V]; <paramref name="previousTokens"/> // [prompt + generated] for the repetition penalty.
    /// </summary>
    public float LogProb(ReadOnlySpan<float> logits, ReadOnlySpan<int> previousTokens, SamplingOptions o, int token)
    {
        var (m, logS) = LogSoftmaxInto(logits, previousTokens, o);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)token, (uint)_z.Length, nameof(token));
        return _z[token] - m - logS;
    }

    /// <summary>
    /// Leaves z = penalise(logits) / T (T = 1 for greedy) in the z buffer and returns its max and log Σ exp(z − max), so
    /// that log softmax(z)[i] = z[i] − max − logS.
    /// </summary>
    (float Max, float LogS) LogSoftmaxInto(ReadOnlySpan<float> logits, ReadOnlySpan<int> previousTokens, SamplingOptions o)
    {
        int V = _z.Length;
        if (logits.Length != V)
            throw new ArgumentException($"logits has length {logits.Length}; this sampler was built for vocab size {V}.", nameof(logits));
        Span<float> z = _z;
        logits.CopyTo(z);
        if (o.RepetitionPenalty != 1f) ApplyRepetitionPenalty(z, previousTokens, o.RepetitionPenalty);
        if (!o.IsGreedy && o.Temperature != 1f) TensorPrimitives.Divide(z, o.Temperature, z);
        float m = TensorPrimitives.Max(z);
        if (!float.IsFinite(m))
            throw new ArgumentException($"logits must contain no NaN or +inf and at least one finite value (max was {m}).", nameof(logits));
        Span<float> p = _p;
        TensorPrimitives.Subtract(z, m, p);
        TensorPrimitives.Exp(p, p);
        return (m, MathF.Log(TensorPrimitives.Sum(p)));
    }

    /// <summary>
    /// The <paramref name="k"/> most likely tokens of the same distribution <see cref="LogProb"/> reports,
    /// <c>log softmax(penalise(logits) / T)</c> over the full vocabulary (T = 1 for greedy), most likely first (ties: lower id).
    /// </summary>
    public TokenLogProb[] TopLogProbs(ReadOnlySpan<float> logits, ReadOnlySpan<int> previousTokens, SamplingOptions o, int k)
    {
        int V = _z.Length;
        var (m, logS) = LogSoftmaxInto(logits, previousTokens, o);
        ReadOnlySpan<float> z = _z;
        k = Math.Min(k, V);
        var best = new List<int>(k + 1);
        for (int i = 0; i < V; i++)
        {
            if (best.Count == k && z[i] <= z[best[^1]]) continue;
            int at = best.Count;
            while (at > 0 && z[best[at - 1]] < z[i]) at--;
            best.Insert(at, i);
            if (best.Count > k) best.RemoveAt(k);
        }
        var result = new TokenLogProb[best.Count];
        for (int j = 0; j < best.Count; j++) result[j] = new TokenLogProb(best[j], z[best[j]] - m - logS);
        return result;
    }

    /// <summary>The step with the uniform draw <paramref name="u"/> in [0, 1) given (tests compare against a reference).</summary>
    internal int SampleWithUniform(ReadOnlySpan<float> logits, ReadOnlySpan<int> previousTokens, SamplingOptions o,
        double u, out float logProb, out float truncatedLogProb)
    {
        int V = _z.Length;
        if (logits.Length != V)
            throw new ArgumentException($"logits has length {logits.Length}; this sampler was built for vocab size {V}.", nameof(logits));
        Span<float> z = _z;
        Span<float> p = _p;

        logits.CopyTo(z);
        if (o.RepetitionPenalty != 1f) ApplyRepetitionPenalty(z, previousTokens, o.RepetitionPenalty);
        bool greedy = o.IsGreedy;
        if (!greedy && o.Temperature != 1f) TensorPrimitives.Divide(z, o.Temperature, z);

        int argmax = TensorPrimitives.IndexOfMax(z);   // first NaN if any, else the first maximum
        float m = z[argmax];
        if (!float.IsFinite(m))
            throw new ArgumentException($"logits must contain no NaN or +inf and at least one finite value (max was {m}).", nameof(logits));
        TensorPrimitives.Subtract(z, m, p);
        TensorPrimitives.Exp(p, p);
        float s = TensorPrimitives.Sum(p);          // >= 1: the max contributes exp(0)
        float logS = MathF.Log(s);

        if (greedy)
        {
            int a = argmax;
            _kept[0] = a;
            _keptCount = 1;
            logProb = z[a] - m - logS;
            truncatedLogProb = 0f;
            return a;
        }

        int k = o.TopK > 0 && o.TopK < V ? o.TopK : 0;
        bool topP = o.TopP < 1f;
        if (k == 0 && !topP)
        {
            int t = ScanAll(p, u * s);
            _keptCount = -1;
            logProb = truncatedLogProb = z[t] - m - logS;
            return t;
        }

        int n;
        if (k > 0)
        {
            SelectBest(k);
            n = k;
            if (topP)
            {
                double massK = 0;
                for (int i = 0; i < k; i++) massK += p[_order[i]];
                n = NucleusLength(k, o.TopP * massK);
                if (n < 0) n = k;
            }
        }
        else
        {
            n = SelectNucleus(m, o.TopP * (double)s);
        }

        Span<int> kept = _kept.AsSpan(0, n);
        _order.AsSpan(0, n).CopyTo(kept);
        kept.Sort();
        _keptCount = n;
        double keptMass = 0;
        foreach (int id in kept) keptMass += p[id];
        double target = u * keptMass;
        double cum = 0;
        int token = kept[n - 1];
        foreach (int id in kept)
        {
            cum += p[id];
            if (cum > target) { token = id; break; }
        }
        logProb = z[token] - m - logS;
        truncatedLogProb = (float)(z[token] - m - Math.Log(keptMass));
        return token;
    }

    /// <summary>CTRL penalty on <paramref name="z"/> in place, once per distinct id of <paramref name="previousTokens"/>.</summary>
    void ApplyRepetitionPenalty(Span<float> z, ReadOnlySpan<int> previousTokens, float penalty)
    {
        if (++_stamp == int.MaxValue)
        {
            Array.Clear(_mark);
            _stamp = 1;
        }
        int stamp = _stamp;
        int[] mark = _mark;
        foreach (int id in previousTokens)
        {
            if ((uint)id >= (uint)z.Length)
                throw new ArgumentOutOfRangeException(nameof(previousTokens), $"token id {id} is outside the vocabulary [0, {z.Length}).");
            if (mark[id] == stamp) continue;
            mark[id] = stamp;
            float x = z[id];
            z[id] = x > 0f ? x / penalty : x * penalty;
        }
    }

    /// <summary>Inverse CDF over all ids in order: first id whose cumulative mass exceeds <paramref name="target"/>.</summary>
    static int ScanAll(ReadOnlySpan<float> p, double target)
    {
        double cum = 0;
        int i = 0;
        while (i + ScanChunk <= p.Length)
        {
            float chunk = TensorPrimitives.Sum(p.Slice(i, ScanChunk));
            if (cum + chunk > target) break;
            cum += chunk;
            i += ScanChunk;
        }
        for (; i < p.Length; i++)
        {
            cum += p[i];
            if (cum > target) return i;
        }
        for (i = p.Length - 1; i > 0 && p[i] == 0f; i--) { }   // rounding: u * s reached the total
        return i;
    }

    /// <summary>Length of the shortest best-first prefix of the C selected candidates whose mass reaches
    /// <paramref name="target"/>, or -1 when all C fall short.</summary>
    int NucleusLength(int c, double target)
    {
        double cum = 0;
        for (int i = 0; i < c; i++)
        {
            cum += _p[_order[i]];
            if (cum >= target) return i + 1;
        }
        return -1;
    }

    /// <summary>
    /// Top-p without top-k (<paramref name="m"/> = max z): puts the nucleus (shortest best-first prefix with mass &gt;= <paramref name="target"/>) into
    /// _order[0..n) best first and returns n. Candidates are the ids with z &gt;= max z - w for w = 2, 4, 8, ... nats
    /// (one vectorised masked-sum pass each; bisected a few times when the set is large), a best-first prefix whose mass
    /// reaches the target is then sorted; only those candidates are sorted, not V.
    /// </summary>
    int SelectNucleus(float m, double target)
    {
        int V = _z.Length;
        float lo = 0f, w = FirstNucleusWidth;   // lo: widest width known to fall short
        while (true)
        {
            (double mass, int count) = MassAtLeast(m - w);
            if (mass >= target)
            {
                for (int i = 0; i < 4 && count > NucleusRefineAbove; i++)
                {
                    float mid = 0.5f * (lo + w);
                    (double midMass, int midCount) = MassAtLeast(m - mid);
                    if (midMass >= target) (w, count) = (mid, midCount);
                    else lo = mid;
                }
                int c = CompactAtLeast(m - w);
                _order.AsSpan(0, c).Sort(_bestFirst);
                int n = NucleusLength(c, target);
                if (n > 0) return n;
                if (c == V) return V;   // rounding: the double cumulative of all V fell just short of the target
            }
            lo = w;
            w *= 2f;
            if (w > 256f || float.IsInfinity(m - w)) w = float.PositiveInfinity;   // beyond float exp's range: take all
        }
    }

    /// <summary>Unnormalised mass and count of the ids with z &gt;= <paramref name="bar"/> (vectorised; float lanes).</summary>
    (double Mass, int Count) MassAtLeast(float bar)
    {
        float[] z = _z, p = _p;
        int W = Vector<float>.Count;
        var vBar = new Vector<float>(bar);
        var acc = Vector<float>.Zero;
        var cnt = Vector<int>.Zero;
        int i = 0;
        for (; i + W <= z.Length; i += W)
        {
            Vector<int> mask = Vector.GreaterThanOrEqual(new Vector<float>(z.AsSpan(i, W)), vBar);
            acc += Vector.ConditionalSelect(mask, new Vector<float>(p.AsSpan(i, W)), Vector<float>.Zero);
            cnt -= mask;   // a true lane is -1
        }
        double mass = Vector.Sum(acc);
        int count = Vector.Sum(cnt);
        for (; i < z.Length; i++)
        {
            if (z[i] >= bar)
            {
                mass += p[i];
                count++;
            }
        }
        return (mass, count);
    }

    /// <summary>Writes the ids with z &gt;= <paramref name="bar"/> into _order in id order; returns how many.</summary>
    int CompactAtLeast(float bar)
    {
        float[] z = _z;
        int[] h = _order;
        int W = Vector<float>.Count;
        var vBar = new Vector<float>(bar);
        int c = 0, j = 0;
        while (j < z.Length)
        {
            int end = Math.Min(j + W, z.Length);
            if (end - j == W && !Vector.GreaterThanOrEqualAny(new Vector<float>(z.AsSpan(j, W)), vBar))
            {
                j = end;
                continue;
            }
            for (; j < end; j++)
            {
                if (z[j] >= bar) h[c++] = j;
            }
        }
        return c;
    }

    /// <summary>Puts the best <paramref name="c"/> ids (logit descending, id ascending) into _order[0..c), best first.</summary>
    void SelectBest(int c)
    {
        float[] z = _z;
        int[] h = _order;
        int V = z.Length;
        if (c > V / 4)
        {
            for (int i = 0; i < V; i++) h[i] = i;
            h.AsSpan().Sort(_bestFirst);
            return;
        }

        // A lower bound on the c-th best logit: the minimum of c block maxima (c distinct ids are >= it).
        int block = V / c;
        float tau = float.PositiveInfinity;
        for (int b = 0; b < c; b++)
        {
            int start = b * block;
            tau = MathF.Min(tau, BlockMax(z.AsSpan(start, b == c - 1 ? V - start : block)));
        }

        // One pass: fill a min-heap (worst candidate at the root) with ids >= tau, then replace the root with any better
        // id. Vector blocks below the current bar are skipped without touching the heap.
        int W = Vector<float>.Count;
        int n = 0;
        float worst = float.NegativeInfinity;
        int j = 0;
        while (j < V)
        {
            int end = Math.Min(j + W, V);
            if (end - j == W)
            {
                var v = new Vector<float>(z.AsSpan(j, W));
                bool any = n < c ? Vector.GreaterThanOrEqualAny(v, new Vector<float>(tau)) : Vector.GreaterThanAny(v, new Vector<float>(worst));
                if (!any)
                {
                    j = end;
                    continue;
                }
            }
            for (; j < end; j++)
            {
                float x = z[j];
                if (n < c)
                {
                    if (x < tau) continue;
                    h[n] = j;
                    SiftUp(h, n);
                    if (++n == c) worst = z[h[0]];
                }
                else if (x > worst)   // an equal logit loses: every id already in the heap is lower than j
                {
                    h[0] = j;
                    SiftDown(h, 0, c);
                    worst = z[h[0]];
                }
            }
        }
        Debug.Assert(n == c, "at least c ids are >= tau");

        // Heap sort: repeatedly move the worst to the end, leaving the best first.
        for (int end = c - 1; end > 0; end--)
        {
            (h[0], h[end]) = (h[end], h[0]);
            SiftDown(h, 0, end);
        }
    }

    /// <summary>Max of a short NaN-free span (TensorPrimitives.Max has a large fixed cost on spans of a few dozen).</summary>
    static float BlockMax(ReadOnlySpan<float> x)
    {
        int W = Vector<float>.Count;
        float best = float.NegativeInfinity;
        int i = 0;
        if (x.Length >= W)
        {
            var acc = new Vector<float>(x[..W]);
            for (i = W; i + W <= x.Length; i += W) acc = Vector.Max(acc, new Vector<float>(x.Slice(i, W)));
            for (int l = 0; l < W; l++) best = MathF.Max(best, acc[l]);
        }
        for (; i < x.Length; i++) best = MathF.Max(best, x[i]);
        return best;
    }

    bool Worse(int a, int b)
    {
        float za = _z[a], zb = _z[b];
        return za < zb || (za == zb && a > b);
    }

    void SiftUp(int[] h, int i)
    {
        while (i > 0)
        {
            int parent = (i - 1) >> 1;
            if (!Worse(h[i], h[parent])) break;
            (h[i], h[parent]) = (h[parent], h[i]);
            i = parent;
        }
    }

    void SiftDown(int[] h, int i, int n)
    {
        while (true)
        {
            int l = 2 * i + 1;
            if (l >= n) return;
            int w = l + 1 < n && Worse(h[l + 1], h[l]) ? l + 1 : l;
            if (!Worse(h[w], h[i])) return;
            (h[i], h[w]) = (h[w], h[i]);
            i = w;
        }
    }

    int CompareBestFirst(int a, int b)
    {
        float za = _z[a], zb = _z[b];
        if (za > zb) return -1;
        if (za < zb) return 1;
        return a.CompareTo(b);
    }

    /// <summary>[V] the logits after penalty and temperature from the last call (tests).</summary>
    internal ReadOnlySpan<float> ProcessedLogits => _z;

    /// <summary>Kept ids of the last call in ascending order; empty when nothing was truncated (tests).</summary>
    internal ReadOnlySpan<int> LastKept => _keptCount < 0 ? default : _kept.AsSpan(0, _keptCount);
}
