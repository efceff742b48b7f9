using Rlhf.Training.Data.DefaultTask;

namespace Rlhf.Training.Tests.Data;

public sealed class GoldScorerTests
{
    static double Squash(double s) => 2.5 * Math.Tanh(s / 2.5);

    [Fact]
    public void PositiveSentence()
    {
        // delicious 1.5 + friendly 1 = 2.5; 7 response words, no repetition, ends with '.'.
        var s = GoldScorer.Score("The pasta at this place", "was delicious and the staff was friendly.");
        Assert.Equal(2.5, s.RawSentiment, 12);
        Assert.Equal(Squash(2.5), s.Total, 12);
        Assert.Equal(0, s.Penalty);
    }

    [Fact]
    public void NegativeSentence()
    {
        // rude −1.5 + awful −2 = −3.5.
        var s = GoldScorer.Score("The waiter was", "rude and the soup was awful.");
        Assert.Equal(-3.5, s.RawSentiment, 12);
        Assert.Equal(Squash(-3.5), s.Total, 12);
    }

    [Fact]
    public void NegationFlipsAndNotBadIsMildlyPositive()
    {
        // not friendly: −0.8·1 = −0.8; not bad: −0.5·(−1) = +0.5.
        var s = GoldScorer.Score("The waiter was", "not friendly and the soup was not bad.");
        Assert.Equal(-0.3, s.RawSentiment, 12);
        Assert.Equal(0.5, GoldScorer.RawSentiment(GoldScorer.Tokenize("it was not bad")), 12);
        Assert.Equal(-0.8, GoldScorer.RawSentiment(GoldScorer.Tokenize("it wasn't good")), 12);
        // The negator reaches three words: "never" ... "disappointed" (−1.5 → +0.75).
        Assert.Equal(0.75, GoldScorer.RawSentiment(GoldScorer.Tokenize("we were never at all disappointed")), 12);
        // Intensified and negated: really 1.5·(−1.5) = −2.25 → −0.5·(−2.25) = 1.125.
        Assert.Equal(1.125, GoldScorer.RawSentiment(GoldScorer.Tokenize("we were never really disappointed")), 12);
        // ... but not four, and not across a clause boundary.
        Assert.Equal(1.0, GoldScorer.RawSentiment(GoldScorer.Tokenize("not the pasta but the good")), 12);
        Assert.Equal(1.0, GoldScorer.RawSentiment(GoldScorer.Tokenize("no. the soup was good")), 12);
        Assert.Equal(1.0, GoldScorer.RawSentiment(GoldScorer.Tokenize("not the one soup good")), 12);
    }

    [Fact]
    public void IntensifiersScale()
    {
        // extremely clean: 2·1.2 = 2.4; very quiet: 1.5·1 = 1.5; not very good: −0.8·1.5 = −1.2.
        var s = GoldScorer.Score("The room was", "extremely clean and very quiet.");
        Assert.Equal(3.9, s.RawSentiment, 12);
        Assert.Equal(Squash(3.9), s.Total, 12);
        Assert.Equal(-1.2, GoldScorer.RawSentiment(GoldScorer.Tokenize("it was not very good")), 12);
        Assert.Equal(-0.6, GoldScorer.RawSentiment(GoldScorer.Tokenize("a bit bland")), 12);
    }

    [Fact]
    public void RepetitionIsPenalisedAndCannotBuySentiment()
    {
        // "great" counts twice: S = 3. Words: the food was great×5. Immediate repeats 4 → 2.0; trigrams 6, distinct 4
        // → 2 repeated → 0.6; "great" 5 times, limit 2 → 3 excess → 0.75. Sum 3.35, capped at 2.5.
        var s = GoldScorer.Score("The food was", "great great great great great.");
        Assert.Equal(3.0, s.RawSentiment, 12);
        Assert.Equal(2.5, s.Repetition, 12);
        Assert.Equal(Squash(3.0) - 2.5, s.Total, 12);

        // "good" ×3 (limit 2) → excess 1 → 0.25; no immediate repeat, all trigrams distinct; only two "good" count.
        var t = GoldScorer.Score("The soup was good,", "the bread was good and the wine was good too.");
        Assert.Equal(0.25, t.Repetition, 12);
        Assert.Equal(2.0, t.RawSentiment, 12);

        // A repeated trigram: "the soup was" twice → 0.3; "soup" twice is within its limit.
        var u = GoldScorer.Score("The soup was cold.", "The soup was good then.");
        Assert.Equal(0.3, u.Repetition, 12);
    }

    [Fact]
    public void MissingEosAndPunctuationArePenalised()
    {
        double full = GoldScorer.Reward("The pasta at this place", "was delicious and the staff was friendly.");
        Assert.Equal(full - 1, GoldScorer.Reward("The pasta at this place", "was delicious and the staff was friendly.", endedWithEos: false), 12);
        var s = GoldScorer.Score("The pasta at this place", "was delicious and the staff was friendly");
        Assert.Equal(0.5, s.Punctuation);
        Assert.Equal(full - 0.5, s.Total, 12);
    }

    [Fact]
    public void LengthPenalties()
    {
        // Too short: 1 response word → 0.4·4 = 1.6.
        var shortOne = GoldScorer.Score("The soup was", "good.");
        Assert.Equal(1.6, shortOne.Length, 12);
        Assert.Equal(Squash(1) - 1.6, shortOne.Total, 12);

        // Too long: 45 distinct known words without sentiment → 0.1·5 = 0.5, nothing else.
        string[] plain = Lexicon.KnownWords
            .Where(w => !Lexicon.SentimentWords.ContainsKey(w) && !Lexicon.Intensifiers.ContainsKey(w) && !Lexicon.Negators.Contains(w))
            .Order(StringComparer.Ordinal).Take(45).ToArray();
        var longOne = GoldScorer.Score("We went", string.Join(' ', plain) + ".");
        Assert.Equal(0, longOne.RawSentiment);
        Assert.Equal(0.5, longOne.Length, 12);
        Assert.Equal(-0.5, longOne.Total, 12);
    }

    [Fact]
    public void GibberishIsPenalised()
    {
        // 3 of 5 response words unknown → 3·3/5 = 1.8; good 1 + fine 0.3 = 1.3.
        var s = GoldScorer.Score("The soup was", "xq zzv blorp good fine.");
        Assert.Equal(1.8, s.Gibberish, 12);
        Assert.Equal(Squash(1.3) - 1.8, s.Total, 12);
    }

    [Fact]
    public void ScoresAreMonotonicInSentimentStrength()
    {
        double R(string response) => GoldScorer.Reward("Overall, the food", response);
        Assert.True(R("was terrible and we went home.") < R("was bad and we went home."));
        Assert.True(R("was bad and we went home.") < R("was not bad and we went home."));
        Assert.True(R("was not good and we went home.") < R("was okay and we went home."));
        Assert.True(R("was okay and we went home.") < R("was good and we went home."));
        Assert.True(R("was good and we went home.") < R("was very good and we went home."));
        Assert.True(R("was very good and we went home.") < R("was excellent and we went home."));
    }

    [Fact]
    public void ScoreIsBoundedAndDeterministic()
    {
        string[] responses =
        [
            "", "!!!!", "awful awful awful awful awful awful awful awful", "zzz zzz zzz zzz", "excellent superb perfect amazing",
            string.Join(' ', Enumerable.Repeat("great wonderful", 60)),
        ];
        foreach (string r in responses)
        {
            foreach (bool eos in new[] { true, false })
            {
                double a = GoldScorer.Reward("The hotel", r, eos);
                Assert.InRange(a, -3, 3);
                Assert.Equal(a, GoldScorer.Reward("The hotel", r, eos));
            }
        }
    }
}
