using Rlhf.Training.Common;
using Rlhf.Inference.Tokenization;
namespace Rlhf.Training.Data.DefaultTask;

/// <summary>The latent sentiment a generated review was written with.</summary>
public enum ReviewSentiment { Positive, Negative, Mixed, Neutral }

/// <summary>One generated review with the latent labels it was generated from.</summary>
public sealed record Review(string Text, ReviewDomain Domain, ReviewSentiment Sentiment)
{
    public int WordCount => ReviewGenerator.CountWords(Text);
}

/// <summary>Proportions of the latent sentiments; they need not sum to 1 (they are normalised).</summary>
public sealed record SentimentMix(double Positive = 0.35, double Negative = 0.35, double Mixed = 0.15, double Neutral = 0.15)
{
    public void Validate()
    {
        double[] all = [Positive, Negative, Mixed, Neutral];
        if (all.Any(p => p < 0 || double.IsNaN(p)) || all.Sum() <= 0)
            throw new ArgumentException($"SentimentMix {this}: proportions must be ≥ 0 and not all 0");
    }
}

/// <summary>Options of the default-task generator. Defaults give reviews of 8–40 words and prompts of 3–6 words
/// that leave at least 5 words of response.</summary>
public sealed record ReviewGeneratorOptions
{
    /// <summary>Latent sentiment proportions.</summary>
    public SentimentMix Mix { get; init; } = new();
    /// <summary>Shortest review, in words (whitespace-separated).</summary>
    public int MinWords { get; init; } = 8;
    /// <summary>Longest review, in words.</summary>
    public int MaxWords { get; init; } = 40;
    /// <summary>Fewest words of a review that go into the prompt of an SFT example or prompt set.</summary>
    public int MinPromptWords { get; init; } = 3;
    /// <summary>Most words of a review that go into the prompt.</summary>
    public int MaxPromptWords { get; init; } = 6;
    /// <summary>Fewest words left for the response of an SFT example.</summary>
    public int MinResponseWords { get; init; } = 5;

    public void Validate()
    {
        Mix.Validate();
        if (MinWords < 2 || MaxWords < MinWords)
            throw new ArgumentException($"ReviewGeneratorOptions: need 2 ≤ MinWords ≤ MaxWords, got {MinWords}..{MaxWords}");
        if (MinPromptWords < 1 || MaxPromptWords < MinPromptWords)
            throw new ArgumentException(
                $"ReviewGeneratorOptions: need 1 ≤ MinPromptWords ≤ MaxPromptWords, got {MinPromptWords}..{MaxPromptWords}");
        if (MinResponseWords < 1 || MinPromptWords + MinResponseWords > MinWords)
            throw new ArgumentException(
                $"ReviewGeneratorOptions: MinPromptWords + MinResponseWords ({MinPromptWords} + {MinResponseWords}) "
                + $"must be ≤ MinWords ({MinWords}) so every review can be split");
    }
}

/// <summary>Deterministic, seeded generator of the default task: short English reviews of restaurants, films,
/// hotels and products (see <see cref="Lexicon"/> and the templates in <see cref="Grammar"/>). The same seed gives
/// the same reviews on every machine (own SplitMix64 RNG, invariant text handling).
/// <para>A review is 1–3 evaluative sentences of its latent sentiment (a positive and a negative one, or a
/// contrast sentence, for Mixed; lukewarm verdicts for Neutral) and 0–4 factual sentences; in 45% of reviews
/// with a factual sentence it comes first, so the opening words do not give the sentiment away.</para></summary>
public sealed class ReviewGenerator
{
    readonly SplitMixRandom _rng;
    readonly ReviewGeneratorOptions _options;
    readonly double[] _mixCumulative;

    public ReviewGenerator(ulong seed, ReviewGeneratorOptions? options = null)
    {
        _options = options ?? new ReviewGeneratorOptions();
        _options.Validate();
        _rng = new SplitMixRandom(seed);
        var m = _options.Mix;
        double[] p = [m.Positive, m.Negative, m.Mixed, m.Neutral];
        double total = p.Sum(), acc = 0;
        _mixCumulative = p.Select(x => acc += x / total).ToArray();
    }

    public ReviewGeneratorOptions Options => _options;

    /// <summary>The next review.</summary>
    public Review Next()
    {
        ReviewDomain domain = (ReviewDomain)_rng.Next(4);
        ReviewSentiment sentiment = PickSentiment();
        string text = "";
        for (int attempt = 0; attempt < 200; attempt++)
        {
            text = Compose(domain, sentiment);
            int n = CountWords(text);
            if (n >= _options.MinWords && n <= _options.MaxWords) return new Review(text, domain, sentiment);
        }
        throw new InvalidOperationException(
            $"could not generate a {sentiment} {domain} review of {_options.MinWords}–{_options.MaxWords} words; widen the range");
    }

    /// <summary>The next <paramref name="count"/> reviews.</summary>
    public IReadOnlyList<Review> Generate(int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        var list = new List<Review>(count);
        for (int i = 0; i < count; i++) list.Add(Next());
        return list;
    }

    /// <summary>The next review split into an SFT demonstration: the first 3–6 words (options) are the prompt,
    /// the rest (at least MinResponseWords) the response. <see cref="PromptFormat.Join"/> gives back the text.</summary>
    public SftExample NextSft() => Split(Next());

    /// <summary>The opening words of the next review, as a prompt for RM sampling or PPO.</summary>
    public PromptExample NextPrompt() => new(Split(Next()).Prompt);

    /// <summary>Splits a review at a random word boundary drawn from this generator's stream.</summary>
    public SftExample Split(Review review)
    {
        string[] words = review.Text.Split(' ');
        int hi = Math.Min(_options.MaxPromptWords, words.Length - _options.MinResponseWords);
        int k = hi < _options.MinPromptWords ? Math.Max(1, Math.Min(_options.MinPromptWords, words.Length - 1))
            : _rng.Between(_options.MinPromptWords, hi);
        return new SftExample(string.Join(' ', words[..k]), string.Join(' ', words[k..]));
    }

    /// <summary>Words as the generator and the gold scorer count them: whitespace-separated pieces.</summary>
    public static int CountWords(string text) =>
        text.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Length;

    ReviewSentiment PickSentiment()
    {
        double x = _rng.NextDouble();
        for (int i = 0; i < 3; i++) if (x < _mixCumulative[i]) return (ReviewSentiment)i;
        return ReviewSentiment.Neutral;
    }

    string Compose(ReviewDomain domain, ReviewSentiment sentiment)
    {
        var g = new Grammar(_rng, domain);
        var opinions = new List<string>();
        int facts;
        switch (sentiment)
        {
            case ReviewSentiment.Positive:
            case ReviewSentiment.Negative:
            {
                bool positive = sentiment == ReviewSentiment.Positive;
                int n = _rng.Between(1, 3);
                for (int i = 0; i < n; i++) opinions.Add(g.Evaluative(positive));
                facts = _rng.Between(0, 2);
                break;
            }
            case ReviewSentiment.Mixed:
            {
                int form = _rng.Next(3);
                if (form == 0) opinions.Add(g.Contrast());
                else
                {
                    bool positiveFirst = _rng.Chance(0.5);
                    opinions.Add(g.Evaluative(positiveFirst));
                    opinions.Add(g.Evaluative(!positiveFirst));
                }
                if (form == 0 || _rng.Chance(0.3)) opinions.Add(g.Evaluative(_rng.Chance(0.5)));
                facts = _rng.Between(0, 1);
                break;
            }
            default:
                if (_rng.Chance(0.6)) opinions.Add(g.Lukewarm());
                facts = _rng.Between(opinions.Count == 0 ? 2 : 1, 4);
                break;
        }

        var sentences = new List<string>(opinions);
        for (int i = 0; i < facts; i++)
        {
            string fact = g.Neutral();
            if (i == 0 && _rng.Chance(0.45)) sentences.Insert(0, fact);
            else sentences.Insert(_rng.Between(sentences.Count == 0 ? 0 : 1, sentences.Count), fact);
        }
        return string.Join(' ', sentences.Select(Finish));
    }

    /// <summary>Capitalises the first letter and the pronoun "I".</summary>
    static string Finish(string sentence)
    {
        string[] words = sentence.Split(' ');
        for (int i = 0; i < words.Length; i++)
        {
            if (words[i] == "i") words[i] = "I";
        }
        string s = string.Join(' ', words);
        return char.ToUpperInvariant(s[0]) + s[1..];
    }
}
