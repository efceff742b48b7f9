using Rlhf.Inference.Tokenization;
namespace Rlhf.Training.Data.DefaultTask;

/// <summary>The parts of a gold score, for reports. <see cref="Total"/> = clamp(Sentiment − Penalty, −3, 3).</summary>
public sealed record GoldScore(
    double Total,
    double Sentiment,
    double RawSentiment,
    double Repetition,
    double Punctuation,
    double Eos,
    double Length,
    double Gibberish)
{
    /// <summary>Sum of all penalties (each ≥ 0).</summary>
    public double Penalty => Repetition + Punctuation + Eos + Length + Gibberish;
}

/// <summary>The default task's stand-in for human judgement: how good is the review prompt + response?
/// A pure, deterministic function of (prompt, response, endedWithEos).
/// <para><b>Tokens.</b> The full text <see cref="PromptFormat.Join"/>(prompt, response) is lower-cased and split
/// into words (runs of non-space characters other than . , ! ? ; :) and punctuation marks.</para>
/// <para><b>Sentiment.</b> For every word w with lexicon strength s(w) (<see cref="Lexicon.SentimentWords"/>; only
/// the first two occurrences of a word count):
/// v = m·s(w), where m is the factor of an intensifier right before w (<see cref="Lexicon.Intensifiers"/>: very 1.5,
/// extremely 2, slightly 0.5, ...; else 1). If an odd number of negators (<see cref="Lexicon.Negators"/>) stands among
/// the 3 words before w in the same clause (a clause ends at punctuation or "but"/"although"), v is flipped:
/// v ← −0.8·v when v &gt; 0 ("not good" = −0.8) and v ← −0.5·v when v &lt; 0 ("not bad" = +0.5, mildly positive).
/// RawSentiment S = Σ v; Sentiment = 2.5·tanh(S / 2.5), in (−2.5, 2.5).</para>
/// <para><b>Penalties</b> (all ≥ 0), on the n response words unless stated:
/// Repetition = min(2.5, 0.5·(immediately repeated words in the full text) + 0.3·(repeated trigrams in the full
/// text: occurrences − distinct) + 0.25·Σ_w max(0, count(w) − limit(w))), limit 5 for function words and 2 for others;
/// Punctuation = 0.5 when the response does not end with . ! or ?;
/// Eos = 1 when the response did not end with the end-of-sequence token (<c>endedWithEos</c> false, i.e. truncated);
/// Length = 0.4·(5 − n) when n &lt; 5, min(2, 0.1·(n − 40)) when n &gt; 40;
/// Gibberish = 3·(fraction of response words not in <see cref="Lexicon.KnownWords"/>).</para>
/// <para><b>Total</b> = clamp(Sentiment − (Repetition + Punctuation + Eos + Length + Gibberish), −3, 3).</para></summary>
public static class GoldScorer
{
    /// <summary>The scalar gold reward; see the class comment for the formula.</summary>
    public static double Reward(string prompt, string response, bool endedWithEos = true) =>
        Score(prompt, response, endedWithEos).Total;

    /// <summary>
    /// The gold total as a run's task score when the run's prompts are the embedded task's (<paramref name="onTaskPrompts"/>);
    /// null on a user's prompts, where the default task's gold would mean nothing.
    /// </summary>
    public static TaskGold? TaskGoldFor(bool onTaskPrompts) => onTaskPrompts ? (p, r, eos) => Score(p, r, eos).Total : null;

    /// <summary>The gold reward with its breakdown; see the class comment for the formula.</summary>
    public static GoldScore Score(string prompt, string response, bool endedWithEos = true)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(response);
        string[] tokens = Tokenize(PromptFormat.Join(prompt, response));
        string[] responseWords = Tokenize(response).Where(t => !IsPunctuation(t)).ToArray();

        double raw = RawSentiment(tokens);
        double sentiment = 2.5 * Math.Tanh(raw / 2.5);

        double repetition = RepetitionPenalty(tokens.Where(t => !IsPunctuation(t)).ToArray());
        string trimmed = response.TrimEnd();
        double punctuation = trimmed.Length > 0 && trimmed[^1] is '.' or '!' or '?' ? 0 : 0.5;
        double eos = endedWithEos ? 0 : 1;
        int n = responseWords.Length;
        double length = n < 5 ? 0.4 * (5 - n) : n > 40 ? Math.Min(2.0, 0.1 * (n - 40)) : 0;
        double gibberish = n == 0 ? 0 : 3.0 * responseWords.Count(w => !Lexicon.KnownWords.Contains(w)) / n;

        double total = Math.Clamp(sentiment - (repetition + punctuation + eos + length + gibberish), -3, 3);
        return new GoldScore(total, sentiment, raw, repetition, punctuation, eos, length, gibberish);
    }

    /// <summary>S = Σ v over sentiment words (see the class comment).</summary>
    public static double RawSentiment(IReadOnlyList<string> tokens)
    {
        var seen = new Dictionary<string, int>();
        double sum = 0;
        for (int i = 0; i < tokens.Count; i++)
        {
            if (!Lexicon.SentimentWords.TryGetValue(tokens[i], out double s)) continue;
            int count = seen.GetValueOrDefault(tokens[i]) + 1;
            seen[tokens[i]] = count;
            if (count > 2) continue;

            double v = s;
            if (i > 0 && Lexicon.Intensifiers.TryGetValue(tokens[i - 1], out double m)) v *= m;

            int negators = 0;
            for (int j = i - 1; j >= 0 && j >= i - 3; j--)
            {
                if (IsPunctuation(tokens[j]) || tokens[j] is "but" or "although") break;
                if (Lexicon.Negators.Contains(tokens[j])) negators++;
            }
            if (negators % 2 == 1) v = v > 0 ? -0.8 * v : -0.5 * v;
            sum += v;
        }
        return sum;
    }

    static readonly HashSet<string> FunctionWords =
    [
        "the", "a", "an", "and", "was", "is", "were", "are", "i", "we", "it", "to", "of", "with", "at", "in", "on", "my",
        "our", "this", "not", "for", "that", "but", "very", "really",
    ];

    static double RepetitionPenalty(string[] words)
    {
        int immediate = 0;
        for (int i = 1; i < words.Length; i++) if (words[i] == words[i - 1]) immediate++;

        int trigrams = Math.Max(0, words.Length - 2);
        var distinct = new HashSet<(string, string, string)>();
        for (int i = 0; i + 2 < words.Length; i++) distinct.Add((words[i], words[i + 1], words[i + 2]));
        int repeatedTrigrams = trigrams - distinct.Count;

        double excess = 0;
        foreach (var g in words.GroupBy(w => w))
            excess += Math.Max(0, g.Count() - (FunctionWords.Contains(g.Key) ? 5 : 2));

        return Math.Min(2.5, 0.5 * immediate + 0.3 * repeatedTrigrams + 0.25 * excess);
    }

    /// <summary>Lower-case words and punctuation marks (. , ! ? ; :) of a text.</summary>
    public static string[] Tokenize(string text) => TextTokens.Tokenize(text);

    public static bool IsPunctuation(string token) => TextTokens.IsPunctuation(token);
}

/// <summary>Tokenisation shared by the lexicon and the scorer (no static state, so no initialisation cycles).</summary>
internal static class TextTokens
{
    public static string[] Tokenize(string text)
    {
        var tokens = new List<string>();
        var word = new System.Text.StringBuilder();
        foreach (char c in text)
        {
            if (char.IsWhiteSpace(c) || IsMark(c))
            {
                if (word.Length > 0) tokens.Add(word.ToString());
                word.Clear();
                if (IsMark(c)) tokens.Add(c.ToString());
            }
            else word.Append(char.ToLowerInvariant(c));
        }
        if (word.Length > 0) tokens.Add(word.ToString());
        return tokens.ToArray();
    }

    public static bool IsPunctuation(string token) => token.Length == 1 && IsMark(token[0]);

    static bool IsMark(char c) => c is '.' or ',' or '!' or '?' or ';' or ':';
}
