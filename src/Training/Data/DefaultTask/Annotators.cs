using Rlhf.Training.Common;
namespace Rlhf.Training.Data.DefaultTask;

/// <summary>One simulated labeller. Their utility for a response y to prompt x is
/// u(y) = gold(x, y) + Bias(y) + Sigma·ε, ε ~ N(0, 1), with
/// Bias(y) = LengthBias·(response words − 15) + Σ_w WordBias[w] over the response words.</summary>
/// <param name="Id">Index in the panel.</param>
/// <param name="Sigma">Standard deviation of the Gaussian noise on the gold score.</param>
/// <param name="LengthBias">Extra utility per response word above 15 (negative: prefers short answers).</param>
/// <param name="WordBias">Extra utility per occurrence of these (lower-case) words: a labeller's pet words.</param>
public sealed record Annotator(int Id, double Sigma, double LengthBias, IReadOnlyDictionary<string, double> WordBias)
{
    /// <summary>Bias(y) of the class comment.</summary>
    public double Bias(string response)
    {
        double bias = 0;
        int n = 0;
        foreach (string t in GoldScorer.Tokenize(response))
        {
            if (GoldScorer.IsPunctuation(t)) continue;
            n++;
            if (WordBias.TryGetValue(t, out double b)) bias += b;
        }
        return bias + LengthBias * (n - 15);
    }

    /// <summary>A labeller with no noise and no bias: ranks by the gold score alone.</summary>
    public static Annotator Perfect(int id) => new(id, 0, 0, new Dictionary<string, double>());
}

/// <summary>A panel of simulated labellers, as InstructGPT's: each ranks the K responses to a prompt by their own
/// noisy utility (<see cref="Annotator"/>), and the panel's ranking is the Borda count of theirs
/// (<see cref="Borda"/>). Noise is drawn from a stream seeded by the panel seed, the annotator and the hash of
/// (prompt, responses), so a ranking does not depend on the order in which prompts are labelled.</summary>
public sealed class AnnotatorPanel
{
    readonly ulong _seed;

    public AnnotatorPanel(IReadOnlyList<Annotator> annotators, ulong seed)
    {
        ArgumentNullException.ThrowIfNull(annotators);
        if (annotators.Count == 0) throw new ArgumentException("an annotator panel needs at least one annotator", nameof(annotators));
        foreach (var a in annotators)
            if (a.Sigma < 0 || double.IsNaN(a.Sigma))
                throw new ArgumentException($"annotator {a.Id}: Sigma must be ≥ 0, got {a.Sigma}", nameof(annotators));
        Annotators = annotators.ToArray();
        _seed = seed;
    }

    public IReadOnlyList<Annotator> Annotators { get; }

    /// <summary>The default panel: <paramref name="count"/> labellers with noise σ ~ U[0.3, 0.8]·noiseScale, a length
    /// bias ~ U[−0.02, 0.02]·noiseScale per word and two pet words (from the sentiment lexicon) worth
    /// ±U[0.1, 0.3]·noiseScale each; all drawn from <paramref name="seed"/>.</summary>
    public static AnnotatorPanel CreateDefault(ulong seed, int count = 5, double noiseScale = 1.0)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(noiseScale);
        var rng = new SplitMixRandom(Inference.Rollout.Rng.Derive(seed, "annotators"));
        string[] words = Lexicon.SentimentWords.Keys.Order(StringComparer.Ordinal).ToArray();
        var list = new List<Annotator>(count);
        for (int i = 0; i < count; i++)
        {
            double sigma = (0.3 + 0.5 * rng.NextDouble()) * noiseScale;
            double length = (rng.NextDouble() * 0.04 - 0.02) * noiseScale;
            var pets = new Dictionary<string, double>();
            for (int j = 0; j < 2; j++)
            {
                double b = (0.1 + 0.2 * rng.NextDouble()) * (rng.Chance(0.5) ? 1 : -1) * noiseScale;
                pets[rng.Pick(words)] = b;
            }
            list.Add(new Annotator(i, sigma, length, pets));
        }
        return new AnnotatorPanel(list, seed);
    }

    /// <summary>A panel of <paramref name="count"/> perfect labellers: its ranking is the gold ranking.</summary>
    public static AnnotatorPanel NoiseFree(int count = 5) =>
        new(Enumerable.Range(0, count).Select(Annotator.Perfect).ToArray(), 0);

    /// <summary>The utility u(y) each annotator gives each response: [annotators][K].</summary>
    public double[][] Utilities(string prompt, IReadOnlyList<string> responses, IReadOnlyList<bool>? endedWithEos = null)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(responses);
        if (endedWithEos is not null && endedWithEos.Count != responses.Count)
            throw new ArgumentException(
                $"endedWithEos has {endedWithEos.Count} entries for {responses.Count} responses", nameof(endedWithEos));
        var gold = new double[responses.Count];
        for (int i = 0; i < gold.Length; i++)
            gold[i] = GoldScorer.Reward(prompt, responses[i], endedWithEos?[i] ?? true);

        ulong contentHash = Hash(prompt, responses);
        var result = new double[Annotators.Count][];
        for (int a = 0; a < Annotators.Count; a++)
        {
            var annotator = Annotators[a];
            var rng = new SplitMixRandom(Inference.Rollout.Rng.Mix(_seed ^ Inference.Rollout.Rng.Mix(contentHash + (ulong)a)));
            result[a] = new double[gold.Length];
            for (int i = 0; i < gold.Length; i++)
            {
                double noise = rng.NextGaussian();
                result[a][i] = gold[i] + annotator.Bias(responses[i]) + annotator.Sigma * noise;
            }
        }
        return result;
    }

    /// <summary>Each annotator's ranking, ranking[a][i] = rank annotator a gives response i (0 = best);
    /// equal utilities are ranked by response index.</summary>
    public int[][] RankEach(string prompt, IReadOnlyList<string> responses, IReadOnlyList<bool>? endedWithEos = null) =>
        Utilities(prompt, responses, endedWithEos).Select(RankByUtility).ToArray();

    /// <summary>The panel's ranking of the K responses (Borda count of the annotators' rankings).</summary>
    public RankedExample Rank(string prompt, IReadOnlyList<string> responses, IReadOnlyList<bool>? endedWithEos = null)
    {
        if (responses.Count < 2)
            throw new ArgumentException($"ranking needs at least 2 responses, got {responses.Count}", nameof(responses));
        return new RankedExample(prompt, responses, Borda(RankEach(prompt, responses, endedWithEos)));
    }

    /// <summary>Ranks by utility, highest first: rank[i] of item i, ties broken by the lower index.</summary>
    public static int[] RankByUtility(IReadOnlyList<double> utility)
    {
        int[] order = Enumerable.Range(0, utility.Count)
            .OrderByDescending(i => utility[i]).ThenBy(i => i).ToArray();
        var rank = new int[order.Length];
        for (int r = 0; r < order.Length; r++) rank[order[r]] = r;
        return rank;
    }

    /// <summary>Borda count: an item ranked r by one annotator of K items gets K − 1 − r points; the aggregate ranks
    /// items by total points, highest first; equal totals are broken by the lower index (deterministic).
    /// <paramref name="rankings"/>[a][i] = rank annotator a gave item i. Returns rank[i], 0 = best.</summary>
    public static int[] Borda(IReadOnlyList<IReadOnlyList<int>> rankings)
    {
        ArgumentNullException.ThrowIfNull(rankings);
        if (rankings.Count == 0) throw new ArgumentException("Borda needs at least one ranking", nameof(rankings));
        int k = rankings[0].Count;
        var points = new int[k];
        foreach (var ranking in rankings)
        {
            if (ranking.Count != k)
                throw new ArgumentException($"all rankings must rank {k} items; one ranks {ranking.Count}", nameof(rankings));
            for (int i = 0; i < k; i++)
            {
                if (ranking[i] < 0 || ranking[i] >= k)
                    throw new ArgumentException($"rank {ranking[i]} is outside 0..{k - 1}", nameof(rankings));
                points[i] += k - 1 - ranking[i];
            }
        }
        int[] order = Enumerable.Range(0, k)
            .OrderByDescending(i => points[i]).ThenBy(i => i).ToArray();
        var rank = new int[k];
        for (int r = 0; r < k; r++) rank[order[r]] = r;
        return rank;
    }

    static ulong Hash(string prompt, IReadOnlyList<string> responses)
    {
        ulong h = 0xCBF29CE484222325UL;
        void Add(string s)
        {
            foreach (char c in s)
            {
                h ^= c;
                h *= 0x100000001B3UL;
            }
            h ^= 0xFF;
            h *= 0x100000001B3UL;
        }
        Add(prompt);
        foreach (string r in responses) Add(r);
        return h;
    }
}
